"""Caddy's admin API: read the live config, load a whole new one.

Caddy applies a POST /load atomically: a config it rejects leaves the running one in place. We
still back up what was live and re-apply it on failure, so the proxy is always in a known state
(a rejected config is restored from the backup: engine/proxy_switch.py).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from codeb_tui.domain.errors import ProxyApplyFailed

if TYPE_CHECKING:
    import httpx


class CaddyAdmin:
    def __init__(self, admin_url: str, timeout: float = 10.0) -> None:
        self.admin_url = admin_url.rstrip("/")
        self.timeout = timeout

    def _client(self) -> httpx.AsyncClient:
        # httpx is imported here and in each caller, not at module import: with rich behind it
        # it costs 60 to 100 ms, which a command that never asks Caddy (`codeb --help`) must not
        # pay; once loaded, an import is a dictionary lookup.
        import httpx

        # A client per call: it belongs to the event loop it was made on, and the engine is used
        # from more than one (CLI, console, tests). verify=False skips building an SSL context
        # (about 20 ms) for an admin API that is plain HTTP on loopback.
        return httpx.AsyncClient(base_url=self.admin_url, timeout=self.timeout, trust_env=False,
                                 verify=False)

    async def ping(self) -> bool:
        import httpx  # see _client

        try:
            async with self._client() as client:
                response = await client.get("/config/")
                return response.status_code == 200
        except httpx.HTTPError:
            return False

    async def current(self) -> dict[str, Any] | None:
        import httpx  # see _client

        try:
            async with self._client() as client:
                response = await client.get("/config/")
        except httpx.HTTPError as exc:
            raise ProxyApplyFailed(f"Caddy admin {self.admin_url} unreachable: {exc}") from None
        if response.status_code != 200:
            raise ProxyApplyFailed(f"Caddy admin GET /config/ answered {response.status_code}")
        return response.json()

    async def load(self, config: dict[str, Any]) -> None:
        import httpx  # see _client

        try:
            async with self._client() as client:
                response = await client.post(
                    "/load", content=json.dumps(config), headers={"Content-Type": "application/json"}
                )
        except httpx.HTTPError as exc:
            raise ProxyApplyFailed(f"Caddy admin {self.admin_url} unreachable: {exc}") from None
        if response.status_code != 200:
            try:
                detail = response.json().get("error", response.text)
            except ValueError:
                detail = response.text
            raise ProxyApplyFailed(f"Caddy rejected the config: {detail.strip()[:300]}")
