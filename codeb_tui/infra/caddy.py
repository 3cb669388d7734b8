"""Caddy's admin API: read the live config, load a whole new one.

Caddy applies a POST /load atomically: a config it rejects leaves the running one in place. We
still back up what was live and re-apply it on failure, so the proxy is always in a known state
(a rejected config is restored from the backup: engine/proxy_switch.py).
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any
from urllib.parse import urlsplit

from codeb_tui.domain.errors import ProxyApplyFailed
from codeb_tui.infra import http1

# Caddy's whole config as JSON: a few kB per site; far past any real installation.
MAX_CONFIG = 64 * 1024 * 1024


IDLE_KEPT = 8
"""Idle connections kept for GETs (a switch asks a few small parts at once)."""


class CaddyAdmin:
    """The admin API over the small HTTP/1.1 client of http1.py. GETs reuse idle kept-alive
    connections (plain sockets, so they belong to no event loop); through an SSH forward each
    new connection is a new channel: a round trip and ~0.5 ms of CPU. A load gets a connection
    of its own: Caddy replaces its admin server on every load, cutting the ones it had.

    `host_header`: the Host the admin API is asked as. Caddy refuses a Host not in its
    `origins`; through an SSH forward the local address is not the one Caddy listens on, so
    the caller names it (e.g. "127.0.0.1:2019")."""

    def __init__(self, admin_url: str, timeout: float = 10.0,
                 host_header: str | None = None) -> None:
        self.admin_url = admin_url.rstrip("/")
        self.timeout = timeout
        url = urlsplit(self.admin_url)
        self._plain_http = url.scheme == "http"
        self._address = (url.hostname or "127.0.0.1", url.port or 80)
        self._family = _literal_family(self._address[0])  # None: a name, resolved per call
        self._host = host_header or url.netloc
        self._prefix = url.path  # an admin API behind a path prefix keeps it
        self._idle: list[http1.Connection] = []

    async def _call(self, method: str, path: str, body: bytes = b"") -> http1.Response:
        if not self._plain_http:
            raise ProxyApplyFailed(f"Caddy admin {self.admin_url}: only plain http:// is supported")
        data = http1.request_bytes(method, self._prefix + path, self._host, body,
                                   "application/json" if body else None)
        try:
            async with asyncio.timeout(self.timeout):
                family, address = self._family, self._address
                if family is None:
                    infos = await asyncio.get_running_loop().getaddrinfo(
                        *address, type=socket.SOCK_STREAM)
                    family, address = infos[0][0], infos[0][4]
                if method == "GET" and (kept := await self._on_idle(data)) is not None:
                    return kept
                try:
                    return await self._on_new(family, address, data, keep=method == "GET")
                except (ConnectionResetError, asyncio.IncompleteReadError):
                    # Caddy replaces its admin server on every load (also a refused one, and
                    # the restore after it): a connection the old one took is cut without an
                    # answer. Once more is safe: a GET, or loading the same config again.
                    await asyncio.sleep(0.05)
                    return await self._on_new(family, address, data, keep=method == "GET")
        except TimeoutError:
            raise ProxyApplyFailed(f"Caddy admin {self.admin_url} unreachable: timed out") from None
        except (OSError, EOFError, http1.ConnectFailed, http1.RemoteProtocolError,
                http1.BodyTooLarge) as exc:
            raise ProxyApplyFailed(f"Caddy admin {self.admin_url} unreachable: "
                                   f"{str(exc) or type(exc).__name__}") from None

    async def _on_idle(self, data: bytes) -> http1.Response | None:
        """`data` on an idle kept connection; None when none is left that works (cut by a load,
        or Caddy's idle timeout)."""
        while self._idle:
            conn = self._idle.pop()
            if conn.closed_by_peer():
                conn.close()
                continue
            try:
                await conn.send(data)
                answer = await conn.read_response(MAX_CONFIG, keep_body=True)
            except (ConnectionError, asyncio.IncompleteReadError):
                conn.close()  # cut before it answered: a GET is safe to send again
                continue
            except BaseException:
                conn.close()
                raise
            self._kept_or_closed(conn, answer)
            return answer
        return None

    async def _on_new(self, family: socket.AddressFamily, address: object, data: bytes,
                      keep: bool) -> http1.Response:
        conn = await http1.Connection.open(family, address, data)
        try:
            answer = await conn.read_response(MAX_CONFIG, keep_body=True)
        except BaseException:
            conn.close()
            raise
        if keep:
            self._kept_or_closed(conn, answer)
        else:
            conn.close()
        return answer

    def _kept_or_closed(self, conn: http1.Connection, answer: http1.Response) -> None:
        if answer.keep_alive and not conn.buf and len(self._idle) < IDLE_KEPT:
            conn.unwatch()
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Close the idle connections."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def ping(self) -> bool:
        try:
            return (await self._call("GET", "/config/")).status == 200
        except ProxyApplyFailed:
            return False

    async def current(self) -> dict[str, Any] | None:
        return decode(await self.current_text())

    async def current_text(self) -> bytes:
        """The live config as Caddy encodes it: compact, keys sorted, a final newline (so a
        config of ours encoded by `encode` compares equal without parsing ~300 kB of JSON)."""
        response = await self._call("GET", "/config/")
        if response.status != 200:
            raise ProxyApplyFailed(f"Caddy admin GET /config/ answered {response.status}")
        return response.body

    async def part(self, path: str) -> Any:
        """One object of the live config by its admin path (`/id/<@id>`, `/config/<path>`): a
        few hundred bytes where `current` is the whole config. None when Caddy has none there
        (404 for an unknown @id, 400 for a path its config does not have)."""
        response = await self._call("GET", path)
        if response.status in (400, 404):
            return None
        if response.status != 200:
            raise ProxyApplyFailed(f"Caddy admin GET {path} answered {response.status}")
        return decode(response.body, path)

    async def load(self, config: dict[str, Any]) -> None:
        response = await self._call("POST", "/load", json.dumps(config).encode())
        if response.status != 200:
            text = response.body.decode("utf-8", "replace")
            try:
                detail = json.loads(text).get("error", text)
            except (ValueError, AttributeError):
                detail = text
            raise ProxyApplyFailed(f"Caddy rejected the config: {str(detail).strip()[:300]}")


def encode(config: dict[str, Any]) -> bytes:
    """`config` as Caddy's GET /config/ answers it (Go's encoder: sorted keys, no spaces)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode() + b"\n"


def decode(text: bytes, path: str = "/config/") -> Any:
    """What a GET of `path` answered, parsed (for `current_text`, None: Caddy runs no config
    at all)."""
    try:
        return json.loads(text)
    except ValueError:
        raise ProxyApplyFailed(f"Caddy admin GET {path} answered no JSON") from None


def _literal_family(host: str) -> socket.AddressFamily | None:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return family
        except OSError:
            pass
    return None
