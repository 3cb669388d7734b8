"""One project on several hosts (issue 10, points 1, 4, 5, 7): deploy, promote and rollback on
two real remote machines at once, a failure on one undone on both, a host going down during
status and during a promote.

The machines are the `remote_hosts` fixture's network namespaces (web1, web2), each with its
own sshd, dockerd and Caddy, reached over SSH (tests/remote_hosts.py). What each host's Caddy
serves is asked inside that host's namespace, with the project's domain in the Host header.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from codeb_tui.domain import events
from codeb_tui.domain.model import Environment, SlotState
from codeb_tui.domain.status import Health
from codeb_tui.engine.facade import Engine
from conftest import LOCAL, collect, image, terminal
from test_tui_pilot import until

HOSTS = ["web1", "web2"]


@pytest.fixture
async def multi(make_config, remote_hosts, prefix):
    """An engine whose config knows web1 and web2; every container of this test's projects is
    removed from both hosts afterwards."""
    engine = Engine(make_config(hosts=remote_hosts.hosts_config()))
    yield engine
    await engine.aclose()
    for name in remote_hosts.names:
        remote_hosts.start(name)  # whatever a test took down
        listed = remote_hosts.run(name, ["docker", "ps", "-aq", "--filter",
                                         "label=codeb.project"], timeout=30).stdout.split()
        for container in listed:
            labels = remote_hosts.run(name, ["docker", "inspect", "-f",
                                             "{{index .Config.Labels \"codeb.project\"}}",
                                             container]).stdout.strip()
            if labels.startswith(prefix):
                remote_hosts.run(name, ["docker", "rm", "-f", container], timeout=30)


def served(remote_hosts, engine: Engine, host: str, project: str) -> tuple[int, str]:
    """What `host`'s Caddy answers for the project's production domain."""
    listen = engine.config.caddy.listen
    return remote_hosts.curl(host, f"http://{listen}/", host_header=f"{project}.prod.test")


def running(remote_hosts, host: str, project: str) -> dict[str, str]:
    """name -> image of the project's containers running on `host`."""
    out = remote_hosts.run(host, ["docker", "ps", "--format", "{{.Names}} {{.Image}}",
                                  "--filter", f"label=codeb.project={project}"]).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if line.strip())


def slot_file(engine: Engine, project: str) -> dict:
    path = engine.context.registry.slot_path(project, Environment.PRODUCTION)
    return json.loads(path.read_text())


async def ok(stream) -> events.Finished:
    evs = await collect(stream)
    end = terminal(evs)
    assert isinstance(end, events.Finished), end.line()
    return end


async def test_deploy_promote_rollback_on_two_hosts(multi, remote_hosts, prefix, docker_client):
    project = f"{prefix}-two"
    done = await ok(multi.deploy(LOCAL, project, image("v1"), hosts=HOSTS))
    assert done.result["hosts"] == HOSTS
    assert "on web1, web2" in done.summary
    recorded = slot_file(multi, project)
    assert recorded["hosts"] == HOSTS
    blue = recorded["slots"]["blue"]
    assert set(blue["container_ids"]) == set(HOSTS)
    for host in HOSTS:
        assert running(remote_hosts, host, project) == {
            f"codeb-{project}-prod-blue": image("v1")}
        assert blue["container_ids"][host].startswith(
            remote_hosts.run(host, ["docker", "ps", "-q", "--no-trunc", "--filter",
                                    f"name=codeb-{project}-prod-blue"]).stdout.strip()[:12])
    # Nothing of it on this machine.
    assert not docker_client.containers.list(all=True, filters={"label": f"codeb.project={project}"})

    await ok(multi.promote(LOCAL, project))
    for host in HOSTS:
        status, body = served(remote_hosts, multi, host, project)
        assert (status, body.split()[:2]) == (200, ["healthy", "v1"]), (host, status, body)

    await ok(multi.deploy(LOCAL, project, image("v2")))  # goes where the slot file says
    evs = await collect(multi.promote(LOCAL, project))
    assert isinstance(terminal(evs), events.Finished), terminal(evs).line()
    # Each host's Caddy runs the project's routes as built (small GETs through the forward):
    # markers only.
    assert {f"{host}: proxy routes unchanged: no reload" for host in HOSTS} <= {
        e.message for e in evs if isinstance(e, events.Log)}
    for host in HOSTS:
        assert served(remote_hosts, multi, host, project)[1].split()[:3] == [
            "healthy", "v2", "slot=green"], host
    await ok(multi.rollback(LOCAL, project))
    for host in HOSTS:
        assert served(remote_hosts, multi, host, project)[1].split()[:3] == [
            "healthy", "v1", "slot=blue"], host

    rows = await multi.status(LOCAL, project)
    live = [r for r in rows if r.state is SlotState.ACTIVE][0]
    assert [h.host for h in live.hosts] == HOSTS
    assert live.health is Health.HEALTHY and all(h.health is Health.HEALTHY for h in live.hosts)
    assert live.to_json()["hosts"][0]["host"] == "web1"

    # Reconcile compares each host's containers, routes and ports with the files.
    report = await multi.reconcile(LOCAL, projects=[project])
    assert report.in_sync, [d.detail for d in report.remaining]
    remote_hosts.run("web2", ["docker", "stop", "-t", "0", f"codeb-{project}-prod-blue"])
    report = await multi.reconcile(LOCAL, projects=[project])
    stopped = [d for d in report.remaining if d.kind == "stopped_container"]
    assert [(d.host, d.slot) for d in stopped] == [("web2", "blue")], report.to_json()


async def test_a_first_deploy_takes_its_hosts_from_config(make_config, remote_hosts, prefix):
    project = f"{prefix}-cfg"
    engine = Engine(make_config(hosts=remote_hosts.hosts_config(),
                                projects={project: {"hosts": ["web2"]}}))
    try:
        done = await ok(engine.deploy(LOCAL, project, image("v1")))
        assert done.result["hosts"] == ["web2"]
        assert slot_file(engine, project)["hosts"] == ["web2"]
        assert running(remote_hosts, "web2", project)
        assert not running(remote_hosts, "web1", project)
        # --host on a later deploy may not move it.
        evs = await collect(engine.deploy(LOCAL, project, image("v2"), hosts=["web1"]))
        assert isinstance(terminal(evs), events.Failed) and terminal(evs).exit_code == 2
        assert "lives on web2" in terminal(evs).error
        # An unknown host is bad input, refused before anything is touched.
        evs = await collect(engine.deploy(LOCAL, f"{prefix}-nowhere", image("v1"),
                                          hosts=["web9"]))
        assert terminal(evs).exit_code == 2 and "web9" in terminal(evs).error
        assert not engine.context.registry.slot_path(f"{prefix}-nowhere",
                                                     Environment.PRODUCTION).exists()
    finally:
        await engine.aclose()
        remote_hosts.run("web2", ["docker", "rm", "-f", f"codeb-{project}-prod-blue"])


async def test_a_failure_on_one_host_undoes_the_deploy_on_both(multi, remote_hosts, prefix):
    project = f"{prefix}-undo"
    await ok(multi.deploy(LOCAL, project, image("v1"), hosts=HOSTS))
    await ok(multi.promote(LOCAL, project))
    before = slot_file(multi, project)
    green_port = before["slots"]["green"]["port"]

    # Another program takes the green port on web2 only: the deploy into green fails there.
    squatter = subprocess.Popen(
        remote_hosts.hosts["web2"].nsenter([
            sys.executable, "-c", "import socket, time; s = socket.socket(); "
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            f"s.bind(('127.0.0.1', {green_port})); s.listen(); time.sleep(120)"]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            if f"127.0.0.1:{green_port} " in remote_hosts.run("web2", ["ss", "-ltn"]).stdout:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"nothing listens on web2's port {green_port}")
        evs = await collect(multi.deploy(LOCAL, project, image("v2")))
    finally:
        squatter.kill()
        squatter.wait()
    failed = terminal(evs)
    assert isinstance(failed, events.Failed), "\n".join(e.line() for e in evs)
    assert failed.error.startswith("web2: Port"), failed.error
    log = "\n".join(e.line() for e in evs)
    assert "web1: removed the new container" in log

    # Everything as before on both hosts: the file, the containers, the traffic.
    assert slot_file(multi, project) == before
    for host in HOSTS:
        assert running(remote_hosts, host, project) == {
            f"codeb-{project}-prod-blue": image("v1")}, host
        assert served(remote_hosts, multi, host, project)[1].split()[:2] == ["healthy", "v1"]


async def test_a_host_down_during_status(multi, remote_hosts, prefix):
    both, alone = f"{prefix}-both", f"{prefix}-alone"
    await ok(multi.deploy(LOCAL, both, image("v1"), hosts=HOSTS))
    await ok(multi.deploy(LOCAL, alone, image("v1"), hosts=["web1"]))
    remote_hosts.stop("web2", how="link")  # packets dropped: a machine gone away
    try:
        for attempt in range(2):  # the second is served from what the first learnt
            rows = {(r.project, r.slot.value): r
                    for r in await multi.status(LOCAL) if r.project in (both, alone)}
            row = rows[(both, "blue")]
            web1, web2 = row.hosts
            assert (web1.host, web1.health, web1.reachable) == ("web1", Health.HEALTHY, True)
            assert (web2.host, web2.health, web2.reachable) == ("web2", Health.UNKNOWN, False)
            assert "web2 unreachable" in web2.detail
            assert row.health is Health.UNKNOWN and "web2" in row.health_detail
            assert rows[(alone, "blue")].health is Health.HEALTHY
        states = {s.name: s for s in await multi.host_states(LOCAL)}
        assert states["web1"].reachable and states["local"].reachable
        assert not states["web2"].reachable
    finally:
        remote_hosts.start("web2")


async def test_a_host_down_during_a_promote_is_switched_back(multi, remote_hosts, prefix):
    project = f"{prefix}-down"
    await ok(multi.deploy(LOCAL, project, image("v1"), hosts=HOSTS))
    await ok(multi.promote(LOCAL, project))
    await ok(multi.deploy(LOCAL, project, image("v2")))
    before = slot_file(multi, project)

    evs = []
    try:
        async for event in multi.promote(LOCAL, project):
            evs.append(event)
            # Both hosts passed the health check; web2 goes away as the proxies switch.
            if isinstance(event, events.StepStarted) and event.step == "switch proxy":
                remote_hosts.stop("web2", how="link")
    finally:
        remote_hosts.start("web2")
    failed = terminal(evs)
    assert isinstance(failed, events.Failed), failed.line()
    assert "web2" in failed.error, failed.error
    assert slot_file(multi, project) == before
    # web1 was switched back: it serves v1 from blue as before the promote; so does web2.
    for host in HOSTS:
        assert served(remote_hosts, multi, host, project)[1].split()[:3] == [
            "healthy", "v1", "slot=blue"], host
    # And the promote goes through once web2 is back.
    await ok(multi.promote(LOCAL, project))
    for host in HOSTS:
        assert served(remote_hosts, multi, host, project)[1].split()[:2] == ["healthy", "v2"]


async def test_a_host_whose_caddy_restarted_empty_gets_its_config_from_the_promote(
        multi, remote_hosts, prefix):
    """Each host decides alone: web1 runs the project's routes as built (markers only), web2's
    Caddy lost its config (the full path loads it); both serve the promoted slot."""
    project = f"{prefix}-cold"
    await ok(multi.deploy(LOCAL, project, image("v1"), hosts=HOSTS))
    await ok(multi.promote(LOCAL, project))
    await ok(multi.deploy(LOCAL, project, image("v2")))
    web2 = multi.context.host_named("web2")
    await web2.caddy.load({"admin": (await web2.caddy.current())["admin"]})

    evs = await collect(multi.promote(LOCAL, project))
    assert isinstance(terminal(evs), events.Finished), terminal(evs).line()
    lines = [e.message for e in evs if isinstance(e, events.Log)]
    assert "web1: proxy routes unchanged: no reload" in lines
    assert not any(line.startswith("web2: proxy routes unchanged") for line in lines)
    assert any(line.startswith("web2: proxy config applied") for line in lines), lines
    for host in HOSTS:
        assert served(remote_hosts, multi, host, project)[1].split()[:3] == [
            "healthy", "v2", "slot=green"], host


def test_slot_files_of_local_projects_stay_as_they_were(tmp_path):
    """Old files (no `hosts`) read as local; local projects are written without the new keys;
    a project elsewhere keeps its hosts and per-host container ids."""
    from dataclasses import replace

    from codeb_tui.domain.model import ProjectSlots, Slot, SlotName
    from codeb_tui.registry.files import FileRegistry

    registry = FileRegistry(tmp_path)
    pair = ProjectSlots("shop", Environment.PRODUCTION,
                        Slot(SlotName.BLUE, 4100, SlotState.ACTIVE, "img", "abc", "n"),
                        Slot(SlotName.GREEN, 4101))
    registry.write_slots(pair)
    raw = json.loads(registry.slot_path("shop", Environment.PRODUCTION).read_text())
    assert "hosts" not in raw and "container_ids" not in raw["slots"]["blue"]
    assert registry.read_slots("shop", Environment.PRODUCTION).hosts == ("local",)

    far = replace(pair, hosts=("web1", "web2"), blue=replace(
        pair.blue, container_ids=(("web1", "abc"), ("web2", "def"))))
    registry.write_slots(far, expected_version=1)
    back = registry.read_slots("shop", Environment.PRODUCTION)
    assert back.hosts == ("web1", "web2")
    assert back.blue.container_on("web2") == "def" and back.blue.container_on("local") is None


async def test_console_shows_hosts_and_filters_by_host(multi, remote_hosts, prefix):
    """The top bar shows each host's state, a row per-host health, `h` narrows to one host."""
    from codeb_tui.tui.app import CodebApp
    from codeb_tui.tui.rows import slot_cell
    from codeb_tui.tui.screens.main import MainScreen

    both, alone = f"{prefix}-cboth", f"{prefix}-calone"
    await ok(multi.deploy(LOCAL, both, image("v1"), hosts=HOSTS))
    await ok(multi.deploy(LOCAL, alone, image("v1"), hosts=["web1"]))
    app = CodebApp(multi.config, engine=multi)
    remote_hosts.stop("web2", how="sshd")  # refused at once
    try:
        async with app.run_test(size=(200, 50)) as pilot:
            main = app.screen
            assert isinstance(main, MainScreen)

            def row(project: str):
                return next((r for r in main.shown if r.project == project), None)

            await until(pilot, lambda: row(both) is not None and row(both).blue.hosts
                        and not row(both).blue.hosts[1].reachable, what="web2 unreachable in the row")
            await until(pilot, lambda: {h.name: h.reachable for h in app.session.hosts}
                        == {"local": True, "web1": True, "web2": False}, what="the host states")
            bar = str(main.query_one("#topbar-text").render())
            assert "web1 up" in bar and "web2 DOWN" in bar, bar
            cell = slot_cell(row(both).blue, wide=True).plain
            assert "web1✓" in cell and "web2⊘" in cell, cell
            assert row(alone).blue.hosts[0].reachable

            keys = lambda: {r.project for r in main.shown} & {both, alone}  # noqa: E731
            assert keys() == {both, alone}
            await pilot.press("h")  # local: neither
            assert main.host == "local" and keys() == set()
            await pilot.press("h")  # web1: both
            assert main.host == "web1" and keys() == {both, alone}
            await pilot.press("h")  # web2: the one on both hosts
            assert main.host == "web2" and keys() == {both}
            await pilot.press("h")
            assert main.host is None
    finally:
        remote_hosts.start("web2")


def test_cli_deploy_with_host_and_status(config_file, remote_hosts, prefix):
    """`codeb deploy --host` (repeatable) and `codeb status`: a HOSTS column only when a
    project has remote hosts; --json keeps its fields and gains `hosts`."""
    from conftest import run_cli

    config = config_file(hosts=remote_hosts.hosts_config())
    project = f"{prefix}-cli"
    try:
        out = run_cli("deploy", project, "--image", image("v1"), "--host", "web1", "--host",
                      "web2", config=config)
        assert out.returncode == 0, out.stderr
        assert "on web1, web2" in out.stdout
        out = run_cli("status", project, config=config)
        assert out.returncode == 0, out.stderr
        header, blue = out.stdout.splitlines()[:2]
        assert header.split()[-1] == "HOSTS"
        assert blue.endswith("web1 healthy, web2 healthy"), blue
        out = run_cli("status", project, "--json", config=config)
        blue = json.loads(out.stdout)["slots"][0]
        assert blue["health"] == "healthy"
        assert [h["host"] for h in blue["hosts"]] == HOSTS
        out = run_cli("deploy", f"{prefix}-bad", "--image", image("v1"), "--host", "web9",
                      config=config)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and "web9" in out.stderr

        # `ports --host`: the port book as that host's Docker and sockets see it.
        port = blue["port"]
        out = run_cli("ports", "--host", "web2", "--json", config=config)
        assert out.returncode == 0, out.stderr
        pairs = [p for e in json.loads(out.stdout)["environments"] for p in e["used_pairs"]]
        ours = next(p for p in pairs if port in (p["blue"], p["green"]))
        assert ours["project"] == project and port in ours["listening"]
        assert f"codeb-{project}-prod-blue" in ours["containers"]
        out = run_cli("ports", "--json", config=config)  # local: no container of it here
        pairs = [p for e in json.loads(out.stdout)["environments"] for p in e["used_pairs"]]
        ours = next(p for p in pairs if port in (p["blue"], p["green"]))
        assert ours["project"] == project, ours
        assert not [c for c in ours["containers"] if c.startswith(f"codeb-{project}-")], ours
        out = run_cli("ports", "--host", "web9", config=config)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and "web9" in out.stderr
    finally:
        for host in HOSTS:
            remote_hosts.run(host, ["docker", "rm", "-f", f"codeb-{project}-prod-blue"])
