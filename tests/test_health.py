"""HealthChecker against real servers on loopback (asyncio servers and busybox httpd)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable

import pytest

from codeb_tui.infra.health import MAX_BODY, HealthChecker

BUSYBOX = "/bin/busybox"
Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


def ok_answer(status: str = "200 OK", extra: str = "", body: bytes = b"ok") -> Answer:
    async def answer(reader, writer) -> bool:
        writer.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body)
        return True
    return answer


class Server:
    """A loopback HTTP server that reads each request's head, calls `answer` (returning
    whether to keep the connection open) and counts connections and requests."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> "Server":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        if hasattr(self._server, "close_clients"):
            self._server.close_clients()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                if not await self.answer(reader, writer):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def serving(answer: Answer, count: int):
    """`count` Servers of one kind at once."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(Server(answer)) for _ in range(count)]


@pytest.fixture
async def checker():
    health = HealthChecker("127.0.0.1", "/health", request_timeout=1.0)
    yield health
    await health.aclose()


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_200_is_healthy_with_latency(checker):
    async with Server(ok_answer()) as server:
        result = await checker.check(server.port)
    assert result.ok and result.detail == "HTTP 200"
    assert result.latency_ms is not None and 0 < result.latency_ms < 1000
    head = server.requests[0].decode()
    assert head.startswith("GET /health HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n" in head
    assert "User-Agent: codeb-health\r\n" in head


async def test_302_is_healthy_and_not_followed(checker):
    async with Server(ok_answer("302 Found", "Location: /elsewhere\r\n", b"")) as server:
        result = await checker.check(server.port)
    assert result.ok and result.detail == "HTTP 302"
    assert len(server.requests) == 1


async def test_500_is_unhealthy(checker):
    async with Server(ok_answer("500 Internal Server Error", body=b"boom")) as server:
        result = await checker.check(server.port)
    assert not result.ok and result.detail == "HTTP 500"


async def test_refused_port(checker):
    result = await checker.check(refused_port())
    assert result == type(result)(False, "connection refused", None)


async def test_silent_server_times_out_within_request_timeout():
    async def never(reader, writer) -> bool:
        await asyncio.sleep(3600)
        return False

    health = HealthChecker("127.0.0.1", "/health", request_timeout=0.3)
    async with Server(never) as server:
        started = time.monotonic()
        result = await health.check(server.port)
        elapsed = time.monotonic() - started
    await health.aclose()
    assert not result.ok and result.detail == "timed out"
    assert 0.25 < elapsed < 1.0


async def test_endless_body_is_unhealthy(checker):
    async def endless(reader, writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        while True:  # close-delimited body that never ends
            writer.write(b"x" * 16384)
            await writer.drain()

    async with Server(endless) as server:
        result = await checker.check(server.port)
    assert result.ok is False and result.detail == "body too large"


async def test_huge_content_length_is_unhealthy(checker):
    async with Server(ok_answer(body=b"x" * (MAX_BODY + 1))) as server:
        result = await checker.check(server.port)
    assert result.ok is False and result.detail == "body too large"


async def test_huge_chunked_body_is_unhealthy(checker):
    async def chunks(reader, writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"4000\r\n" + b"x" * 0x4000 + b"\r\n")
            await writer.drain()

    async with Server(chunks) as server:
        result = await checker.check(server.port)
    assert result.ok is False and result.detail == "body too large"


async def test_chunked_body_is_read_and_connection_reused(checker):
    async def chunked(reader, writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-Trailer: y\r\n\r\n")
        return True

    async with Server(chunked) as server:
        results = [await checker.check(server.port) for _ in range(3)]
    assert all(r.ok and r.detail == "HTTP 200" for r in results)
    assert server.connections == 1 and len(server.requests) == 3


async def test_keep_alive_reuses_one_connection(checker):
    async with Server(ok_answer()) as server:
        results = [await checker.check(server.port) for _ in range(10)]
    assert all(r.ok for r in results)
    assert server.connections == 1 and len(server.requests) == 10


async def test_no_more_idle_connections_than_max_idle():
    """Past max_idle kept connections, a check's connection is closed after its answer: a big
    fleet never takes every descriptor the process may open."""
    health = HealthChecker("127.0.0.1", "/health", request_timeout=1.0, max_idle=2)
    async with serving(ok_answer(), 3) as servers:
        ports = [s.port for s in servers]
        for _ in range(3):
            results = await health.check_many(ports)
            assert all(r.ok for r in results), results
        connections = sum(s.connections for s in servers)
    await health.aclose()
    # Three the first round; then each round two ports find a kept connection and one
    # (whichever answered last before) opens a new one.
    assert connections == 3 + 1 + 1


async def test_kept_connection_closed_by_server_is_retried_fresh(checker):
    async def one_answer_per_connection(reader, writer) -> bool:
        # Claims keep-alive, but drops the connection when the next request arrives (a server's
        # idle timeout firing just then): that check must retry once on a fresh connection.
        if writer in answered:
            return False
        answered.add(writer)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    answered: set[asyncio.StreamWriter] = set()
    async with Server(one_answer_per_connection) as server:
        results = [await checker.check(server.port) for _ in range(5)]
    assert all(r.ok and r.detail == "HTTP 200" for r in results), results
    # each check after the first: one request on the dead kept connection, one on a fresh one
    assert server.connections == 5 and len(server.requests) == 9


@pytest.fixture
def busybox_httpd(tmp_path):
    if not __import__("os").path.exists(BUSYBOX):
        pytest.skip("busybox not installed")
    (tmp_path / "health").write_text("ok\n")
    port = refused_port()
    proc = subprocess.Popen([BUSYBOX, "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", str(tmp_path)])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.02)
    yield port
    proc.terminate()
    proc.wait(5)


async def test_busybox_httpd_closing_after_each_answer(checker, busybox_httpd):
    results = [await checker.check(busybox_httpd) for _ in range(10)]
    assert all(r.ok and r.detail == "HTTP 200" for r in results), results
    assert all(r.latency_ms is not None for r in results)


async def test_concurrent_checks_of_50_ports(checker):
    async def slow_ok(reader, writer) -> bool:
        await asyncio.sleep(0.05)  # so that the checks overlap
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    async with serving(slow_ok, 50) as servers:
        for _ in range(2):
            results = await asyncio.gather(*(checker.check(s.port) for s in servers))
            assert all(r.ok and r.detail == "HTTP 200" for r in results), results
        assert all(s.connections == 1 and len(s.requests) == 2 for s in servers)


async def test_same_port_concurrently_uses_separate_connections(checker):
    async def slow_ok(reader, writer) -> bool:
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    async with Server(slow_ok) as server:
        results = await asyncio.gather(*(checker.check(server.port) for _ in range(2)))
        assert all(r.ok for r in results)
        assert server.connections == 2
        await checker.check(server.port)  # one of the two was kept, the other closed
        assert server.connections == 2 and len(server.requests) == 3


async def test_garbage_answer_is_a_short_type_name(checker):
    async def garbage(reader, writer) -> bool:
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        return False

    async with Server(garbage) as server:
        result = await checker.check(server.port)
    assert not result.ok and result.detail == "RemoteProtocolError" and result.latency_ms is None


async def test_answers_tells_a_listening_port_from_a_free_one():
    """Before a container starts on a slot's port, deploy asks whether anything answers
    there: a listener that never accepts (backlog only) counts; a closed port does not."""
    checker = HealthChecker("127.0.0.1", "/health", 1.0)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        assert await checker.answers(port)
    assert not await checker.answers(port)  # closed now: refused


async def test_one_batch_of_mixed_answers_each_in_its_place(busybox_httpd):
    """check_many: every kind of answer in one batch, results in the order asked; a silent
    server times out within request_timeout without holding back the others' answers."""
    async def never(reader, writer) -> bool:
        await asyncio.sleep(3600)
        return False

    async def garbage(reader, writer) -> bool:
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        return False

    health = HealthChecker("127.0.0.1", "/health", request_timeout=0.5)
    async with Server(ok_answer()) as ok, Server(ok_answer("500 Oops")) as broken, \
            Server(ok_answer("302 Found", "Location: /x\r\n")) as moved, \
            Server(never) as silent, Server(garbage) as ssh:
        ports = [ok.port, broken.port, refused_port(), silent.port, busybox_httpd, moved.port,
                 ssh.port, ok.port]
        started = time.monotonic()
        results = await health.check_many(ports)
        elapsed = time.monotonic() - started
    await health.aclose()
    assert [(r.ok, r.detail) for r in results] == [
        (True, "HTTP 200"), (False, "HTTP 500"), (False, "connection refused"),
        (False, "timed out"), (True, "HTTP 200"), (True, "HTTP 302"),
        (False, "RemoteProtocolError"), (True, "HTTP 200")]
    assert 0.45 < elapsed < 1.5
    answered = [results[i].latency_ms for i in (0, 1, 4, 5, 7)]
    assert all(latency is not None and latency < 300 for latency in answered), answered
    assert ok.connections == 2  # the port asked twice: two connections at once


async def test_batch_opens_at_most_limit_connections(checker):
    """check_many(ports, limit): a window of `limit` connections, the next one opened as an
    answer comes, until every port is checked."""
    open_now = peak = 0

    async def slow_ok(reader, writer) -> bool:
        nonlocal open_now, peak
        open_now += 1
        peak = max(peak, open_now)
        await asyncio.sleep(0.03)
        open_now -= 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        return False

    async with serving(slow_ok, 20) as servers:
        started = time.monotonic()
        results = await checker.check_many([s.port for s in servers], limit=5)
        elapsed = time.monotonic() - started
    assert all(r.ok for r in results), results
    assert peak == 5
    assert elapsed >= 4 * 0.03  # 20 ports through a window of 5


async def test_cancelled_batch_leaves_no_socket_open():
    def open_fds() -> int:
        return len(__import__("os").listdir("/proc/self/fd"))

    health = HealthChecker("127.0.0.1", "/health", request_timeout=5.0)
    # A listener that never accepts: connections complete in its backlog and nothing answers,
    # and no accepted socket of a server is counted among this process's descriptors.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        before = open_fds()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await health.check_many([silent.getsockname()[1]] * 10)
        after = open_fds()
    await health.aclose()
    assert after == before


async def test_a_host_name_is_resolved_once_for_the_batch():
    loop = asyncio.get_running_loop()
    first = (await loop.getaddrinfo("localhost", None, type=socket.SOCK_STREAM))[0][4][0]

    async def serve(reader, writer) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, first, 0)
    port = server.sockets[0].getsockname()[1]
    health = HealthChecker("localhost", "/health", request_timeout=1.0)
    try:
        results = await health.check_many([port, port])
    finally:
        server.close()
        await health.aclose()
    assert [(r.ok, r.detail) for r in results] == [(True, "HTTP 204")] * 2


async def test_an_ipv6_literal_is_checked_with_its_brackets_in_host():
    """`::1`: an AF_INET6 socket, and the Host header in brackets as HTTP wants it."""
    heads: list[bytes] = []

    async def serve(reader, writer) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    try:
        server = await asyncio.start_server(serve, "::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = server.sockets[0].getsockname()[1]
    health = HealthChecker("::1", "/health", request_timeout=1.0)
    try:
        (result,) = await health.check_many([port])
    finally:
        server.close()
        await health.aclose()
    assert result.ok and result.detail == "HTTP 200"
    assert f"Host: [::1]:{port}\r\n".encode() in heads[0]


async def test_request_waits_for_a_handshake_not_done_at_connect():
    """When connect returns before the handshake is done (off loopback; here a listener whose
    accept queue is full drops the SYN until the client sends it again a second later), the
    request is sent once the socket is writable."""
    loop = asyncio.get_running_loop()
    health = HealthChecker("127.0.0.1", "/health", request_timeout=5.0)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # room for one connection not yet accepted
        listener.setblocking(False)
        port = listener.getsockname()[1]
        filler = socket.create_connection(("127.0.0.1", port))  # takes that room
        check = asyncio.ensure_future(health.check_many([port]))
        await asyncio.sleep(0.3)
        assert not check.done()
        conn, _ = await loop.sock_accept(listener)  # room again for the SYN sent again
        conn.close()
        filler.close()
        conn, _ = await loop.sock_accept(listener)
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += await loop.sock_recv(conn, 1024)
            await loop.sock_sendall(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            (result,) = await check
    await health.aclose()
    assert head.startswith(b"GET /health HTTP/1.1\r\n")
    assert result.ok and result.detail == "HTTP 200" and result.latency_ms > 300


async def test_checks_across_a_real_link(remote_hosts, tmp_path):
    """Off loopback the TCP handshake is not done when connect returns: the request waits for
    the socket to be writable. busybox httpd in web1's namespace, reached over its veth pair;
    then the link goes down and a check times out."""
    host = remote_hosts.hosts["web1"]
    (tmp_path / "health").write_text("ok\n")
    port = refused_port()
    host.spawn("health-httpd", [BUSYBOX, "httpd", "-f", "-p", f"{host.address}:{port}",
                                "-h", str(tmp_path)])
    health = HealthChecker(host.address, "/health", request_timeout=0.5)
    try:
        deadline = time.monotonic() + 5
        while (await health.check(port)).detail != "HTTP 200" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        results = await health.check_many([port, port + 1, port])
        assert [(r.ok, r.detail) for r in results] == [
            (True, "HTTP 200"), (False, "connection refused"), (True, "HTTP 200")]
        remote_hosts.stop("web1", "link")
        try:
            assert (await health.check(port)).detail == "timed out"
        finally:
            remote_hosts.start("web1")
    finally:
        await health.aclose()
        proc = host.procs.pop("health-httpd")
        proc.terminate()
        proc.wait(5)
