"""CPU per health check: the old httpx checker against codeb's own, side by side.

Targets (loopback only, started here, no Docker needed):

  busybox      `busybox httpd` processes serving a /health file, as the demo image does; busybox
               closes after each answer, so every check opens a connection (both ways)
  keep-alive   a Python asyncio server in a subprocess that keeps connections open: the new
               checker reuses one per port; the old one (max_keepalive_connections=0) does not

Each round checks all ports of a target concurrently (as the console polls its slots) until
--checks checks are done, once per way; rounds rotate the ways' order so machine noise hits
all. Ways: httpx (one get per port, gathered); the new checker's check_many (one batch per poll,
as the console and `codeb status` ask; the target's ratio); the new checker's check() per port,
gathered (as the health gate asks, one port at a time).
CPU is time.process_time() of this process only (the servers run in other processes); medians
over rounds are compared.

    .venv/bin/python -m bench.health [--checks 1000] [--ports 4] [--round-ports 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from codeb_tui.infra.health import HealthChecker, HealthResult

BUSYBOX = "/bin/busybox"
HOST = "127.0.0.1"


class OldHttpxHealthChecker:
    """Verbatim copy of HealthChecker before the rewrite (httpx), kept only for this comparison."""

    def __init__(self, host: str, path: str, request_timeout: float) -> None:
        self.host = host
        self.path = path
        self._client = httpx.AsyncClient(
            timeout=request_timeout,
            trust_env=False,  # never send a health check through a proxy
            verify=False,  # plain HTTP on the slot's port; no SSL context to build
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=0),
        )

    async def check(self, port: int) -> HealthResult:
        url = f"http://{self.host}:{port}{self.path}"
        started = time.perf_counter()
        try:
            response = await self._client.get(url, follow_redirects=False)
        except httpx.ConnectError:
            return HealthResult(False, "connection refused", None)
        except httpx.TimeoutException:
            return HealthResult(False, "timed out", None)
        except httpx.HTTPError as exc:
            return HealthResult(False, type(exc).__name__, None)
        latency = (time.perf_counter() - started) * 1000
        ok = 200 <= response.status_code < 400
        return HealthResult(ok, f"HTTP {response.status_code}", latency)

    async def aclose(self) -> None:
        await self._client.aclose()


def free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind((HOST, 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def wait_listening(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"nothing listening on {HOST}:{port}")


async def serve_keepalive(ports: list[int]) -> None:
    """The --serve mode: answer GET /health with 200 and keep the connection open."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    servers = [await asyncio.start_server(handle, HOST, port) for port in ports]
    await asyncio.gather(*(s.serve_forever() for s in servers))


class OneByOne:
    """The new checker asked one check() per port, all at once (as the health gate asks one)."""

    def __init__(self, host: str, path: str, request_timeout: float) -> None:
        self._checker = HealthChecker(host, path, request_timeout)

    async def check_many(self, ports: list[int]) -> list[HealthResult]:
        return await asyncio.gather(*(self._checker.check(port) for port in ports))

    async def aclose(self) -> None:
        await self._checker.aclose()


async def run_checks(checker, ports: list[int], checks: int) -> tuple[float, float]:
    """(cpu seconds, wall seconds) for `checks` checks, all ports concurrently per poll: one
    check_many (as the console's poller and `codeb status` ask), or one check() each."""
    polls = max(1, checks // len(ports))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(polls):
        if hasattr(checker, "check_many"):
            results = await checker.check_many(ports)
        else:
            results = await asyncio.gather(*(checker.check(port) for port in ports))
        bad = [r for r in results if not r.ok]
        if bad:
            sys.exit(f"{type(checker).__name__}: unhealthy answer {bad[0]}")
    return time.process_time() - cpu0, time.perf_counter() - wall0


def socket_floor(port: int, checks: int) -> float:
    """CPU ms per 1,000 bare blocking connect/send/recv-to-close exchanges, no event loop and no
    parsing: what the kernel's loopback TCP alone costs when every check needs a new connection."""
    request = f"GET /health HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
    cpu0 = time.process_time()
    for _ in range(checks):
        with socket.create_connection((HOST, port)) as sock:
            sock.sendall(request)
            while sock.recv(65536):
                pass
    return (time.process_time() - cpu0) / checks * 1000 * 1000


async def loop_floor(ports: list[int], checks: int) -> float:
    """CPU ms per 1,000 checks done the least way an event loop can, polled as run_checks does:
    socket, connect, send, one reader registration, one wait, recv, close; no timeout, no
    parsing, no result. What a check on a fresh connection costs before any HTTP is read."""
    loop = asyncio.get_running_loop()

    async def one(port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            sock.connect_ex((HOST, port))
            sock.send(f"GET /health HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
            fd = sock.fileno()
            while True:
                waiter = loop.create_future()
                loop.add_reader(fd, waiter.set_result, None)
                try:
                    await waiter
                finally:
                    loop.remove_reader(fd)
                if b"\r\n\r\n" in sock.recv(65536):
                    return
        finally:
            sock.close()

    polls = max(1, checks // len(ports))
    cpu0 = time.process_time()
    for _ in range(polls):
        await asyncio.gather(*(one(port) for port in ports))
    return (time.process_time() - cpu0) / (polls * len(ports)) * 1000 * 1000


async def bench_target(name: str, ports: list[int], checks: int, rounds: int,
                       floor: bool = False) -> dict:
    ways = {"old (httpx)": OldHttpxHealthChecker, "new (batch)": HealthChecker,
            "new, check()": OneByOne}
    samples: dict[str, list[tuple[float, float]]] = {way: [] for way in ways}
    done = max(1, checks // len(ports)) * len(ports)
    for round_ in range(rounds):
        order = list(ways.items())[round_ % len(ways):] + list(ways.items())[:round_ % len(ways)]
        for way, cls in order:
            checker = cls(HOST, "/health", 5.0)
            try:
                await run_checks(checker, ports, len(ports) * 5)  # warm-up: imports, first connects
                samples[way].append(await run_checks(checker, ports, checks))
            finally:
                await checker.aclose()
    print(f"\n{name}: {len(ports)} ports, {done} checks per round, median of {rounds} rounds")
    print(f"  {'way':<14} {'checks/s':>10} {'CPU ms / 1,000 checks':>22}")
    cpu = {}
    for way, runs in samples.items():
        cpu[way] = statistics.median(c for c, _ in runs) / done * 1000 * 1000
        rate = done / statistics.median(w for _, w in runs)
        print(f"  {way:<14} {rate:>10,.0f} {cpu[way]:>22.1f}")
    if floor:
        print(f"  {'(socket floor)':<14} {'':>10} {socket_floor(ports[0], done):>22.1f}"
              "   bare blocking sockets, no event loop: mostly the kernel")
        print(f"  {'(loop floor)':<14} {'':>10} {await loop_floor(ports, done):>22.1f}"
              "   the same through the event loop, no HTTP read: socket, wait, close")
    ratio = cpu["new (batch)"] / cpu["old (httpx)"]
    verdict = "meets" if ratio <= 0.1 else "MISSES"
    print(f"  ratio new/old CPU: {ratio:.3f} x ({verdict} the 0.1 x target)")
    return {"ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=1000)
    parser.add_argument("--ports", type=int, default=4)
    parser.add_argument("--round-ports", type=int, default=32,
                        help="ports of the second busybox target (0: skip it); the console's "
                             "status asks up to 32 connections at once")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--serve", type=int, nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve_keepalive(args.serve))
        return
    if not os.path.exists(BUSYBOX):
        sys.exit(f"{BUSYBOX} not found (busybox-static)")

    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="codeb-bench-health-") as docroot:
        Path(docroot, "health").write_text("ok\n")
        try:
            busybox_ports = free_ports(max(args.ports, args.round_ports))
            for port in busybox_ports:
                procs.append(subprocess.Popen(
                    [BUSYBOX, "httpd", "-f", "-p", f"{HOST}:{port}", "-h", docroot]))
            keepalive_ports = free_ports(args.ports)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "bench.health", "--serve", *map(str, keepalive_ports)]))
            for port in busybox_ports + keepalive_ports:
                wait_listening(port)
            targets = [
                ("busybox httpd (close after each answer)", busybox_ports[:args.ports], True),
                (f"busybox httpd, {args.round_ports} ports at once (as a console round asks)",
                 busybox_ports[:args.round_ports], False),
                ("asyncio keep-alive server", keepalive_ports, False)]
            ratios = [asyncio.run(bench_target(name, ports, args.checks, args.rounds, floor))["ratio"]
                      for name, ports, floor in targets if ports]
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(5)
    print(f"\nworst ratio: {max(ratios):.3f} x (target <= 0.1 x)")


if __name__ == "__main__":
    main()
