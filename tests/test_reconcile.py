"""Reconciliation against the real services: files vs SQLite/PostgreSQL, Docker, Caddy, ports.

Docker is shared by every test (and by other test sessions), so each reconcile here is limited to
the test's own projects (`projects=[prefix*]`), as an operator would limit it to one project.
Caddy's live config is the very thing compared, so this module runs a Caddy of its own on free
ports: a concurrent test session loading its config into the shared session Caddy cannot show
up here as proxy drift.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
from dataclasses import fields

import httpx

from codeb_tui.cli import main
from codeb_tui.engine.audit import slot_rows
from codeb_tui.engine.facade import Engine
from codeb_tui.domain.model import Environment
from codeb_tui.domain.proxy import build_caddy_config
from codeb_tui.engine.reconcile import DriftKind
from codeb_tui.store.base import SlotRow

from conftest import LOCAL, collect, free_ports, image, ok, through_caddy

PROD = Environment.PRODUCTION
DOWN_DSN = "postgresql://postgres@127.0.0.1:5999/postgres"


def kinds(report):
    return sorted((d.kind.value, d.project, d.slot) for d in report.drift)


async def run_reconcile(config_path, *argv: str) -> int:
    """`codeb reconcile ...` in process; main() runs its own event loop, so in a thread."""
    return await asyncio.to_thread(main, ["reconcile", *argv, "--config", str(config_path)])


async def test_missing_rows_after_an_outage_are_listed_and_repaired(make_config, config_file,
                                                                     prefix, capsys):
    project = f"{prefix}-a"
    down = Engine(make_config(database={"dsn": DOWN_DSN, "connect_timeout": 1}))
    try:
        done = ok(await collect(down.deploy(LOCAL, project, image("v1"))))
        assert "database out of sync" in done.warnings[0]
    finally:
        await down.aclose()

    config = make_config()  # the same registry, a real SQLite file
    path = config_file()  # the same config, for the command line
    scope = f"{prefix}*"
    assert await run_reconcile(path, scope, "--json") == 1
    out = json.loads(capsys.readouterr().out)
    assert sorted((d["kind"], d["slot"], d["fixable"]) for d in out["drift"]) == [
        ("missing_row", "blue", True), ("missing_row", "green", True)]
    assert out["summary"]["remaining"] == 2 and not out["summary"]["in_sync"]

    assert await run_reconcile(path, scope, "--repair") == 0
    text = capsys.readouterr().out
    assert "missing_row" in text and "fixed" in text and "in sync: 2 drift(s) repaired" in text

    engine = Engine(config)
    try:
        again = await engine.reconcile(LOCAL, projects=[scope])
        assert again.drift == [] and again.in_sync
        rows = {r.slot: r for r in await (await engine.context.history.store()).list_slots()}
        assert rows["blue"].state == "deployed" and rows["blue"].image == image("v1")
        # The repair is in the audit trail like any operation.
        repair = (await (await engine.context.history.store()).list_audit(action="reconcile.repair"))[0]
        assert repair.result == "succeeded" and repair.detail["fixed"] == 2
        assert f"missing_row {project} production blue: fixed" in repair.log
    finally:
        await engine.aclose()
    assert await run_reconcile(path, scope) == 0
    assert capsys.readouterr().out.strip().endswith("in sync")


async def test_twenty_operations_without_postgres_then_one_repair(make_config, prefix,
                                                                  fresh_pg_database):
    down = Engine(make_config(database={"dsn": DOWN_DSN, "connect_timeout": 1}))
    projects = [f"{prefix}-p{i}" for i in range(5)]
    finished = []
    try:
        for project in projects:
            for stream in (lambda: down.deploy(LOCAL, project, image("v1")),
                           lambda: down.promote(LOCAL, project),
                           lambda: down.deploy(LOCAL, project, image("v2")),
                           lambda: down.promote(LOCAL, project)):
                finished.append(ok(await collect(stream())))
    finally:
        await down.aclose()
    assert len(finished) == 20
    for done in finished:
        assert any("database out of sync" in w and "127.0.0.1:5999" in w for w in done.warnings)

    engine = Engine(make_config(database={"dsn": fresh_pg_database}))
    try:
        report = await engine.reconcile(LOCAL, repair=True, projects=[f"{prefix}*"])
        assert {d.kind for d in report.drift} == {DriftKind.MISSING_ROW}
        assert len(report.drift) == 10 and all(d.fixed for d in report.drift)
        assert report.in_sync and report.errors == []
        assert report.database.startswith("postgresql 127.0.0.1:5432/codeb_t_")

        # The database is now identical to the files, field by field.
        pairs = engine.context.registry.read_all()
        assert sorted(p.project for p in pairs) == projects
        expected = {(r.project, r.environment, r.slot): r for p in pairs for r in slot_rows(p)}
        stored = {(r.project, r.environment, r.slot): r
                  for r in await (await engine.context.history.store()).list_slots()}
        assert stored.keys() == expected.keys()
        for key, want in expected.items():
            for f in fields(SlotRow):
                assert getattr(stored[key], f.name) == getattr(want, f.name), (key, f.name)
        for project in projects:
            assert stored[(project, "production", "green")].state == "active"
            assert stored[(project, "production", "blue")].state == "grace"
            assert stored[(project, "production", "blue")].grace_expires_at is not None

        assert (await engine.reconcile(LOCAL, projects=[f"{prefix}*"])).drift == []

        # A row no file holds is deleted by the same batch.
        store = await engine.context.history.store()
        ghost = SlotRow(f"{prefix}-ghost", "staging", "green", "grace", 4501)
        await store.upsert_project_slots([ghost])
        report = await engine.reconcile(LOCAL, repair=True, projects=[f"{prefix}*"])
        assert kinds(report) == [("stale_row", f"{prefix}-ghost", "green")] and report.in_sync
        assert len(await store.list_slots()) == 10
    finally:
        await engine.aclose()


async def test_orphan_container_is_listed_and_only_pruned_on_request(engine, prefix, docker_client):
    kept = f"{prefix}-kept"
    ok(await collect(engine.deploy(LOCAL, kept, image("v1"))))
    ours = engine.context.registry.read_ssot().extra["installation"]
    orphan_project = f"{prefix}-x"

    def leftover(name: str, installation: str):
        return docker_client.containers.run(
            image("v1"), name=name, detach=True, network_mode="host",
            init=True, environment={"PORT": str(free_ports(1)[0])},
            labels={"codeb.project": orphan_project, "codeb.environment": "production",
                    "codeb.slot": "blue", "codeb.installation": installation})

    orphan = leftover(f"codeb-{orphan_project}-prod-blue", ours)
    # Another installation on the same Docker engine: never listed, never pruned.
    theirs = leftover(f"codeb-{orphan_project}-prod-blue-elsewhere", "0123456789abcdef")
    scope = [f"{prefix}*"]

    report = await engine.reconcile(LOCAL, projects=scope)
    assert kinds(report) == [("orphan_container", orphan_project, "blue")]
    drift = report.drift[0]
    assert drift.fixable and not drift.fixed and drift.container == orphan.name
    assert "no slot references it" in drift.detail and "--prune" in drift.detail

    report = await engine.reconcile(LOCAL, repair=True, projects=scope)
    assert not report.drift[0].fixed and not report.in_sync
    orphan.reload()
    assert orphan.status == "running"

    report = await engine.reconcile(LOCAL, prune=True, projects=scope)
    assert report.drift[0].fixed and report.in_sync
    assert [c.name for c in docker_client.containers.list(
        all=True, filters={"label": f"codeb.project={orphan_project}"})] == [theirs.name]
    assert docker_client.containers.get(f"codeb-{kept}-prod-blue").status == "running"
    assert (await engine.reconcile(LOCAL, projects=scope)).drift == []


async def test_stopped_container_is_restarted_by_repair(engine, config_file, prefix,
                                                      docker_client):
    project = f"{prefix}-stop"
    ok(await collect(engine.deploy(LOCAL, project, image("v1"))))
    ok(await collect(engine.promote(LOCAL, project)))
    docker_client.containers.get(f"codeb-{project}-prod-blue").stop(timeout=2)
    report = await engine.reconcile(LOCAL, projects=[project])
    assert kinds(report) == [("stopped_container", project, "blue")]
    assert report.drift[0].fixable and "is exited" in report.drift[0].detail
    assert "--repair starts it again" in report.drift[0].detail
    # An operation does not start it (an operator may have stopped it on purpose).
    ok(await collect(engine.deploy(LOCAL, project, image("v2"))))
    assert docker_client.containers.get(f"codeb-{project}-prod-blue").status == "exited"

    assert await run_reconcile(config_file(), project, "--repair") == 0
    assert docker_client.containers.get(f"codeb-{project}-prod-blue").status == "running"
    assert through_caddy(f"{project}.prod.test").text.startswith("healthy v1 slot=blue")
    assert (await engine.reconcile(LOCAL, projects=[project])).drift == []


async def test_stopped_container_on_a_taken_port_and_foreign_listener(engine, config_file,
                                                                      prefix, docker_client,
                                                                      capsys):
    project = f"{prefix}-taken"
    ok(await collect(engine.deploy(LOCAL, project, image("v1"))))
    ok(await collect(engine.promote(LOCAL, project)))
    port = engine.context.registry.read_slots(project, PROD).blue.port
    docker_client.containers.get(f"codeb-{project}-prod-blue").stop(timeout=2)
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    try:
        report = await engine.reconcile(LOCAL, repair=True, projects=[project])
        assert kinds(report) == [("port_conflict", project, "blue"),
                                 ("stopped_container", project, "blue")]
        conflict, stopped = sorted(report.drift, key=lambda d: d.kind.value)
        assert stopped.fixable and not stopped.fixed
        assert any("not healthy" in e for e in report.errors), report.errors
        assert conflict.port == port and not conflict.fixable
        assert "another program listens on it" in conflict.detail
        assert not report.in_sync

        assert await run_reconcile(config_file(), project, "--repair") == 1
        text = capsys.readouterr().out
        assert "cannot fix" in text and "drift remains: 2" in text
    finally:
        squatter.close()


async def test_proxy_changed_outside_codeb_is_reapplied(engine, prefix, caddy):
    project = f"{prefix}-px"
    ok(await collect(engine.deploy(LOCAL, project, image("v1"))))
    ok(await collect(engine.promote(LOCAL, project)))
    ok(await collect(engine.deploy(LOCAL, project, image("v2"))))
    pair = engine.context.registry.read_slots(project, PROD)
    # Someone loads a config by hand: production on the green (only deployed) slot, and no
    # route for green's preview host.
    prod_host, green_preview = f"{project}.prod.test", f"green.{project}.prod-preview.test"
    config = build_caddy_config(engine.config, engine.context.registry.read_all())
    routes = config["apps"]["http"]["servers"]["codeb"]["routes"]

    def hosts(route):
        return [h for m in route.get("match", []) for h in m.get("host", [])]

    routes[:] = [r for r in routes if green_preview not in hosts(r)]
    for route in routes:
        upstreams = route["handle"][-1].get("upstreams", [{}])
        if prod_host in hosts(route) and upstreams[0]["dial"].endswith(f":{pair.blue.port}"):
            upstreams[0]["dial"] = f"127.0.0.1:{pair.green.port}"
    response = httpx.post(f"{caddy['admin']}/load", json=config, timeout=5, trust_env=False)
    assert response.status_code == 200, response.text
    assert through_caddy(f"{project}.prod.test").text.startswith("healthy v2 slot=green")

    report = await engine.reconcile(LOCAL, projects=[f"{prefix}*"])
    assert kinds(report) == [("proxy_drift", project, "blue"), ("proxy_drift", project, "green")]
    by_slot = {d.slot: d for d in report.drift}
    assert by_slot["blue"].fixable and by_slot["blue"].port == pair.green.port
    assert f"sends {project}.prod.test to port {pair.green.port}" in by_slot["blue"].detail
    assert f"no route for green.{project}.prod-preview.test" in by_slot["green"].detail

    report = await engine.reconcile(LOCAL, repair=True, projects=[f"{prefix}*"])
    assert all(d.fixed for d in report.drift) and report.in_sync
    assert through_caddy(f"{project}.prod.test").text.startswith("healthy v1 slot=blue")
    assert through_caddy(f"green.{project}.prod-preview.test").text.startswith("healthy v2")
    assert (await engine.reconcile(LOCAL, projects=[f"{prefix}*"])).drift == []

    if engine.config.caddy.switch_mode == "file":
        # The switch marker removed by hand: production has no route any more.
        live = engine.config.caddy.markers / f"{project}-prod.blue.live"
        live.unlink()
        assert through_caddy(prod_host).status_code == 404
        report = await engine.reconcile(LOCAL, projects=[f"{prefix}*"])
        assert kinds(report) == [("proxy_drift", project, "blue")]
        assert f"no route for {prod_host}" in report.drift[0].detail
        report = await engine.reconcile(LOCAL, repair=True, projects=[f"{prefix}*"])
        assert report.in_sync and live.exists()
        assert through_caddy(prod_host).text.startswith("healthy v1 slot=blue")


async def test_field_edited_in_the_database_and_stale_rows(engine, prefix):
    project = f"{prefix}-f"
    ok(await collect(engine.deploy(LOCAL, project, image("v1"))))
    ghost = f"{prefix}-ghost"
    store = await engine.context.history.store()
    await store.upsert_project_slots([SlotRow(ghost, "production", "blue", "active", 4998)])
    db = sqlite3.connect(engine.config.database.sqlite_path)
    with db:
        db.execute("UPDATE project_slots SET image = 'tampered:1', port = 4444 WHERE slot = 'blue' "
                   "AND project_id = (SELECT id FROM projects WHERE name = ?)", (project,))
    db.close()

    report = await engine.reconcile(LOCAL, projects=[f"{prefix}*"])
    mismatches = {d.field: d for d in report.of_kind(DriftKind.FIELD_MISMATCH)}
    assert set(mismatches) == {"image", "port"}
    assert mismatches["image"].file_value == image("v1")
    assert mismatches["image"].db_value == "tampered:1"
    assert f"image is {image('v1')} in the files but tampered:1 in the database" in \
        mismatches["image"].detail
    assert mismatches["port"].db_value == 4444
    assert [(d.project, d.slot) for d in report.of_kind(DriftKind.STALE_ROW)] == [(ghost, "blue")]
    assert len(report.drift) == 3 and all(d.fixable for d in report.drift)

    report = await engine.reconcile(LOCAL, repair=True, projects=[f"{prefix}*"])
    assert all(d.fixed for d in report.drift) and report.in_sync
    rows = {(r.project, r.slot): r for r in await store.list_slots()}
    assert (ghost, "blue") not in rows
    assert rows[(project, "blue")] == slot_rows(engine.context.registry.read_slots(project, PROD))[0]
    assert (await engine.reconcile(LOCAL, projects=[f"{prefix}*"])).drift == []


async def test_unreachable_database_is_reported_not_fatal(make_config, prefix):
    engine = Engine(make_config(database={"dsn": DOWN_DSN, "connect_timeout": 1}))
    try:
        ok(await collect(engine.deploy(LOCAL, f"{prefix}-u", image("v1"))))
        report = await engine.reconcile(LOCAL, repair=True, projects=[f"{prefix}*"])
        # The deploy's history waits in the journal: said, and not fixable while it is down.
        assert kinds(report) == [("database_unreachable", None, None),
                                 ("history_not_replayed", None, None)]
        assert "127.0.0.1:5999" in report.drift[0].detail and not report.drift[0].fixable
        assert "1 operation(s)" in report.drift[1].detail and not report.drift[1].fixable
    finally:
        await engine.aclose()


async def test_corrupt_slot_file_is_reported_and_its_rows_kept(engine, prefix):
    project = f"{prefix}-bad"
    ok(await collect(engine.deploy(LOCAL, project, image("v1"))))
    path = engine.context.registry.slot_path(project, PROD)
    path.write_text("{ not json")
    report = await engine.reconcile(LOCAL, repair=True, prune=True, projects=[f"{prefix}*"])
    assert kinds(report) == [("corrupt_file", project, None)]
    assert str(path) in report.drift[0].detail and not report.drift[0].fixable
    rows = [r for r in await (await engine.context.history.store()).list_slots() if r.project == project]
    assert len(rows) == 2  # not deleted as stale
    assert path.read_text() == "{ not json"
