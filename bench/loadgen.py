"""A bounded HTTP load loop over loopback that retries nothing, for switch tests and benches.

Each worker sends GETs one after another through Caddy with a site's Host header and records
every answer: when, how long, status, which slot answered, or the error. Bounded by a stop event
and a hard deadline; only 127.0.0.1 is ever addressed.

The client is codeb's own HTTP/1.1 one (infra/http1.py), not httpx: about a tenth of the CPU
per request, so one client process drives Caddy several times faster (the switch bench needs
at least 500 requests/s). Like httpx's pool, a kept connection the server closed while idle
is not used again (one non-blocking peek), and nothing is ever retried.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass

from codeb_tui.infra import http1

MAX_BODY = 1024 * 1024
REQUEST_TIMEOUT = 5.0


@dataclass(frozen=True)
class Sample:
    started: float  # time.monotonic()
    latency_ms: float
    status: int | None  # None: the request failed without an answer
    body: str
    error: str | None


async def hammer(port: int, host: str, stop: asyncio.Event, *, concurrency: int = 8,
                 keepalive: bool = True, deadline_s: float = 120.0, max_requests: int = 500_000,
                 rate: float | None = None) -> list[Sample]:
    """Send requests until `stop` is set (or the deadline or the count bound is reached).
    `rate`: requests per second in all, at most (None: as fast as answers come), so that a
    bench leaves the machine's other core to what it measures."""
    assert 1 <= concurrency <= 64
    samples: list[Sample] = []
    hard_stop = time.monotonic() + deadline_s
    request = http1.request_bytes("GET", "/", host)
    address = ("127.0.0.1", port)

    async def worker(index: int) -> None:
        conn: http1.Connection | None = None
        interval = concurrency / rate if rate else 0.0
        due = time.monotonic() + index * interval / concurrency  # workers spread over one interval
        while not stop.is_set() and time.monotonic() < hard_stop and len(samples) < max_requests:
            if interval:
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                due = max(due + interval, time.monotonic() - interval)  # no burst after a stall
            t0 = time.monotonic()
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    if conn is not None and conn.closed_by_peer():
                        conn.close()
                        conn = None
                    if conn is None:
                        conn = await http1.Connection.open(socket.AF_INET, address, request)
                    else:
                        await conn.send(request)
                    answer = await conn.read_response(MAX_BODY, keep_body=True)
                samples.append(Sample(t0, (time.monotonic() - t0) * 1000, answer.status,
                                      answer.body[:40].decode("utf-8", "replace"), None))
                if not (keepalive and answer.keep_alive):
                    conn.close()
                    conn = None
            except Exception as exc:  # every failure is a sample: nothing is retried
                samples.append(Sample(t0, (time.monotonic() - t0) * 1000, None, "",
                                      f"{type(exc).__name__}: {exc}"[:120]))
                if conn is not None:
                    conn.close()
                    conn = None
        if conn is not None:
            conn.close()

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return samples


def failures(samples: list[Sample]) -> list[Sample]:
    return [s for s in samples if s.status is None or s.status >= 500]


def rate(samples: list[Sample]) -> float:
    if len(samples) < 2:
        return 0.0
    span = max(s.started for s in samples) - min(s.started for s in samples)
    return len(samples) / span if span > 0 else 0.0


def _child(port: int, host: str, stop, out, concurrency: int, keepalive: bool, deadline_s: float,
           rate: float | None) -> None:
    async def main() -> list[Sample]:
        stop_async = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.01)
            stop_async.set()

        watcher = asyncio.create_task(watch())
        samples = await hammer(port, host, stop_async, concurrency=concurrency,
                               keepalive=keepalive, deadline_s=deadline_s, rate=rate)
        watcher.cancel()
        return samples

    out.put(asyncio.run(main()))


class LoadProcess:
    """`hammer` in a process of its own: the client must not share an event loop (or a GIL) with
    the operation it observes, or its timestamps lie about when requests were really sent.
    time.monotonic() is CLOCK_MONOTONIC, the same clock in every process."""

    def __init__(self, port: int, host: str, *, concurrency: int = 8, keepalive: bool = True,
                 deadline_s: float = 120.0, rate: float | None = None) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._out = ctx.Queue()
        self._proc = ctx.Process(target=_child, daemon=True, args=(
            port, host, self._stop, self._out, concurrency, keepalive, deadline_s, rate))

    def start(self) -> None:
        self._proc.start()

    def stop(self, timeout: float = 30.0) -> list[Sample]:
        self._stop.set()
        samples = self._out.get(timeout=timeout)
        self._proc.join(timeout)
        return samples


def stale_answers(samples: list[Sample], switches: list[tuple[float, float, str]]) -> list[Sample]:
    """Answers from the wrong slot: requests sent after a switch returned and answered before the
    next one began, yet not by the slot that switch made active. `switches` holds
    (started, returned, slot made active), in order."""
    stale = []
    bounds = [w[0] for w in switches[1:]] + [float("inf")]
    for (_, returned, slot), next_start in zip(switches, bounds):
        for s in samples:
            if (s.status == 200 and returned <= s.started
                    and s.started + s.latency_ms / 1000 <= next_start
                    and f"slot={slot}" not in s.body):
                stale.append(s)
    return stale
