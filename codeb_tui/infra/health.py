"""HTTP health checks of slots: many checks at once on the small HTTP/1.1 client of http1.py.

Why not httpx: the console checks every slot on each poll, and httpx costs about 1.2 ms of CPU
per check. One idle keep-alive connection is kept per port, so a slot whose server keeps
connections open (most frameworks) costs one send and one recv per check (~0.05 x httpx);
servers that close after each answer (busybox httpd) get a fresh connection each time, where
the kernel's TCP connect and close are most of the cost (see bench/health.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass

from codeb_tui.infra.http1 import BodyTooLarge, ConnectFailed, Connection, RemoteProtocolError

# A health answer is a few bytes; anything past this is a misbehaving slot, not a body to read.
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class HealthResult:
    ok: bool
    detail: str  # "HTTP 200", "HTTP 500", "connection refused", "timed out", ...
    latency_ms: float | None


class HealthChecker:
    def __init__(self, host: str, path: str, request_timeout: float) -> None:
        self.host = host
        self.path = path
        self.request_timeout = request_timeout
        try:
            self._family: socket.AddressFamily | None = (
                socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET)
        except ValueError:
            self._family = None  # a name: resolved (off the loop) on each connect
        # IPv6 literals need brackets in the Host header.
        self._host_header = f"[{host}]" if ":" in host else host
        # At most one idle connection per port. A check pops it while in use, so a concurrent
        # check of the same port finds none and opens its own (never two requests on one socket).
        # Plain sockets belong to no event loop, so kept ones survive one asyncio.run to the next.
        self._idle: dict[int, Connection] = {}
        self._requests: dict[int, bytes] = {}  # the fixed GET of each port, built once

    async def check(self, port: int) -> HealthResult:
        """GET http://host:port<path>; 2xx and 3xx are healthy (redirects are not followed).
        request_timeout covers connect and answer; latency is connect + answer, as before."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.request_timeout):
                status = await self._get(port)
        except TimeoutError:
            return HealthResult(False, "timed out", None)
        except ConnectFailed:
            return HealthResult(False, "connection refused", None)
        except BodyTooLarge:
            return HealthResult(False, "body too large", None)
        except (OSError, EOFError, RemoteProtocolError) as exc:
            # e.g. ConnectionResetError, IncompleteReadError (closed mid-answer): a short name.
            return HealthResult(False, type(exc).__name__, None)
        latency = (time.perf_counter() - started) * 1000
        return HealthResult(200 <= status < 400, f"HTTP {status}", latency)

    async def answers(self, port: int) -> bool:
        """Whether a program accepts TCP connections on host:port now, where the health gate
        would ask: before a container starts on the port, one that does is an impostor (and
        the container could not bind). A connect, not the host's table of listening sockets:
        that costs ~7 ms of kernel time per read whatever the table holds, more with many
        TIME_WAIT sockets, and lists programs on other addresses that the gate never hears."""
        try:
            async with asyncio.timeout(self.request_timeout):
                _, writer = await asyncio.open_connection(self.host, port)
        except TimeoutError:
            return True  # it holds the port but accepts nothing (a full backlog)
        except OSError:
            return False  # refused: nothing listens there
        writer.close()
        return True

    async def _get(self, port: int) -> int:
        conn = self._idle.pop(port, None)
        if conn is not None:
            if conn.closed_by_peer():
                conn.close()  # busybox and idle timeouts: skip the doomed attempt
            else:
                try:
                    return await self._exchange(port, conn, self._request(port))
                except (ConnectionError, asyncio.IncompleteReadError):
                    # Closed by the server just as we reused it: a GET is safe to send again,
                    # once, on a fresh connection.
                    pass
        if self._family is None:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    self.host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise ConnectFailed(str(exc)) from exc
            family, address = infos[0][0], infos[0][4]
        else:
            family, address = self._family, (self.host, port)
        conn = await Connection.open(family, address, self._request(port))
        return await self._exchange(port, conn, None)

    def _request(self, port: int) -> bytes:
        request = self._requests.get(port)
        if request is None:
            request = self._requests[port] = (
                f"GET {self.path} HTTP/1.1\r\nHost: {self._host_header}:{port}\r\n"
                "User-Agent: codeb-health\r\nConnection: keep-alive\r\n\r\n").encode("latin-1")
        return request

    async def _exchange(self, port: int, conn: Connection, request: bytes | None) -> int:
        """Send `request` (None: Connection.open sent it) and read the answer; the connection
        is closed or, reusable, kept as the port's idle one."""
        keep = False
        try:
            if request is not None:
                await conn.send(request)
            answer = await conn.read_response(MAX_BODY, keep_body=False)
            keep = answer.keep_alive
            return answer.status
        finally:
            # Put the connection back only after a fully read, reusable answer; otherwise
            # (error, timeout-cancellation, close-delimited body) close it at once.
            if keep and not conn.buf and port not in self._idle:
                conn.unwatch()
                self._idle[port] = conn
            else:
                conn.close()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for conn in idle.values():
            conn.close()

