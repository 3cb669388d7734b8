"""Nothing blocks the event loop: operations of one process run side by side, and waiting for
a lock another process holds leaves the loop free (real Docker, registry and Caddy)."""

from __future__ import annotations

import asyncio

from codeb_tui.domain import events
from codeb_tui.domain.model import Environment
from codeb_tui.engine.facade import Engine

from conftest import LOCAL, LoopStalls, collect, image, locks_held_elsewhere, terminal


async def test_two_projects_at_once_in_one_process(engine, prefix):
    first, second = f"{prefix}-one", f"{prefix}-two"
    results = await asyncio.gather(collect(engine.deploy(LOCAL, first, image("v1"))),
                                   collect(engine.deploy(LOCAL, second, image("v2"))))
    for evs in results:
        assert isinstance(terminal(evs), events.Finished), terminal(evs)
    results = await asyncio.gather(collect(engine.promote(LOCAL, first)),
                                   collect(engine.promote(LOCAL, second)))
    for evs in results:
        assert isinstance(terminal(evs), events.Finished), terminal(evs)
    pairs = {p.project: p for p in await engine.context.registry.aread_all()}
    assert pairs[first].blue.port != pairs[second].blue.port


async def test_same_project_twice_in_one_process_is_refused_naming_the_holder(engine, prefix):
    """Two operations of one process (two console workers, two API requests) exclude each
    other like two processes: the second is refused at once, naming the first's actor."""
    project = f"{prefix}-twice"
    registry = engine.context.registry
    async with registry.project_lock(project, Environment.PRODUCTION, "deploy", actor="alice"):
        with LoopStalls() as stalls:
            refused = await collect(engine.deploy(LOCAL, project, image("v2")))
    last = terminal(refused)
    assert isinstance(last, events.Failed) and last.exit_code == 2, last
    assert f"{project} (production) is locked: deploy {project} (production) by alice" in last.error
    assert stalls.worst < 0.1
    assert isinstance(terminal(await collect(engine.deploy(LOCAL, project, image("v2")))),
                      events.Finished)


async def test_waiting_for_locks_held_elsewhere_never_blocks_the_loop(make_config, prefix, tmp_path):
    engine = Engine(make_config(registry__lock_timeout=30))
    project = f"{prefix}-wait"
    try:
        assert isinstance(terminal(await collect(engine.deploy(LOCAL, project, image("v1")))),
                          events.Finished)
        root = engine.context.registry.root
        with locks_held_elsewhere(root, 3, f"{project}-prod", "proxy") as holder:
            with LoopStalls() as stalls:
                evs = await collect(engine.promote(LOCAL, project))
            assert holder.poll() is not None  # it ran only once the colleague let go
        assert isinstance(terminal(evs), events.Finished), terminal(evs)
        waits = [e.message for e in evs if isinstance(e, events.Log) and e.message.startswith("waiting up to")]
        assert len(waits) == 1  # the project lock; the proxy lock was free by then
        assert "deploy by a colleague" in waits[0] and "colleague" in waits[0] and "s ago" in waits[0]
        assert stalls.worst < 0.1, f"event loop blocked for {stalls.worst * 1000:.0f} ms"
    finally:
        await engine.aclose()


async def test_waiting_for_the_proxy_lock_shows_its_holder(make_config, prefix):
    engine = Engine(make_config(registry__lock_timeout=30))
    project = f"{prefix}-proxywait"
    try:
        assert isinstance(terminal(await collect(engine.deploy(LOCAL, project, image("v1")))),
                          events.Finished)
        with locks_held_elsewhere(engine.context.registry.root, 2, "proxy"):
            with LoopStalls() as stalls:
                evs = await collect(engine.promote(LOCAL, project))
        assert isinstance(terminal(evs), events.Finished), terminal(evs)
        waits = [e.message for e in evs if isinstance(e, events.Log) and e.message.startswith("waiting up to")]
        assert len(waits) == 1 and "the proxy registry" in waits[0] and "colleague" in waits[0]
        assert stalls.worst < 0.1, f"event loop blocked for {stalls.worst * 1000:.0f} ms"
    finally:
        await engine.aclose()
