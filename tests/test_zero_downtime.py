"""Promote and rollback under a request loop through Caddy: no failed request, no 5xx, and no
answer from the old slot once the operation has returned. The client is a separate process that
retries nothing."""

from __future__ import annotations

import asyncio
import time

from bench.loadgen import LoadProcess, failures, rate, stale_answers
from conftest import LOCAL, CADDY_HTTP_PORT, collect, image, terminal

from codeb_tui.domain import events


async def switch(stream) -> tuple[float, float, str]:
    started = time.monotonic()
    last = terminal(await collect(stream))
    assert isinstance(last, events.Finished), getattr(last, "error", last)
    return started, time.monotonic(), last.result["slot"]


async def test_promote_and_rollback_drop_no_request(engine, prefix):
    project = f"{prefix}-zd"
    for stream in (engine.deploy(LOCAL, project, image("v1")), engine.promote(LOCAL, project),
                   engine.deploy(LOCAL, project, image("v2"))):
        assert isinstance(terminal(await collect(stream)), events.Finished)

    load = LoadProcess(CADDY_HTTP_PORT, f"{project}.prod.test", concurrency=8, deadline_s=60)
    load.start()
    await asyncio.sleep(2.0)  # the client process is up and a baseline flows
    windows = [await switch(engine.promote(LOCAL, project))]
    await asyncio.sleep(0.5)
    windows.append(await switch(engine.rollback(LOCAL, project)))
    await asyncio.sleep(0.5)
    samples = await asyncio.to_thread(load.stop)

    assert [w[2] for w in windows] == ["green", "blue"]
    assert rate(samples) >= 200, f"only {rate(samples):.0f} requests/s"
    for started, returned, _ in windows:  # traffic really flowed during each switch
        assert sum(1 for s in samples if started <= s.started <= returned) >= 5
    failed = failures(samples)
    assert failed == [], f"{len(failed)} failed: {sorted({s.error or str(s.status) for s in failed})}"
    assert stale_answers(samples, windows) == []
    assert {s.status for s in samples} == {200}
