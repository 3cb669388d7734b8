"""HTTP/1.1 on a plain non-blocking socket, driven by the event loop: the one small client behind
health checks (infra/health.py), Caddy's admin API (infra/caddy.py) and Docker's container list
and inspect (infra/docker_engine.py).

Why not httpx: it costs about 1.3 ms of CPU per request and 50 to 100 ms to import; a health
check, an admin call or a container list needs a fixed request and a bounded read. Why not
asyncio streams or loop.sock_*: on a fresh connection per request (busybox httpd closes after
each answer) their transports, futures and add/remove of the socket per wait cost as much CPU as
the kernel's TCP connect and close. Here a request is: socket, connect, send at once (on
loopback the handshake is done when connect returns; otherwise we wait for it), one reader
registration for the whole answer, close. Timeouts are the caller's (asyncio.timeout).
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import os
import re
import socket
from dataclasses import dataclass

# A header block past this is a misbehaving server, not a head to parse.
MAX_HEADERS = 64 * 1024
_NO_BODY = frozenset((204, 304))
_NONBLOCKING_STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK  # no extra ioctl per socket
_RECV = 65536
# The three headers the reader acts on, found in one scan of the head (not a loop over lines).
_HEADERS = re.compile(r"\r\n(content-length|transfer-encoding|connection)[ \t]*:[ \t]*([^\r]*)",
                      re.IGNORECASE)


class ConnectFailed(Exception):
    """The connection could not be made (refused, unreachable, no such socket file)."""


class BodyTooLarge(Exception):
    """The answer's body is over the caller's limit (or endless)."""


class RemoteProtocolError(Exception):
    """The answer is not HTTP/1.x as we can read it (same name httpx used in details)."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    keep_alive: bool  # the connection may carry another request
    body: bytes  # b"" when the caller asked to skip it


def request_bytes(method: str, target: str, host: str, body: bytes = b"",
                  content_type: str | None = None, accept: str | None = None) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: codeb\r\n"
    if accept:
        head += f"Accept: {accept}\r\n"
    if body or method in ("POST", "PUT"):
        head += f"Content-Length: {len(body)}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    return (head + "Connection: keep-alive\r\n\r\n").encode("latin-1") + body


class Connection:
    """One socket and its read buffer. Reading registers the socket with the loop once for the
    whole answer (not once per wait), and `close` always unregisters it first."""

    __slots__ = ("sock", "buf", "_loop", "_waiter", "_watched")

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._watched = False

    @classmethod
    async def open(cls, family: socket.AddressFamily, address: object, first: bytes) -> Connection:
        """Connect and send `first` (the request). Any failure before the request is sent is
        ConnectFailed; cancellation (the caller's timeout) closes the socket."""
        try:
            # _socket.socket, not socket.socket: its Python __init__ and close wrappers cost a
            # few microseconds per connection, and only the plain calls are used here.
            sock = _socket.socket(family, _NONBLOCKING_STREAM)
        except OSError as exc:
            raise ConnectFailed(str(exc)) from exc
        conn = cls(sock)
        try:
            error = sock.connect_ex(address)  # an errno, not an exception object per connect
            sent = 0
            if error == errno.EINPROGRESS:
                # On loopback the handshake is done when connect returns: sending at once saves
                # a wait for writability (a future and two epoll_ctl calls); else wait for it.
                try:
                    sent = sock.send(first)
                except BlockingIOError:
                    await conn._wait_writable()
                    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                else:
                    error = 0
            if error:
                raise ConnectFailed(os.strerror(error))
        except BaseException as exc:  # also the caller's timeout: never leak the socket
            sock.close()
            if isinstance(exc, OSError):  # send at once refused (ECONNREFUSED)
                raise ConnectFailed(str(exc)) from exc
            raise
        try:
            await conn.send(first[sent:])
        except BaseException:
            sock.close()
            raise
        return conn

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view):]
            except BlockingIOError:
                await self._wait_writable()

    async def _wait_writable(self) -> None:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        fd = self.sock.fileno()
        loop.add_writer(fd, _wake, waiter)
        try:
            await waiter
        finally:
            loop.remove_writer(fd)

    def _readable(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _more(self, wait_first: bool = False) -> None:
        """Append what the socket has to the buffer, waiting for it; IncompleteReadError at
        end of stream. `wait_first`: right after a request the answer is rarely there yet."""
        if not self._watched:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self.sock.fileno(), self._readable)
            self._watched = True
        while True:
            if not wait_first:
                try:
                    data = self.sock.recv(_RECV)
                    break
                except BlockingIOError:
                    pass
            wait_first = False
            self._waiter = self._loop.create_future()  # type: ignore[union-attr]
            try:
                await self._waiter
            finally:
                self._waiter = None
        if not data:
            raise asyncio.IncompleteReadError(bytes(self.buf), None)
        self.buf += data

    def unwatch(self) -> None:
        """Stop watching for reads (an idle kept connection must belong to no event loop)."""
        if self._watched:
            self._watched = False
            if not self._loop.is_closed():  # type: ignore[union-attr]
                self._loop.remove_reader(self.sock.fileno())  # type: ignore[union-attr]

    def close(self) -> None:
        self.unwatch()
        self.sock.close()

    def closed_by_peer(self) -> bool:
        return closed_by_peer(self.sock)

    async def read_response(self, max_body: int, keep_body: bool) -> Response:
        """Read one answer right after a request was sent."""
        parser = ResponseParser(max_body, keep_body)
        wait_first = True  # right after a request the answer is rarely there yet
        while (answer := parser.feed(self.buf)) is None:
            try:
                await self._more(wait_first)
            except asyncio.IncompleteReadError:
                return parser.eof(self.buf)
            wait_first = False
        return answer


# ResponseParser's states.
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _TO_EOF = range(7)


class ResponseParser:
    """One HTTP/1.x answer read from bytes as they arrive, with no I/O of its own: the event
    loop's Connection and the health checks' batches (infra/health.py) both drive it. feed()
    takes the connection's buffer after each read and consumes what belongs to the answer;
    bytes past the answer stay in the buffer."""

    __slots__ = ("_max_body", "_body", "_state", "_remaining", "_total", "_status", "_keep")

    def __init__(self, max_body: int, keep_body: bool) -> None:
        self._max_body = max_body
        self._body = bytearray() if keep_body else None
        self._state = _HEAD
        self._remaining = 0  # bytes left of the body or of the current chunk
        self._total = 0  # body bytes so far (chunked or delimited by close)
        self._status = 0
        self._keep = False

    def feed(self, buf: bytearray) -> Response | None:
        """The Response once the answer is complete; None while more bytes are needed.
        RemoteProtocolError or BodyTooLarge when the answer is not one to read."""
        while True:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEADERS:
                        raise RemoteProtocolError("header block too large")
                    return None
                text = buf[:end + 4].decode("latin-1")
                del buf[:end + 4]
                done = self._head(text)
                if done is not None:
                    return done
            elif state == _LENGTH or state == _CHUNK_DATA or state == _CHUNK_END:
                if not self._take(buf, into_body=state != _CHUNK_END):
                    return None
                if state == _LENGTH:
                    return self._done()
                if state == _CHUNK_DATA:
                    self._state, self._remaining = _CHUNK_END, 2  # the chunk's CRLF
                else:
                    self._state = _CHUNK_SIZE
            elif state == _CHUNK_SIZE or state == _TRAILERS:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEADERS:
                        raise RemoteProtocolError("header block too large")
                    return None
                line = bytes(buf[:end])
                del buf[:end + 2]
                if state == _TRAILERS:
                    if not line:  # trailers, if any, end with an empty line
                        return self._done()
                    continue
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError as exc:
                    raise RemoteProtocolError("bad chunk size") from exc
                if size == 0:
                    self._state = _TRAILERS
                    continue
                self._total += size
                if self._total > self._max_body:
                    raise BodyTooLarge()
                self._state, self._remaining = _CHUNK_DATA, size
            else:  # _TO_EOF: everything until the server closes
                self._total += len(buf)
                if self._total > self._max_body:
                    raise BodyTooLarge()
                if self._body is not None:
                    self._body += buf
                buf.clear()
                return None

    def eof(self, buf: bytearray) -> Response:
        """The server closed: the answer if its body was delimited by the close, else
        IncompleteReadError (closed mid-answer)."""
        if self._state == _TO_EOF:
            return self._done()
        raise asyncio.IncompleteReadError(bytes(buf), None)

    def _head(self, text: str) -> Response | None:
        """Read the head; the Response at once when the answer has no body."""
        status_line = text[:text.find("\r\n")]
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise RemoteProtocolError(f"bad status line {status_line[:40]!r}")
        status = int(parts[1])
        if 100 <= status < 200 and status != 101:
            return None  # 1xx interim answer (100 Continue, 103 Early Hints): the real one follows
        length = None
        chunked = False
        connection = ""
        for name, value in _HEADERS.findall(text):
            name = name.lower()
            if name == "content-length":
                try:
                    length = int(value)
                except ValueError as exc:
                    raise RemoteProtocolError("bad Content-Length") from exc
            elif name == "transfer-encoding":
                chunked = "chunked" in value.lower()
            else:
                connection = value.lower()
        self._status = status
        if parts[0] == "HTTP/1.0":
            self._keep = "keep-alive" in connection
        else:
            self._keep = "close" not in connection
        if status == 101:
            self._keep = False  # switched protocols: no HTTP after this
            return self._done()
        if status in _NO_BODY:
            return self._done()
        if chunked:
            self._state = _CHUNK_SIZE
        elif length is not None:
            if length > self._max_body or length < 0:
                raise BodyTooLarge()
            if length == 0:
                return self._done()
            self._state, self._remaining = _LENGTH, length
        else:
            self._state, self._keep = _TO_EOF, False  # the connection is then spent
        return None

    def _take(self, buf: bytearray, into_body: bool) -> bool:
        """Consume up to the remaining bytes from buf (into the body if kept and `into_body`);
        whether none remain."""
        body = self._body if into_body else None
        if len(buf) <= self._remaining:
            self._remaining -= len(buf)
            if body is not None:
                body += buf
            buf.clear()
        else:
            if body is not None:
                body += buf[:self._remaining]
            del buf[:self._remaining]
            self._remaining = 0
        return not self._remaining

    def _done(self) -> Response:
        return Response(self._status, self._keep, b"" if self._body is None else bytes(self._body))


def closed_by_peer(sock: _socket.socket) -> bool:
    """Whether the server closed (or wrote to) this idle connection: one non-blocking peek."""
    try:
        sock.recv(1, socket.MSG_PEEK)  # b"": closed; bytes: stray data, also unusable
        return True
    except BlockingIOError:
        return False  # open, nothing pending: reusable
    except OSError:
        return True


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def request(family: socket.AddressFamily, address: object, data: bytes,
                  max_body: int) -> Response:
    """One request on a connection of its own (closed after the answer); the answer's body is
    kept. ConnectFailed when no connection could be made; OSError, IncompleteReadError,
    RemoteProtocolError or BodyTooLarge when the answer is broken."""
    conn = await Connection.open(family, address, data)
    try:
        return await conn.read_response(max_body, keep_body=True)
    finally:
        conn.close()
