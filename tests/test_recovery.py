"""What an interrupted operation leaves behind is put right, and one broken file never stops
the other projects (real Docker, registry, Caddy and SQLite)."""

from __future__ import annotations

import json

from codeb_tui.domain import events
from codeb_tui.domain.model import Environment, SlotState
from codeb_tui.engine.reconcile import DriftKind

from conftest import LOCAL, collect, free_ports, image, ok, run_cli, terminal, through_caddy

PROD = Environment.PRODUCTION


async def test_rollback_never_serves_the_image_an_interrupted_deploy_left_in_the_grace_slot(
        engine, prefix, docker_client):
    """The state a `deploy --yes` into the grace slot leaves when killed after starting the new
    container: the rollback target stopped and renamed aside, an unverified v3 holding its
    name. The rollback must go to v1, the image that passed the health gate."""
    project = f"{prefix}-grace"
    for tag in ("v1", "v2"):
        ok(await collect(engine.deploy(LOCAL, project, image(tag))))
        ok(await collect(engine.promote(LOCAL, project)))
    pair = engine.context.registry.read_slots(project, PROD)
    assert pair.blue.state is SlotState.GRACE and pair.blue.image == image("v1")
    name = f"codeb-{project}-prod-blue"
    grace = docker_client.containers.get(name)
    grace.stop(timeout=2)
    grace.rename(name + "-replaced")
    labels = {**grace.labels, "codeb.image": image("v3")}
    docker_client.containers.run(image("v3"), name=name, detach=True, network_mode="host",
                                 init=True, labels=labels,
                                 environment={"PORT": str(pair.blue.port), "HOST": "127.0.0.1"})

    done = ok(await collect(engine.rollback(LOCAL, project)))
    assert any("was interrupted: removed " + name in w for w in done.warnings), done.warnings
    assert any("renamed " + name + "-replaced back" in w for w in done.warnings), done.warnings
    assert through_caddy(f"{project}.prod.test").text.startswith("healthy v1 slot=blue")
    running = {c.name: c.attrs["Config"]["Image"] for c in docker_client.containers.list(
        filters={"label": f"codeb.project={project}"})}
    assert sorted(running) == [name, f"codeb-{project}-prod-green"]
    assert running[name] == image("v1")


async def test_a_leaked_pair_is_reported_and_released(engine, prefix, config_file):
    """A first deploy killed between writing ssot.json and its slot file."""
    project, other = f"{prefix}-leak", f"{prefix}-live"
    ok(await collect(engine.deploy(LOCAL, other, image("v1"))))
    registry = engine.context.registry
    ssot = registry.read_ssot()
    # A pair nothing listens on: another installation on this machine (the demo, another test
    # session) may serve the next one, which reconcile would rightly report as well.
    listening = await engine.context.host.listening_ports()
    low = max(ssot.allocated) + 1
    low += low % 2
    while {low, low + 1} & listening:
        low += 2
    leaked = (low, low + 1)
    for port in leaked:
        ssot.allocated[port] = project
    registry.write_ssot(ssot)

    report = await engine.reconcile(LOCAL, projects=[f"{prefix}*"])
    [drift] = report.drift
    assert drift.kind is DriftKind.LEAKED_PORTS and drift.project == project and drift.fixable
    assert f"{leaked[0]}, {leaked[1]}" in drift.detail
    report = await engine.reconcile(LOCAL, repair=True, projects=[f"{prefix}*"])
    assert report.in_sync and report.drift[0].fixed
    allocated = registry.read_ssot().allocated
    assert not set(leaked) & set(allocated) and allocated  # the live project keeps its pair
    ok(await collect(engine.deploy(LOCAL, project, image("v1"))))


async def test_a_first_deploy_writes_its_slot_file_with_its_ports(engine, prefix):
    """From the moment ports are allocated the project owns them in a slot file, so a kill
    right after the allocation leaves no leak."""
    project = f"{prefix}-owned"
    evs = await collect(engine.deploy(LOCAL, project, image("crash")))
    assert isinstance(terminal(evs), events.Failed)
    # the failed first deploy gave everything back
    assert engine.context.registry.read_slots(project, PROD) is None
    assert project not in engine.context.registry.read_ssot().allocated.values()
    steps = [e.step for e in evs if isinstance(e, events.StepFinished)]
    assert "allocate ports" in steps


async def test_corrupt_ssot_is_reported(engine, prefix):
    ok(await collect(engine.deploy(LOCAL, f"{prefix}-a", image("v1"))))
    engine.context.registry.ssot_path.write_text('{"ports": {"used": [], "allocated": {"x": "a"}}}')
    report = await engine.reconcile(LOCAL, projects=[f"{prefix}*"])
    corrupt = report.of_kind(DriftKind.CORRUPT_FILE)
    assert len(corrupt) == 1 and "ssot.json" in corrupt[0].detail and not corrupt[0].fixable
    assert not report.in_sync


async def test_one_corrupt_slot_file_stops_no_other_project(engine, prefix):
    """A new project is routed while a broken file's project keeps its live routes."""
    broken, fresh = f"{prefix}-broken", f"{prefix}-fresh"
    ok(await collect(engine.deploy(LOCAL, broken, image("v1"))))
    ok(await collect(engine.promote(LOCAL, broken)))
    path = engine.context.registry.slot_path(broken, PROD)
    path.write_text("{ not json")
    ok(await collect(engine.deploy(LOCAL, fresh, image("v2"))))  # loads a new Caddy config
    assert through_caddy(f"{broken}.prod.test").text.startswith("healthy v1 slot=blue")
    assert through_caddy(f"blue.{fresh}.prod-preview.test").text.startswith("healthy v2")
    report = await engine.reconcile(LOCAL, repair=True, projects=[f"{prefix}*"])
    assert [d.kind for d in report.drift] == [DriftKind.CORRUPT_FILE]
    assert through_caddy(f"{broken}.prod.test").text.startswith("healthy v1 slot=blue")
    assert path.read_text() == "{ not json"


async def test_status_with_docker_unreachable_says_unknown(engine, prefix, config_file):
    project = f"{prefix}-st"
    ok(await collect(engine.deploy(LOCAL, project, image("v1"))))
    closed = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    out = run_cli("status", "--json", config=config_file(docker__endpoint=closed))
    assert out.returncode == 0, out.stderr
    [row] = [r for r in json.loads(out.stdout)["slots"] if r["state"] != "empty"]
    assert row["container_status"] == "unknown"


async def test_caddy_restarted_empty_is_seen_and_repaired(engine, prefix, config_file, caddy):
    project = f"{prefix}-cold"
    ok(await collect(engine.deploy(LOCAL, project, image("v1"))))
    ok(await collect(engine.promote(LOCAL, project)))
    import httpx

    # What a Caddy restarted without its config (crash, host reboot) answers with: nothing.
    httpx.post(f"{caddy['admin']}/load", json={"admin": {"listen": caddy["admin"].split("//")[1]}},
               timeout=5, trust_env=False).raise_for_status()
    config = config_file()
    out = run_cli("status", "--json", config=config)
    assert out.returncode == 0 and json.loads(out.stdout)["proxy_empty"] is True
    assert out.stderr.count("\n") == 1 and "reconcile --repair" in out.stderr
    assert (await engine.services(LOCAL)).proxy_empty
    report = await engine.reconcile(LOCAL, projects=[project])
    assert report.of_kind(DriftKind.PROXY_DRIFT) and not report.in_sync

    out = run_cli("reconcile", "--repair", config=config)
    assert out.returncode == 0, out.stdout + out.stderr
    assert through_caddy(f"{project}.prod.test").text.startswith("healthy v1 slot=blue")
    assert not (await engine.services(LOCAL)).proxy_empty
    assert json.loads(run_cli("status", "--json", config=config).stdout)["proxy_empty"] is False


async def test_a_refusal_never_waits_for_a_database_that_does_not_answer(make_config, prefix,
                                                                         config_file):
    """A PostgreSQL port that accepts connections and never answers (a hung server)."""
    import socket
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        dsn = f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/postgres"
        config = config_file(database={"dsn": dsn, "connect_timeout": 20})
        started = time.monotonic()
        out = run_cli("promote", f"{prefix}-none", config=config)
        elapsed = time.monotonic() - started
        assert out.returncode == 2 and out.stderr.startswith("codeb: Cannot promote"), out
        assert out.stderr.count("\n") == 1
        assert elapsed < 10, f"the refusal waited {elapsed:.1f} s for the database"
    finally:
        silent.close()


def test_cleanup_without_env_is_denied_at_once_and_recorded(config_file, prefix, tmp_path):
    """A member's cleanup without --env would cover production: refused in one line, and the
    process exits (it used to hang on a store thread at shutdown); a local cleanup without
    --env is recorded like any operation."""
    import sqlite3

    config = config_file()
    assert run_cli("team", "create", "ops", config=config).returncode == 0
    member = run_cli("apikey", "create", "--team", "ops", "--role", "member", config=config)
    project = f"{prefix}-c"
    assert run_cli("deploy", project, "--image", image("v1"), config=config).returncode == 0
    out = run_cli("cleanup", project, "--api-key", member.stdout.strip(), config=config, timeout=30)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out
    assert out.stderr.startswith("codeb: Access Denied: role member may not cleanup")
    out = run_cli("cleanup", project, config=config, timeout=30)
    assert out.returncode == 0, out.stderr
    rows = sqlite3.connect(tmp_path / "codeb.sqlite3").execute(
        "select action, result, environment from audit_logs where project = ? order by id",
        (project,)).fetchall()
    assert rows == [("deploy", "succeeded", "production"), ("cleanup", "denied", "*"),
                    ("cleanup", "succeeded", "*")]
