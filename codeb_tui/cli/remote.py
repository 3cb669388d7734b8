"""`codeb --server URL ...` (or `$CODEB_SERVER`): the commands ask a remote `codeb serve`.

`RemoteEngine` answers the few facade methods those commands call (deploy, promote, rollback,
cleanup, status, proxy_empty, history) over HTTP with the key, so every command prints exactly
what it prints locally: the same lines, the same `--json` objects, the same exit codes.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from codeb_tui.domain import events
from codeb_tui.domain.access import Principal
from codeb_tui.domain.errors import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, BadInput, CodebError
from codeb_tui.domain.status import SlotStatus

if TYPE_CHECKING:
    import httpx

    from codeb_tui.api.models import HistoryEntry

SERVER_ENV = "CODEB_SERVER"
NDJSON = "application/x-ndjson"
OFFERED = ("deploy", "promote", "rollback", "cleanup", "status", "history")


class RemoteRefused(CodebError):
    """The server's answer when it is not an operation's events (the exit code follows the HTTP
    status: 4xx refused, 5xx failed)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def server_url() -> str | None:
    """--server, else $CODEB_SERVER; None: run locally."""
    meta = click.get_current_context().meta
    url = meta.get("server", os.environ.get(SERVER_ENV)) or None
    if url is not None and not url.startswith(("http://", "https://")):
        raise BadInput(f"--server: expected an http(s) URL, got {url!r}")
    return url.rstrip("/") if url else None


def exit_code_of(status: int) -> int:
    return EXIT_OK if status < 400 else EXIT_REFUSED if status < 500 else EXIT_FAILED


def event_from_json(data: dict[str, Any]) -> events.Event:
    """An event as `codeb --json` printed it, back to the engine's type (so it prints the same)."""
    fields = dict(data)
    kind = events.BY_KIND[fields.pop("event")]
    fields["ts"] = datetime.fromisoformat(fields["ts"].replace("Z", "+00:00"))
    return kind(**fields)


class RemoteEngine:
    """The facade's methods the remote commands need, asked of `codeb serve` at `url`."""

    def __init__(self, url: str, timeout: float = 900.0) -> None:
        self.url = url
        # httpx only with --server: a local command never pays its 60 to 100 ms of imports.
        import httpx

        # Reads may wait long between events (a pull, a health wait); connecting may not.
        self._http = httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(timeout, connect=10))
        self._status: asyncio.Future | None = None

    async def __aenter__(self) -> RemoteEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise BadInput(f"not available with --server: only {', '.join(OFFERED)} are")

    # operations -------------------------------------------------------------------------------
    def deploy(self, principal: Principal, project: str, image: str,
               environment: str = "production", confirm_grace: bool = False,
               hosts: list[str] | None = None) -> AsyncIterator[events.Event]:
        params = {"projectName": project, "image": image, "environment": environment,
                  "confirmGrace": confirm_grace}
        if hosts:
            params["hosts"] = hosts
        return self._operation(principal, "deploy", params)

    def promote(self, principal: Principal, project: str,
                environment: str = "production") -> AsyncIterator[events.Event]:
        return self._operation(principal, "promote",
                               {"projectName": project, "environment": environment})

    def rollback(self, principal: Principal, project: str,
                 environment: str = "production") -> AsyncIterator[events.Event]:
        return self._operation(principal, "rollback",
                               {"projectName": project, "environment": environment})

    def cleanup(self, principal: Principal, project: str | None = None,
                environment: str | None = None, force: bool = False,
                slot: str | None = None) -> AsyncIterator[events.Event]:
        return self._operation(principal, "cleanup", {
            "projectName": project, "environment": environment, "force": force, "slot": slot})

    async def _operation(self, principal: Principal, tool: str,
                         params: dict[str, Any]) -> AsyncIterator[events.Event]:
        import httpx  # see __init__

        body = {"tool": tool, "params": {k: v for k, v in params.items() if v is not None}}
        try:
            async with self._http.stream("POST", "/api/tool", json=body,
                                         headers=self._headers(principal, NDJSON)) as answer:
                async for line in answer.aiter_lines():
                    if not line.strip():
                        continue
                    data = _decoded(line, answer.status_code)
                    if "event" not in data:  # refused before the operation started
                        raise _refusal(answer.status_code, data)
                    yield event_from_json(data)
                    if data["event"] in ("finished", "failed"):
                        return
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        raise RemoteRefused(f"the server at {self.url} ended the answer early "
                            f"(HTTP {answer.status_code})", EXIT_FAILED)

    # queries ----------------------------------------------------------------------------------
    async def status(self, principal: Principal, project: str | None = None,
                     environment: str | None = None, live: bool = True) -> list[SlotStatus]:
        # proxy_empty() of the same gather reads this answer instead of asking again.
        self._status = asyncio.ensure_future(self._query(principal, "slot_status", {
            "projectName": project, "environment": environment, "live": live}))
        from codeb_tui.api import models  # loaded only with --server (see cli/history.py)

        result = models.SlotStatusResult.model_validate(await self._status)
        return [slot.to_status() for slot in result.slots]

    async def proxy_empty(self, principal: Principal) -> bool:
        if self._status is None:
            return False
        return bool((await self._status).get("proxy_empty"))

    async def history(self, principal: Principal, *, project: str | None = None,
                      action: str | None = None, team: str | None = None,
                      since: datetime | None = None, until: datetime | None = None,
                      limit: int = 100) -> list[HistoryEntry]:
        result = await self._query(principal, "history", {
            "projectName": project, "action": action, "team": team,
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None, "limit": limit})
        from codeb_tui.api import models

        return models.HistoryResult.model_validate(result).records

    async def _query(self, principal: Principal, tool: str,
                     params: dict[str, Any]) -> dict[str, Any]:
        import httpx  # see __init__

        body = {"tool": tool, "params": {k: v for k, v in params.items() if v is not None}}
        try:
            answer = await self._http.post("/api/tool", json=body,
                                           headers=self._headers(principal, "application/json"))
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        data = _decoded(answer.text, answer.status_code)
        if not data.get("ok"):
            raise _refusal(answer.status_code, data)
        return data["result"]

    def _unreachable(self, exc: httpx.HTTPError) -> RemoteRefused:
        return RemoteRefused(f"cannot reach the codeb server at {self.url}: "
                             f"{str(exc) or type(exc).__name__}", EXIT_FAILED)

    @staticmethod
    def _headers(principal: Principal, accept: str) -> dict[str, str]:
        headers = {"Accept": accept}
        if principal.api_key is not None:
            headers["X-API-Key"] = principal.api_key
        return headers


def _decoded(text: str, status: int) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise RemoteRefused(f"not a codeb server answer (HTTP {status}): {text[:120]!r}",
                            exit_code_of(status) or EXIT_FAILED)
    return data


def _refusal(status: int, data: dict[str, Any]) -> RemoteRefused:
    return RemoteRefused(str(data.get("error") or f"HTTP {status}"),
                         exit_code_of(status) or EXIT_FAILED)
