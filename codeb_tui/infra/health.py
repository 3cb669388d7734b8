"""HTTP health checks of slots: many checks at once, each a GET read by http1.py's parser.

Why not httpx: the console checks every slot on each poll, and httpx costs about 1.1 ms of CPU
per check. Why not one coroutine per check on the event loop: for servers that close after each
answer (busybox httpd) each check is a new connection, and the loop's own cost per socket (a
reader registration, a future, a task step per wait) was as much as the kernel's TCP connect and
close. A batch of checks puts its sockets on a private epoll, which the loop watches as one
reader: one registration and one wake-up per batch, not per socket (see bench/health.py).
One idle keep-alive connection is kept per port, so a slot whose server keeps connections open
(most frameworks) costs one send and one recv per check.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import ipaddress
import resource
import select
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from codeb_tui.infra.http1 import (BodyTooLarge, RemoteProtocolError, ResponseParser,
                                   closed_by_peer)

# A health answer is a few bytes; anything past this is a misbehaving slot, not a body to read.
MAX_BODY = 64 * 1024
# Connections one batch opens at once, unless the caller says otherwise: a window, so that a
# thousand slots never open a thousand sockets at once (nor spend the whole timeout queued).
BATCH_OPEN = 32
_NONBLOCKING_STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
_RECV = 65536
_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
REFUSED = "connection refused"


@dataclass(frozen=True)
class HealthResult:
    ok: bool
    detail: str  # "HTTP 200", "HTTP 500", "connection refused", "timed out", ...
    latency_ms: float | None


class HealthChecker:
    def __init__(self, host: str, path: str, request_timeout: float,
                 max_idle: int | None = None) -> None:
        self.host = host
        self.path = path
        self.request_timeout = request_timeout
        try:
            self._family: socket.AddressFamily | None = (
                socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET)
        except ValueError:
            self._family = None  # a name: resolved (off the loop) once per batch
        # IPv6 literals need brackets in the Host header.
        self._host_header = f"[{host}]" if ":" in host else host
        # At most one idle connection per port. A check pops it while in use, so a concurrent
        # check of the same port finds none and opens its own (never two requests on one socket).
        # Plain sockets belong to no event loop, so kept ones survive one asyncio.run to the next.
        self._idle: dict[int, _socket.socket] = {}
        # Past this many, a check's connection is closed after the answer, not kept: many
        # slots must never take every descriptor the process may open.
        self.max_idle = _idle_budget() if max_idle is None else max_idle
        self._requests: dict[int, bytes] = {}  # the fixed GET of each port, built once

    async def check(self, port: int) -> HealthResult:
        """GET http://host:port<path>; 2xx and 3xx are healthy (redirects are not followed).
        request_timeout covers connect and answer; latency is connect + answer."""
        return (await self.check_many((port,)))[0]

    async def check_many(self, ports: Sequence[int], limit: int = BATCH_OPEN
                         ) -> list[HealthResult]:
        """check() of each port, at most `limit` connections open at once; the results in the
        order of `ports` (a port listed twice is checked twice, on separate connections)."""
        if not ports:
            return []
        loop = asyncio.get_running_loop()
        if self._family is None:
            try:  # a name: resolved off the loop, once per batch
                infos = await loop.getaddrinfo(self.host, None, type=socket.SOCK_STREAM)
            except OSError:
                return [HealthResult(False, REFUSED, None)] * len(ports)
            family, address = infos[0][0], infos[0][4]
        else:
            family, address = self._family, (self.host, 0)
        return await _Batch(self, family, address, ports, max(1, limit)).run(loop)

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

    def _request(self, port: int) -> bytes:
        request = self._requests.get(port)
        if request is None:
            request = self._requests[port] = (
                f"GET {self.path} HTTP/1.1\r\nHost: {self._host_header}:{port}\r\n"
                "User-Agent: codeb-health\r\nConnection: keep-alive\r\n\r\n").encode("latin-1")
        return request

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for sock in idle.values():
            sock.close()


def _idle_budget() -> int:
    """Half the soft limit on open files (cli/startup.py raises it at start)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft // 2


class _Check:
    """One port's check within a batch."""

    __slots__ = ("index", "port", "sock", "parser", "buf", "started", "deadline", "reused",
                 "unsent")

    def __init__(self, index: int, port: int, started: float, deadline: float) -> None:
        self.index = index
        self.port = port
        self.started = started
        self.deadline = deadline  # request_timeout after the first try, kept by a retry
        self.sock: _socket.socket | None = None
        self.parser = ResponseParser(MAX_BODY, keep_body=False)
        self.buf = bytearray()
        self.reused = False  # on a kept connection: a close before any answer byte is retried
        self.unsent = b""  # the request's bytes still to send once the socket is writable


class _Batch:
    """One check_many: its sockets on a private epoll that the event loop watches as one
    reader. The reader's callback itself reads what is ready (a non-blocking poll of the
    private epoll), so an answer costs one pass of the loop, not a task wake-up as well; the
    batch's task wakes once, when every check has its result."""

    def __init__(self, checker: HealthChecker, family: socket.AddressFamily, address: tuple,
                 ports: Sequence[int], limit: int) -> None:
        self._checker = checker
        self._family = family
        self._address = address  # (host, 0, ...): the port is put in per check
        self._ports = ports
        self._limit = limit
        self._next = 0  # index of the next port to start
        self._open: dict[int, _Check] = {}  # by file descriptor
        self._results: list[HealthResult | None] = [None] * len(ports)
        self._epoll = select.epoll()  # made here, closed by run()
        self._done: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def run(self, loop: asyncio.AbstractEventLoop) -> list[HealthResult]:
        epoll = self._epoll
        try:
            self._start_more()
            if self._open:
                self._done = loop.create_future()
                loop.add_reader(epoll.fileno(), self._guarded, self._on_ready)
                try:
                    self._arm_timer(loop)
                    await self._done
                finally:
                    loop.remove_reader(epoll.fileno())
        finally:
            if self._timer is not None:
                self._timer.cancel()
            for check in self._open.values():  # cancelled (the caller's timeout): close all
                check.sock.close()  # type: ignore[union-attr]
            epoll.close()
        return self._results  # type: ignore[return-value]  # every check has its result

    def _guarded(self, step: Callable[[], None]) -> None:
        """Run a callback's step; the batch's task gets any error (the loop would only log it)."""
        try:
            step()
            if not self._open and not self._done.done():  # type: ignore[union-attr]
                self._done.set_result(None)  # type: ignore[union-attr]
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting task
            if not self._done.done():  # type: ignore[union-attr]
                self._done.set_exception(exc)  # type: ignore[union-attr]

    def _on_ready(self) -> None:
        for fd, _mask in self._epoll.poll(0):
            check = self._open.get(fd)
            if check is not None:
                self._ready(check)
        self._start_more()

    def _on_timer(self) -> None:
        """The earliest deadline has come: those past it are timed out; the timer is set again
        for the next one (checks started later by the window have later deadlines)."""
        self._timer = None
        now = time.perf_counter()
        for check in [c for c in self._open.values() if c.deadline <= now]:
            self._finish(check, HealthResult(False, "timed out", None))
        self._start_more()
        if self._open:
            self._arm_timer(asyncio.get_running_loop())

    def _arm_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        earliest = min(c.deadline for c in self._open.values())
        self._timer = loop.call_later(max(0.0, earliest - time.perf_counter()),
                                      self._guarded, self._on_timer)

    def _start_more(self) -> None:
        ports = self._ports
        while self._next < len(ports) and len(self._open) < self._limit:
            started = time.perf_counter()
            check = _Check(self._next, ports[self._next], started,
                           started + self._checker.request_timeout)
            self._next += 1
            self._start(check)

    def _start(self, check: _Check) -> None:
        """Send the request on the port's kept connection, or on a new one."""
        request = self._checker._request(check.port)
        sock = self._checker._idle.pop(check.port, None)
        if sock is not None:
            if not closed_by_peer(sock):  # busybox and idle timeouts: skip the doomed attempt
                try:
                    sent = sock.send(request)
                except OSError:
                    pass
                else:
                    check.reused = True
                    self._watch(check, sock, request[sent:])
                    return
            sock.close()
        try:
            # _socket.socket, not socket.socket: its Python wrappers cost a few microseconds.
            sock = _socket.socket(self._family, _NONBLOCKING_STREAM)
        except OSError as exc:
            self._results[check.index] = HealthResult(False, f"no socket: {exc.strerror}", None)
            return
        error = sock.connect_ex((self._address[0], check.port, *self._address[2:]))
        sent = 0
        if error == errno.EINPROGRESS or error == 0:
            # On loopback the handshake is done when connect returns: send at once; elsewhere
            # the send would block, and the request goes when the socket is writable.
            try:
                sent = sock.send(request)
            except BlockingIOError:
                pass
            except OSError:
                error = errno.ECONNREFUSED
            else:
                error = 0
        if error and error != errno.EINPROGRESS:
            sock.close()
            self._results[check.index] = HealthResult(False, REFUSED, None)
            return
        self._watch(check, sock, request[sent:])

    def _watch(self, check: _Check, sock: _socket.socket, unsent: bytes) -> None:
        check.sock = sock
        check.unsent = unsent
        fd = sock.fileno()
        self._epoll.register(fd, _OUT if unsent else _IN)
        self._open[fd] = check

    def _ready(self, check: _Check) -> None:
        sock = check.sock
        assert sock is not None
        if check.unsent:
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self._finish(check, HealthResult(False, REFUSED, None))
                return
            try:
                check.unsent = check.unsent[sock.send(check.unsent):]
            except BlockingIOError:
                return
            except OSError as exc:
                self._failed(check, exc)
                return
            if not check.unsent:
                self._epoll.modify(sock.fileno(), _IN)
            return
        try:
            data = sock.recv(_RECV)
        except BlockingIOError:
            return
        except OSError as exc:
            self._failed(check, exc)
            return
        try:
            if data:
                check.buf += data
                answer = check.parser.feed(check.buf)
            elif check.reused and not check.buf:
                self._retry(check)
                return
            else:
                answer = check.parser.eof(check.buf)
        except BodyTooLarge:
            self._finish(check, HealthResult(False, "body too large", None))
            return
        except (RemoteProtocolError, asyncio.IncompleteReadError) as exc:
            # IncompleteReadError: closed mid-answer. A short name, as before.
            self._finish(check, HealthResult(False, type(exc).__name__, None))
            return
        if answer is None:
            return
        latency = (time.perf_counter() - check.started) * 1000
        result = HealthResult(200 <= answer.status < 400, f"HTTP {answer.status}", latency)
        idle = self._checker._idle
        if (answer.keep_alive and not check.buf and check.port not in idle
                and len(idle) < self._checker.max_idle):
            # Kept for the next check of this port: a plain socket of no epoll and no loop.
            self._epoll.unregister(sock.fileno())
            del self._open[sock.fileno()]
            idle[check.port] = sock
            self._results[check.index] = result
        else:
            self._finish(check, result)

    def _failed(self, check: _Check, exc: OSError) -> None:
        if check.reused and not check.buf and isinstance(exc, ConnectionError):
            self._retry(check)  # closed by the server just as we reused it
        else:
            self._finish(check, HealthResult(False, type(exc).__name__, None))

    def _retry(self, check: _Check) -> None:
        """A GET is safe to send again, once, on a fresh connection, within the same deadline."""
        self._close(check)
        check.reused = False
        self._start(check)

    def _finish(self, check: _Check, result: HealthResult) -> None:
        self._close(check)
        self._results[check.index] = result

    def _close(self, check: _Check) -> None:
        sock = check.sock
        assert sock is not None
        del self._open[sock.fileno()]
        sock.close()  # also leaves the epoll: the socket was its only reference
        check.sock = None
