"""Every branch of deploy, promote, rollback and cleanup against real Docker, registry and Caddy."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import timedelta


from codeb_tui.domain import events
from codeb_tui.engine.facade import Engine
from codeb_tui.domain.model import Environment, SlotState, utcnow
from codeb_tui.domain.status import PortConflictKind

from conftest import CADDY_HTTP_PORT, LOCAL, collect, image, ok, terminal, through_caddy

PROD = Environment.PRODUCTION


def failed(evs, exit_code=None):
    last = terminal(evs)
    assert isinstance(last, events.Failed), last
    if exit_code is not None:
        assert last.exit_code == exit_code, last
    return last


def containers_of(docker_client, project):
    return {c.name: c for c in docker_client.containers.list(all=True, filters={"label": f"codeb.project={project}"})}


async def test_release_cycle_routes_through_caddy(engine, prefix, docker_client):
    project = f"{prefix}-shop"
    done = ok(await collect(engine.deploy(LOCAL, project, image("v1"))))
    assert done.result["slot"] == "blue"
    preview = f"blue.{project}.prod-preview.test"
    assert through_caddy(preview).text.startswith("healthy v1 slot=blue")
    assert through_caddy(f"{project}.prod.test").status_code == 404  # nothing is live yet

    promoted = ok(await collect(engine.promote(LOCAL, project)))
    assert promoted.result["url"] == f"http://{project}.prod.test:{CADDY_HTTP_PORT}"
    assert through_caddy(f"{project}.prod.test").text.startswith("healthy v1 slot=blue")

    ok(await collect(engine.deploy(LOCAL, project, image("v2"))))
    assert through_caddy(f"green.{project}.prod-preview.test").text.startswith("healthy v2 slot=green")
    assert through_caddy(f"{project}.prod.test").text.startswith("healthy v1 slot=blue")

    ok(await collect(engine.promote(LOCAL, project)))
    assert through_caddy(f"{project}.prod.test").text.startswith("healthy v2 slot=green")
    pair = engine.context.registry.read_slots(project, PROD)
    assert pair.green.state is SlotState.ACTIVE and pair.blue.state is SlotState.GRACE
    left = pair.blue.grace_expires_at - utcnow()
    assert timedelta(hours=47, minutes=59) < left <= timedelta(hours=48)
    assert containers_of(docker_client, project)[f"codeb-{project}-prod-blue"].status == "running"

    ok(await collect(engine.rollback(LOCAL, project)))
    assert through_caddy(f"{project}.prod.test").text.startswith("healthy v1 slot=blue")
    pair = engine.context.registry.read_slots(project, PROD)
    assert pair.blue.state is SlotState.ACTIVE and pair.green.state is SlotState.GRACE

    # The database followed the file registry, and every operation left an audit row.
    db = sqlite3.connect(engine.config.database.sqlite_path)
    actions = [r[0] for r in db.execute("select action from audit_logs where project = ? order by id", (project,))]
    assert actions == ["deploy", "promote", "deploy", "promote", "rollback"]
    rows = dict(db.execute(
        "select s.slot, s.state from project_slots s join projects p on p.id = s.project_id "
        "where p.name = ? and s.environment = 'production'", (project,)).fetchall())
    assert rows == {"blue": "active", "green": "grace"}
    results = [r[0] for r in db.execute("select result from deployments where project = ?", (project,))]
    assert results == ["succeeded"] * 5


async def test_missing_image_changes_nothing(engine, prefix, docker_client):
    project = f"{prefix}-gone"
    fail = failed(await collect(engine.deploy(LOCAL, project, image("does-not-exist"))), exit_code=1)
    assert fail.error.startswith(f"Image not found: {image('does-not-exist')}. Was it built and pushed?")
    assert engine.context.registry.read_slots(project, PROD) is None
    assert engine.context.registry.read_ssot().allocated == {}
    assert containers_of(docker_client, project) == {}


async def test_crashing_container_is_removed_and_ports_released(engine, prefix, docker_client):
    project = f"{prefix}-crash"
    fail = failed(await collect(engine.deploy(LOCAL, project, image("crash"))), exit_code=1)
    assert "exited with code 1" in fail.error and fail.step == "health check"
    assert containers_of(docker_client, project) == {}
    assert engine.context.registry.read_slots(project, PROD) is None
    assert engine.context.registry.read_ssot().allocated == {}


async def test_unhealthy_replacement_restores_the_previous_container(make_config, prefix, docker_client):
    engine = Engine(make_config(health={"timeout": 3, "interval": 0.1}))
    try:
        project = f"{prefix}-sick"
        ok(await collect(engine.deploy(LOCAL, project, image("v1"))))
        before = engine.context.registry.slot_path(project, PROD).read_text()
        evs = await collect(engine.deploy(LOCAL, project, image("unhealthy")))  # replaces the deployed blue
        fail = failed(evs, exit_code=1)
        assert "HTTP 500" in fail.error
        assert engine.context.registry.slot_path(project, PROD).read_text() == before
        running = containers_of(docker_client, project)
        assert list(running) == [f"codeb-{project}-prod-blue"]
        container = running[f"codeb-{project}-prod-blue"]
        assert container.status == "running" and container.labels["codeb.image"] == image("v1")
        assert through_caddy(f"blue.{project}.prod-preview.test").text.startswith("healthy v1")
    finally:
        await engine.aclose()


async def test_docker_healthcheck_image_deploys(engine, prefix):
    project = f"{prefix}-dh"
    evs = await collect(engine.deploy(LOCAL, project, image("dockerhealth")))
    ok(evs)
    assert any(isinstance(e, events.Log) and "docker health starting" in e.message for e in evs)


async def test_refused_transitions_name_the_state(engine, prefix):
    project = f"{prefix}-refuse"
    fail = failed(await collect(engine.promote(LOCAL, project)), exit_code=2)
    assert "Run deploy first" in fail.error and "no slots yet" in fail.error
    fail = failed(await collect(engine.rollback(LOCAL, project)), exit_code=2)
    assert fail.error.startswith("No grace slot")

    ok(await collect(engine.deploy(LOCAL, project, image("v1"))))
    ok(await collect(engine.promote(LOCAL, project)))
    fail = failed(await collect(engine.promote(LOCAL, project)), exit_code=2)
    assert "blue is active, green is empty" in fail.error and "Run deploy first" in fail.error
    ok(await collect(engine.deploy(LOCAL, project, image("v2"))))
    ok(await collect(engine.promote(LOCAL, project)))
    # green active, blue grace: the next deploy goes into the grace slot and needs confirmation.
    fail = failed(await collect(engine.deploy(LOCAL, project, image("v3"))), exit_code=2)
    assert "in grace" in fail.error and "--yes" in fail.error
    assert engine.context.registry.read_slots(project, PROD).blue.image == image("v1")
    ok(await collect(engine.deploy(LOCAL, project, image("v3"), confirm_grace=True)))
    assert engine.context.registry.read_slots(project, PROD).blue.state is SlotState.DEPLOYED


async def test_unhealthy_grace_slot_is_refused(engine, prefix, docker_client):
    project = f"{prefix}-graceless"
    for tag in ("v1", "v2"):
        ok(await collect(engine.deploy(LOCAL, project, image(tag))))
        ok(await collect(engine.promote(LOCAL, project)))
    docker_client.containers.get(f"codeb-{project}-prod-blue").stop(timeout=2)
    fail = failed(await collect(engine.rollback(LOCAL, project)), exit_code=2)
    assert fail.error.startswith("Grace slot unhealthy")
    assert through_caddy(f"{project}.prod.test").text.startswith("healthy v2 slot=green")
    assert engine.context.registry.read_slots(project, PROD).green.state is SlotState.ACTIVE


async def test_rejected_proxy_config_restores_the_backup(make_config, prefix, caddy):
    good = Engine(make_config())
    # A listener Caddy cannot bind (PostgreSQL owns 5432): Caddy rejects the whole config.
    bad = Engine(make_config(caddy__listen="127.0.0.1:5432"))
    try:
        project = f"{prefix}-proxy"
        ok(await collect(good.deploy(LOCAL, project, image("v1"))))
        ok(await collect(good.promote(LOCAL, project)))
        ok(await collect(good.deploy(LOCAL, project, image("v2"))))
        before = good.context.registry.slot_path(project, PROD).read_text()
        evs = await collect(bad.promote(LOCAL, project))
        fail = failed(evs, exit_code=1)
        assert fail.error.startswith("Caddy rejected the config")
        assert any(isinstance(e, events.Log) and e.message == "previous proxy config re-applied" for e in evs)
        assert good.context.registry.slot_path(project, PROD).read_text() == before
        assert through_caddy(f"{project}.prod.test").text.startswith("healthy v1 slot=blue")
        assert list((good.config.caddy.config_dir / "backups").glob("caddy-*.json"))
    finally:
        await good.aclose()
        await bad.aclose()


async def test_cleanup_empties_expired_grace_slots_only(engine, prefix, docker_client):
    old, fresh = f"{prefix}-old", f"{prefix}-fresh"
    for project in (old, fresh):
        for tag in ("v1", "v2"):
            ok(await collect(engine.deploy(LOCAL, project, image(tag))))
            ok(await collect(engine.promote(LOCAL, project)))
    pair = engine.context.registry.read_slots(old, PROD)
    engine.context.registry.write_slots(pair.with_slot(pair.blue.with_(grace_expires_at=utcnow() - timedelta(minutes=1))),
                                expected_version=pair.version)
    done = ok(await collect(engine.cleanup(LOCAL, )))
    assert done.result["cleaned"] == [f"{old}-prod-blue"]
    assert engine.context.registry.read_slots(old, PROD).blue.state is SlotState.EMPTY
    assert f"codeb-{old}-prod-blue" not in containers_of(docker_client, old)
    assert engine.context.registry.read_slots(fresh, PROD).blue.state is SlotState.GRACE
    # Forced, a named project's unexpired grace slot goes too; an active one never does.
    done = ok(await collect(engine.cleanup(LOCAL, fresh, force=True)))
    assert done.result["cleaned"] == [f"{fresh}-prod-blue"]
    fail = failed(await collect(engine.cleanup(LOCAL, fresh, force=True, slot="green")), exit_code=2)
    assert "is active" in fail.error
    assert through_caddy(f"{fresh}.prod.test").text.startswith("healthy v2 slot=green")


async def test_allocation_skips_a_port_another_program_listens_on(make_config, prefix):
    # PostgreSQL listens on 5432, inside this preview range: its pair 5432/5433 is skipped.
    engine = Engine(make_config(environments={"preview": {"ports": [5430, 5439]}}))
    try:
        first = ok(await collect(engine.deploy(LOCAL, f"{prefix}-a", image("v1"), "preview")))
        second = ok(await collect(engine.deploy(LOCAL, f"{prefix}-b", image("v1"), "preview")))
        assert first.result["port"] == 5430
        assert second.result["port"] == 5434
        report = await engine.ports(LOCAL)
        conflicts = [c for c in report.conflicts if c.port == 5432]
        assert conflicts and conflicts[0].kind is PortConflictKind.FOREIGN_LISTENER
    finally:
        await engine.aclose()


async def test_database_down_does_not_fail_the_deploy(make_config, prefix):
    engine = Engine(make_config(database={"dsn": "postgresql://postgres@127.0.0.1:5999/postgres",
                                          "connect_timeout": 1}))
    try:
        project = f"{prefix}-nodb"
        done = ok(await collect(engine.deploy(LOCAL, project, image("v1"))))
        assert done.warnings and "database out of sync" in done.warnings[0]
        assert "127.0.0.1:5999" in done.warnings[0]
        assert engine.context.registry.read_slots(project, PROD).blue.state is SlotState.DEPLOYED
        ok(await collect(engine.promote(LOCAL, project)))
        assert through_caddy(f"{project}.prod.test").text.startswith("healthy v1")
    finally:
        await engine.aclose()


async def test_events_are_typed_and_serialisable(engine, prefix):
    evs = await collect(engine.deploy(LOCAL, f"{prefix}-ev", image("v1")))
    kinds = [e.kind for e in evs]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    assert "step_started" in kinds and "step_finished" in kinds and "log" in kinds
    for event in evs:
        line = json.loads(json.dumps(event.to_json(), default=str))
        assert line["event"] == event.kind and line["operation_id"] == evs[0].operation_id


async def test_health_gate_never_hears_another_program_on_the_slot_port(engine, prefix, docker_client):
    """Another program answering /health on the idle slot's port must not pass the gate for a
    container that could not even bind it."""
    import subprocess
    import sys

    project = f"{prefix}-squat"
    ok(await collect(engine.deploy(LOCAL, project, image("v1"))))
    ok(await collect(engine.promote(LOCAL, project)))
    green = engine.context.registry.read_slots(project, PROD).green.port
    squatter = subprocess.Popen([sys.executable, "-m", "http.server", str(green), "--bind",
                                 "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if green in await engine.context.host.listening_ports():
                break
            await asyncio.sleep(0.1)
        before = engine.context.registry.slot_path(project, PROD).read_text()
        fail = failed(await collect(engine.deploy(LOCAL, project, image("v2"))), exit_code=1)
        assert f"Port {green}" in fail.error and "another program" in fail.error
        assert engine.context.registry.slot_path(project, PROD).read_text() == before
        assert f"codeb-{project}-prod-green" not in containers_of(docker_client, project)
    finally:
        squatter.kill()
        squatter.wait()


async def test_a_fresh_deploy_is_never_shown_as_a_missing_container(engine, prefix):
    """The console's checks reuse Docker's container listing for seconds; a slot whose container
    the listing lacks (just deployed) is listed again after CONTAINERS_RECHECK, not after
    CONTAINERS_MAX_AGE, so a new deploy does not read "container missing"."""
    from codeb_tui.domain.status import ContainerState
    from codeb_tui.engine.status import CONTAINERS_MAX_AGE, CONTAINERS_RECHECK

    project = f"{prefix}-fresh"
    ok(await collect(engine.deploy(LOCAL, project, image("v1"))))
    ok(await collect(engine.promote(LOCAL, project)))
    before = await engine.status(LOCAL, project, PROD, live=False)
    await engine.check_slots(LOCAL, before)  # the listing: blue running, green has none
    ok(await collect(engine.deploy(LOCAL, project, image("v2"))))  # into green
    await asyncio.sleep(CONTAINERS_RECHECK + 0.1)
    assert CONTAINERS_RECHECK + 0.1 < CONTAINERS_MAX_AGE  # the old listing would still serve
    after = await engine.check_slots(LOCAL, await engine.status(LOCAL, project, PROD, live=False))
    green = next(s for s in after if s.slot.value == "green")
    assert green.container_status is ContainerState.RUNNING, green


async def test_a_pull_is_skipped_only_when_the_host_has_the_registrys_digest(make_config, prefix,
                                                                           docker_client, pushed):
    """With docker.registry_url, a deploy asks the registry which manifest the tag names now and
    pulls only when the engine's image of that tag is another: a tag moved in the registry (here
    `<prefix>-moved:m` pushed as v2 while the engine's is v1) is pulled, and then runs v2."""
    from conftest import REGISTRY

    engine = Engine(make_config(docker={"endpoint": make_config().docker.endpoint,
                                        "registry_url": f"http://{REGISTRY}"}))
    try:
        moved = pushed(f"{prefix}-moved", "m", source_tag="v2")
        docker_client.images.get(image("v1")).tag(moved)  # the engine's: v1

        project = f"{prefix}-digest"
        first = await collect(engine.deploy(LOCAL, project, image("v1")))
        ok(first)
        assert any("is here already" in getattr(e, "message", "") for e in first), \
            [e.line() for e in first]
        second = await collect(engine.deploy(LOCAL, project, moved))
        ok(second)
        messages = [getattr(e, "message", "") for e in second]
        assert f"pulled {moved}" in messages and not any("is here already" in m
                                                         for m in messages)
        # the first deploy was never promoted: the second replaced it in blue
        assert through_caddy(f"blue.{project}.prod-preview.test").text.startswith("healthy v2")
    finally:
        await engine.aclose()
