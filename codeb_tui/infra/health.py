"""HTTP health checks of slots: a small asyncio HTTP/1.1 client, many checks at once.

Why not httpx: the console checks every slot on each poll, and httpx costs about 1.3 ms of CPU
per check. A GET with a fixed request and a bounded read needs far less. One idle keep-alive
connection is kept per port, so a slot whose server keeps connections open (most frameworks)
costs one send and one recv per check (~0.05 x httpx); servers that close after each answer
(busybox httpd) get a fresh connection each time, where the kernel's TCP connect and close
dominate (~0.15 x httpx; see bench/health.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass

# A health answer is a few bytes; anything past this is a misbehaving slot, not a body to read.
MAX_BODY = 64 * 1024
# Header block cap: bounds what readuntil buffers before giving up.
MAX_HEADERS = 64 * 1024
_NO_BODY = frozenset((204, 304))


@dataclass(frozen=True)
class HealthResult:
    ok: bool
    detail: str  # "HTTP 200", "HTTP 500", "connection refused", "timed out", ...
    latency_ms: float | None


class BodyTooLarge(Exception):
    """The answer's body is over MAX_BODY (or endless)."""


class RemoteProtocolError(Exception):
    """The answer is not HTTP/1.x as we can read it (same name httpx used in details)."""


class _ConnectFailed(Exception):
    """The connect failed: reported as "connection refused", as httpx.ConnectError was."""


class _Conn:
    """A non-blocking socket driven with loop.sock_* plus a read buffer.

    Why not asyncio streams: on a fresh connection per check (busybox) a transport, protocol,
    StreamReader and StreamWriter cost about 60 us of CPU more than these few calls (of ~200)."""

    __slots__ = ("sock", "buf")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    async def _more(self) -> None:
        data = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        if not data:
            raise asyncio.IncompleteReadError(bytes(self.buf), None)
        self.buf += data

    async def readuntil(self, sep: bytes, limit: int) -> bytes:
        start = 0
        while (found := self.buf.find(sep, start)) < 0:
            if len(self.buf) > limit:
                raise RemoteProtocolError("header block too large")
            start = max(0, len(self.buf) - len(sep) + 1)
            await self._more()
        end = found + len(sep)
        line = bytes(self.buf[:end])
        del self.buf[:end]
        return line

    async def skip(self, count: int) -> None:
        while len(self.buf) < count:
            count -= len(self.buf)
            self.buf.clear()
            await self._more()
        del self.buf[:count]

    async def skip_to_eof(self, limit: int) -> None:
        loop = asyncio.get_running_loop()
        total = len(self.buf)
        self.buf.clear()
        while total <= limit:
            data = await loop.sock_recv(self.sock, 65536)
            if not data:
                return
            total += len(data)
        raise BodyTooLarge()

    def closed_by_peer(self) -> bool:
        """Whether the server closed (or wrote to) this idle connection: one non-blocking peek."""
        try:
            self.sock.recv(1, socket.MSG_PEEK)  # b"": closed; bytes: stray data, also unusable
            return True
        except BlockingIOError:
            return False  # open, nothing pending: reusable
        except OSError:
            return True


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
        self._idle: dict[int, _Conn] = {}

    async def check(self, port: int) -> HealthResult:
        """GET http://host:port<path>; 2xx and 3xx are healthy (redirects are not followed).
        request_timeout covers connect and answer; latency is connect + answer, as before."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.request_timeout):
                status = await self._get(port)
        except TimeoutError:
            return HealthResult(False, "timed out", None)
        except _ConnectFailed:
            return HealthResult(False, "connection refused", None)
        except BodyTooLarge:
            return HealthResult(False, "body too large", None)
        except (OSError, EOFError, RemoteProtocolError) as exc:
            # e.g. ConnectionResetError, IncompleteReadError (closed mid-answer): a short name.
            return HealthResult(False, type(exc).__name__, None)
        latency = (time.perf_counter() - started) * 1000
        return HealthResult(200 <= status < 400, f"HTTP {status}", latency)

    async def _get(self, port: int) -> int:
        conn = self._idle.pop(port, None)
        if conn is not None:
            if conn.closed_by_peer():
                conn.sock.close()  # busybox and idle timeouts: skip the doomed attempt
            else:
                try:
                    return await self._exchange(port, conn)
                except (ConnectionError, asyncio.IncompleteReadError):
                    # Closed by the server just as we reused it: a GET is safe to send again,
                    # once, on a fresh connection.
                    pass
        return await self._exchange(port, await self._connect(port))

    async def _connect(self, port: int) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            if self._family is None:
                infos = await loop.getaddrinfo(self.host, port, type=socket.SOCK_STREAM)
                family, address = infos[0][0], infos[0][4]
            else:
                family, address = self._family, (self.host, port)
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            raise _ConnectFailed() from exc
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except BaseException as exc:  # also cancellation by the timeout: never leak the socket
            sock.close()
            if isinstance(exc, OSError):
                raise _ConnectFailed() from exc
            raise
        return _Conn(sock)

    async def _exchange(self, port: int, conn: _Conn) -> int:
        keep = False
        try:
            await asyncio.get_running_loop().sock_sendall(conn.sock, (
                f"GET {self.path} HTTP/1.1\r\nHost: {self._host_header}:{port}\r\n"
                "User-Agent: codeb-health\r\nConnection: keep-alive\r\n\r\n").encode("latin-1"))
            status, keep = await _read_response(conn)
            return status
        finally:
            # Put the connection back only after a fully read, reusable answer; otherwise
            # (error, timeout-cancellation, close-delimited body) close it at once.
            if keep and not conn.buf and port not in self._idle:
                self._idle[port] = conn
            else:
                conn.sock.close()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for conn in idle.values():
            conn.sock.close()


async def _read_response(conn: _Conn) -> tuple[int, bool]:
    """Read one answer; returns (status, whether the connection may carry another request)."""
    while True:
        head = await conn.readuntil(b"\r\n\r\n", MAX_HEADERS)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise RemoteProtocolError(f"bad status line {lines[0][:40]!r}")
        status = int(parts[1])
        if not 100 <= status < 200 or status == 101:
            break
        # 1xx interim answer (100 Continue, 103 Early Hints): the real one follows.

    length = None
    chunked = False
    connection = ""
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        name = name.strip().lower()
        if name == "content-length":
            try:
                length = int(value.strip())
            except ValueError as exc:
                raise RemoteProtocolError("bad Content-Length") from exc
        elif name == "transfer-encoding":
            chunked = "chunked" in value.lower()
        elif name == "connection":
            connection = value.lower()
    if parts[0] == "HTTP/1.0":
        keep = "keep-alive" in connection
    else:
        keep = "close" not in connection

    if status == 101:
        return status, False  # switched protocols: no HTTP after this (and unhealthy anyway)
    if status in _NO_BODY:
        return status, keep
    if chunked:
        await _read_chunked(conn)
    elif length is not None:
        if length > MAX_BODY or length < 0:
            raise BodyTooLarge()
        await conn.skip(length)
    else:
        # Delimited by close: read to EOF, bounded; the connection is then spent.
        await conn.skip_to_eof(MAX_BODY)
        keep = False
    return status, keep


async def _read_chunked(conn: _Conn) -> None:
    total = 0
    while True:
        line = await conn.readuntil(b"\r\n", MAX_HEADERS)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise RemoteProtocolError("bad chunk size") from exc
        if size == 0:
            break
        total += size
        if total > MAX_BODY:
            raise BodyTooLarge()
        await conn.skip(size + 2)  # data and its CRLF
    # Trailers, if any, end with an empty line.
    while (await conn.readuntil(b"\r\n", MAX_HEADERS)) != b"\r\n":
        pass
