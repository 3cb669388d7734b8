"""History survives a database outage: rows an operation could not write wait in the journal
beside the registry and reach PostgreSQL, exactly once, when it is back (real PostgreSQL, cut
and restored at the TCP level; real Docker, registry and Caddy)."""

from __future__ import annotations

import asyncio

from codeb_tui.domain import events
from codeb_tui.engine.facade import Engine
from codeb_tui.engine.reconcile import DriftKind
from codeb_tui.store import open_store

from conftest import LOCAL, TcpGate, collect, image, terminal


def finished(evs: list[events.Event]) -> events.Finished:
    last = terminal(evs)
    assert isinstance(last, events.Finished), last
    return last


async def test_twenty_operations_during_an_outage_reach_the_database_once(
        make_config, prefix, fresh_pg_database):
    port = int(fresh_pg_database.rsplit(":", 1)[1].split("/", 1)[0])
    gate = TcpGate(port)
    await gate.open()
    dsn = fresh_pg_database.replace(f":{port}/", f":{gate.port}/")
    engine = Engine(make_config(database={"dsn": dsn, "connect_timeout": 1}))
    journal = engine.context.history.journal
    try:
        finished(await collect(engine.deploy(LOCAL, f"{prefix}-warm", image("v1"))))  # connected

        await gate.close()  # the database goes away under a connected engine
        projects = [f"{prefix}-p{i}" for i in range(5)]
        done: list[events.Finished] = []
        for project in projects:
            for stream in (lambda: engine.deploy(LOCAL, project, image("v1")),
                           lambda: engine.promote(LOCAL, project),
                           lambda: engine.deploy(LOCAL, project, image("v2")),
                           lambda: engine.promote(LOCAL, project)):
                done.append(finished(await collect(stream())))
        assert len(done) == 20
        assert all(any("database out of sync" in w and "journal" in w for w in d.warnings)
                   for d in done)
        kept = await asyncio.to_thread(journal.entries)
        assert [e.operation_id for e in kept] == [d.operation_id for d in done]

        # While it is down, reconcile says so and names the rows waiting.
        report = await engine.reconcile(LOCAL, live=False)
        waiting = report.of_kind(DriftKind.HISTORY_NOT_REPLAYED)
        assert report.of_kind(DriftKind.DATABASE_UNREACHABLE)
        assert len(waiting) == 1 and "20 operation(s)" in waiting[0].detail and not waiting[0].fixed

        await gate.open()
        report = await engine.reconcile(LOCAL, repair=True, live=False)
        assert not report.of_kind(DriftKind.HISTORY_NOT_REPLAYED), report.drift
        assert await asyncio.to_thread(journal.count) == 0
        # A second replay of the same rows (a crash after the write, before the file rewrite)
        # changes nothing.
        for entry in kept:
            await asyncio.to_thread(journal.append, entry.deployment, entry.audit)
        replayed = await engine.context.history.replay()
        assert replayed is not None and replayed.replayed == 20 and replayed.error is None
    finally:
        await engine.aclose()
        await gate.close()

    store = open_store(fresh_pg_database, make_config().database.sqlite_path, 3.0)
    await store.connect()
    try:
        deployments = {d.operation_id: d for d in await store.list_deployments(limit=1000)}
        audits = [a for a in await store.list_audit(limit=1000)]
    finally:
        await store.close()
    for entry in kept:
        assert deployments[entry.operation_id] == entry.deployment
        rows = [a for a in audits if a.operation_id == entry.operation_id]
        assert rows == [entry.audit], entry.operation_id
    # Every operation of the outage is there, once, with what the operator saw.
    for d in done:
        row = deployments[d.operation_id]
        assert (row.operation, row.project, row.result, row.environment) == (
            d.operation, d.project, "succeeded", "production")
    assert len([a for a in audits if a.operation_id in {d.operation_id for d in done}]) == 20
