"""SSHHost against real remote hosts: the two network namespaces of tests/remote_hosts.py, each
with its own sshd, dockerd and Caddy. Nothing here is mocked: Docker through the forwarded
socket, Caddy's admin API through a forward, health checks and files through the connection."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from codeb_tui.domain.config import parse_config
from codeb_tui.domain.errors import HostKeyRefused, HostUnreachable
from codeb_tui.infra.ssh_host import SSHHost, record_host_key, server_key

IMAGE = "127.0.0.1:5000/demo/app"


def make_host(remote_hosts, name: str, **overrides) -> SSHHost:
    hosts = {host: remote_hosts.config(host) for host in remote_hosts.names}
    hosts[name] = remote_hosts.config(name, **overrides)
    config = parse_config({"hosts": hosts, "health": {"path": "/health", "request_timeout": 2},
                           "docker": {"stop_timeout": 2}})
    return SSHHost(name, config.hosts[name], config)


@pytest.fixture
async def web1(remote_hosts):
    host = make_host(remote_hosts, "web1")
    yield host
    await host.aclose()


@pytest.fixture
def container_name(remote_hosts):
    """A container name of this test's own, removed from both hosts afterwards."""
    name = f"ssh-{uuid.uuid4().hex[:8]}"
    yield name
    for host in remote_hosts.names:
        remote_hosts.run(host, ["docker", "rm", "-f", name])


async def wait_healthy(host: SSHHost, port: int):
    for _ in range(100):
        result = await host.health.check(port)
        if result.ok:
            return result
        await asyncio.sleep(0.1)
    return result


async def test_docker_through_the_forwarded_socket_pulls_through_the_registry_forward(
        remote_hosts, web1, container_name):
    # The namespace has no route out: the pull works only through the remote port forward.
    assert await web1.docker.ping()
    assert (await web1.docker.version()).startswith("20.")
    await web1.docker.pull(f"{IMAGE}:v1")
    info = await web1.docker.run_slot(name=container_name, image=f"{IMAGE}:v1", port=4301,
                                      labels={"codeb.project": container_name}, env={})
    assert info.status == "running"
    # It runs on web1's own dockerd, not on this machine's, and not on web2's.
    assert container_name in remote_hosts.run("web1", ["docker", "ps", "--format", "{{.Names}}"]).stdout
    assert container_name not in remote_hosts.run("web2", ["docker", "ps", "-a", "--format", "{{.Names}}"]).stdout
    result = await wait_healthy(web1, 4301)
    assert result.ok and result.detail == "HTTP 200"
    # Listening ports are the namespace's: the slot's port, sshd, Caddy's admin, the registry
    # offered through the connection.
    ports = await web1.listening_ports()
    assert {22, 2019, 4301, 5000} <= ports
    assert 4302 not in ports
    await web1.docker.remove(info.id)
    assert await web1.docker.inspect(info.id) is None


async def test_health_check_through_the_connection_tells_refused_from_unhealthy(
        remote_hosts, web1, container_name):
    await web1.docker.pull(f"{IMAGE}:unhealthy")
    await web1.docker.run_slot(name=container_name, image=f"{IMAGE}:unhealthy", port=4311,
                               labels={"codeb.project": container_name}, env={})
    for _ in range(100):
        result = await web1.health.check(4311)
        if result.detail != "connection refused":
            break
        await asyncio.sleep(0.1)
    assert not result.ok and result.detail == "HTTP 500"
    assert (await web1.health.check(4312)).detail == "connection refused"
    # A batch through the connection: a channel per port, results in the order asked.
    results = await web1.health.check_many([4312, 4311, 4312], limit=2)
    assert [r.detail for r in results] == ["connection refused", "HTTP 500", "connection refused"]


async def test_caddy_admin_through_the_forward_with_the_host_header(remote_hosts, web1):
    # Without the Host header Caddy's admin API would answer 403 through the forward.
    before = await web1.caddy.current()
    assert before["admin"]["listen"] == "127.0.0.1:2019"
    site = {"listen": ["127.0.0.1:8931"], "routes": [{"handle": [
        {"handler": "static_response", "body": "from web1", "status_code": 200}]}]}
    try:
        await web1.caddy.load({**before, "apps": {"http": {"servers": {"t": site}}}})
        assert remote_hosts.curl("web1", "http://127.0.0.1:8931/") == (200, "from web1")
        assert remote_hosts.curl("web2", "http://127.0.0.1:8931/")[0] == 0  # web2's Caddy: not loaded
    finally:
        await web1.caddy.load(before)
    assert remote_hosts.curl("web1", "http://127.0.0.1:8931/")[0] == 0


async def test_marker_files_over_sftp(remote_hosts, web1):
    directory = Path(remote_hosts.config("web1")["marker_dir"]) / uuid.uuid4().hex[:8] / "deep"
    assert await web1.list_files(directory) == set()  # missing: empty, not an error
    await web1.create_file(directory / "shop-production.blue")
    await web1.create_file(directory / "shop-production.blue")  # twice is fine
    await web1.create_file(directory / "other.green")
    (directory / "subdir").mkdir()  # not a file: not listed
    assert await web1.list_files(directory) == {"shop-production.blue", "other.green"}
    assert (directory / "other.green").is_file()  # the host's filesystem (shared with the test)
    await web1.remove_file(directory / "other.green")
    await web1.remove_file(directory / "never-there")
    assert await web1.list_files(directory) == {"shop-production.blue"}


async def test_connection_is_opened_again_after_the_hosts_sshd_restarts(remote_hosts, web1):
    first = await web1.connection()
    assert 22 in await web1.listening_ports()
    remote_hosts.restart_sshd("web1")  # kills sshd and the connection it served
    await first.wait_closed()
    assert first.is_closed()
    # The next calls open a new connection, forwards included.
    assert 22 in await web1.listening_ports()
    assert await web1.connection() is not first
    assert await web1.docker.ping()
    assert (await web1.caddy.current())["admin"]["listen"] == "127.0.0.1:2019"


async def test_unknown_host_key_is_refused_naming_the_host_and_fingerprint(remote_hosts, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(remote_hosts.known_hosts_line("web1"))  # web2 is not in it
    host = make_host(remote_hosts, "web2", known_hosts=str(known_hosts))
    offered = remote_hosts.hosts["web2"].host_key.get_fingerprint("sha256")
    try:
        with pytest.raises(HostKeyRefused) as refused:
            await host.connection()
    finally:
        await host.aclose()
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("Host web2 ") and "unknown host key" in message
    assert offered in message and refused.value.offered == offered
    # Trusting it (what `codeb host trust` does) lets the next connection in.
    fingerprint, line = await server_key(host.spec)
    assert fingerprint == offered
    record_host_key(host.spec, line)
    assert remote_hosts.known_hosts_line("web1") in known_hosts.read_text()
    trusted = make_host(remote_hosts, "web2", known_hosts=str(known_hosts))
    try:
        assert 22 in await trusted.listening_ports()
    finally:
        await trusted.aclose()


async def test_changed_host_key_is_refused_naming_both_fingerprints(remote_hosts, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(remote_hosts.known_hosts_line("web2"))
    recorded = known_hosts.read_text()
    old = remote_hosts.hosts["web2"].host_key.get_fingerprint("sha256")
    try:
        new = remote_hosts.replace_host_key("web2").get_fingerprint("sha256")
        host = make_host(remote_hosts, "web2", known_hosts=str(known_hosts))
        try:
            with pytest.raises(HostKeyRefused) as refused:
                await host.connection()
        finally:
            await host.aclose()
    finally:
        remote_hosts.write_known_hosts()  # the session's known_hosts: the new key
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("Host web2 ") and "host key changed" in message
    assert f"known {old}" in message and f"offered {new}" in message
    # The file was not touched: only `codeb host trust` records a key.
    assert known_hosts.read_text() == recorded
    assert old != new


@pytest.mark.parametrize("how", ["link", "freeze"])
async def test_a_down_host_fails_within_its_timeout_and_never_holds_up_another(
        remote_hosts, how):
    web1 = make_host(remote_hosts, "web1", connect_timeout=1.0, request_timeout=1.0)
    web2 = make_host(remote_hosts, "web2")
    try:
        await web1.connection()
        remote_hosts.stop("web1", how)
        try:
            # The open connection: the request times out, the connection is aborted.
            down, up = await asyncio.gather(web1.listening_ports(), web2.listening_ports(),
                                            return_exceptions=True)
            assert isinstance(down, HostUnreachable), down
            assert str(down) == "Host web1 unreachable: listening ports: no answer within 1 s"
            assert 22 in up
            # A new connection: refused within connect_timeout.
            with pytest.raises(HostUnreachable) as unreachable:
                await web1.connection()
            assert "no answer within 1 s" in str(unreachable.value)
            assert not await web1.docker.ping()
            with pytest.raises(HostUnreachable):
                await web1.health.check(4100)
            assert not await web1.caddy.ping()
            assert await web2.docker.ping()
        finally:
            remote_hosts.start("web1")
        assert 22 in await web1.listening_ports()  # back: a new connection
    finally:
        await asyncio.gather(web1.aclose(), web2.aclose())


async def test_a_refused_connection_fails_at_once_with_the_reason(remote_hosts):
    web1 = make_host(remote_hosts, "web1")
    remote_hosts.stop("web1", "sshd")
    try:
        with pytest.raises(HostUnreachable) as unreachable:
            await web1.connection()
        assert str(unreachable.value) == (
            f"Host web1 unreachable: root@{remote_hosts.hosts['web1'].address}:22: "
            "connection refused")
    finally:
        remote_hosts.start("web1")
        await web1.aclose()


async def test_a_key_the_host_does_not_accept_is_refused(remote_hosts, tmp_path):
    import asyncssh

    stranger = tmp_path / "id_stranger"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(stranger))
    host = make_host(remote_hosts, "web1", identity_file=str(stranger))
    try:
        with pytest.raises(HostUnreachable) as unreachable:
            await host.connection()
    finally:
        await host.aclose()
    assert "the key was refused" in str(unreachable.value)


async def test_login_through_the_ssh_agent(remote_hosts, tmp_path, monkeypatch):
    import subprocess

    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            await asyncio.sleep(0.05)
        env = {"SSH_AUTH_SOCK": str(sock), "PATH": "/usr/bin:/bin"}
        subprocess.run(["ssh-add", str(remote_hosts.identity_file)], env=env, check=True,
                       capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        host = make_host(remote_hosts, "web1", identity_file=None, agent=True)
        try:
            assert 22 in await host.listening_ports()
        finally:
            await host.aclose()
    finally:
        agent.terminate()
        agent.wait(5)


def test_one_host_used_from_one_event_loop_then_another(remote_hosts):
    """The CLI, the console and tests each run their own loop: the host follows."""
    host = make_host(remote_hosts, "web1")
    try:
        assert 22 in asyncio.run(host.listening_ports())
        assert asyncio.run(host.docker.ping())
        assert asyncio.run(host.caddy.current())["admin"]["listen"] == "127.0.0.1:2019"
    finally:
        asyncio.run(host.aclose())


async def test_the_forwarded_docker_socket_lives_in_a_private_directory(web1):
    await web1.connection()
    socket_dir = Path(web1.docker.endpoint.removeprefix("unix://")).parent
    assert socket_dir.stat().st_mode & 0o777 == 0o700
    await web1.aclose()
    assert not socket_dir.exists()


def test_the_test_hosts_are_apart(remote_hosts):
    """Each host's Caddy and Docker are its own; nothing on them answers from this namespace."""
    for name in remote_hosts.names:
        status, body = remote_hosts.curl(name, "http://127.0.0.1:2019/config/")
        assert status == 200 and json.loads(body)["admin"]["listen"] == "127.0.0.1:2019"
    routes = remote_hosts.run("web1", ["ip", "route"]).stdout
    assert "default" not in routes


# --- codeb host list | check | trust ---------------------------------------------------------


def host_config(remote_hosts, config_file, **overrides):
    hosts = remote_hosts.hosts_config()
    for name, entry in overrides.items():
        hosts[name] = {**hosts[name], **entry}
    return config_file(hosts=hosts)


def test_host_list_and_check(remote_hosts, config_file):
    from conftest import run_cli

    config = host_config(remote_hosts, config_file)
    listed = run_cli("--json", "host", "list", config=config)
    assert listed.returncode == 0, listed.stderr
    hosts = {h["name"]: h for h in json.loads(listed.stdout)["hosts"]}
    assert list(hosts) == ["local", "web1", "web2"]
    assert hosts["web1"]["target"] == f"root@{remote_hosts.hosts['web1'].address}:22"

    checked = run_cli("--json", "host", "check", config=config)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    checks = {c["name"]: c for c in json.loads(checked.stdout)["hosts"]}
    for name in ("local", "web1", "web2"):
        assert checks[name]["ok"] and checks[name]["reachable"], checks[name]
        assert checks[name]["docker_version"] and checks[name]["caddy_admin"]
        assert checks[name]["latency_ms"] is not None
    assert checks["web1"]["caddy_version"].lstrip("v").startswith("2.")

    table = run_cli("host", "check", "web2", config=config)
    assert table.returncode == 0 and "web2" in table.stdout and "web1" not in table.stdout

    unknown = run_cli("host", "check", "web9", config=config)
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == [
        "codeb: Unknown host 'web9': declare it under hosts: in the config (known: local, web1, web2)"]


def test_host_check_reports_a_down_host_and_the_others(remote_hosts, config_file):
    from conftest import run_cli

    config = host_config(remote_hosts, config_file, web1={"connect_timeout": 1.0})
    remote_hosts.stop("web1", "link")
    try:
        checked = run_cli("--json", "host", "check", config=config)
    finally:
        remote_hosts.start("web1")
    assert checked.returncode == 1
    checks = {c["name"]: c for c in json.loads(checked.stdout)["hosts"]}
    assert not checks["web1"]["reachable"]
    assert checks["web1"]["error"].startswith("Host web1 unreachable: ")
    assert checks["web2"]["ok"] and checks["local"]["ok"]


def test_host_trust_records_an_unknown_key_then_refuses_a_changed_one(remote_hosts, config_file,
                                                                      tmp_path):
    from conftest import run_cli

    known_hosts = tmp_path / "ssh" / "known_hosts"  # neither the file nor its folder exist yet
    config = host_config(remote_hosts, config_file, web2={"known_hosts": str(known_hosts)})
    fingerprint = remote_hosts.hosts["web2"].host_key.get_fingerprint("sha256")

    refused = run_cli("host", "check", "web2", config=config)
    assert refused.returncode == 1
    assert "unknown host key" in refused.stdout and fingerprint in refused.stdout

    # Not at a terminal and no --yes: nothing is recorded.
    asked = run_cli("host", "trust", "web2", config=config)
    assert asked.returncode == 2
    assert asked.stderr.strip().splitlines()[-1].startswith("codeb: host trust web2: not at a terminal")
    assert fingerprint in asked.stdout
    assert not known_hosts.exists()

    trusted = run_cli("host", "trust", "web2", "--yes", config=config)
    assert trusted.returncode == 0, trusted.stderr
    assert f"recorded {fingerprint} for web2" in trusted.stdout
    assert known_hosts.read_text() == remote_hosts.known_hosts_line("web2")
    assert run_cli("host", "check", "web2", config=config).returncode == 0
    again = run_cli("--json", "host", "trust", "web2", config=config)  # nothing to ask
    assert again.returncode == 0 and json.loads(again.stdout)["already_trusted"]

    try:
        new = remote_hosts.replace_host_key("web2").get_fingerprint("sha256")
        changed = run_cli("--json", "host", "check", "web2", config=config)
        assert changed.returncode == 1
        error = json.loads(changed.stdout)["hosts"][0]["error"]
        assert "host key changed" in error and fingerprint in error and new in error
        shown = run_cli("host", "trust", "web2", config=config)
        assert "the key CHANGED" in shown.stdout and shown.returncode == 2
        replaced = run_cli("host", "trust", "web2", "--yes", config=config)
        assert replaced.returncode == 0, replaced.stderr
        assert known_hosts.read_text() == remote_hosts.known_hosts_line("web2")  # old line gone
        assert run_cli("host", "check", "web2", config=config).returncode == 0
    finally:
        remote_hosts.write_known_hosts()


def test_host_trust_of_local_and_through_a_server_is_refused(remote_hosts, config_file):
    from conftest import run_cli

    config = host_config(remote_hosts, config_file)
    local = run_cli("host", "trust", "local", "--yes", config=config)
    assert local.returncode == 2
    assert local.stderr.strip() == "codeb: local is this machine: it has no SSH key to trust"
    served = run_cli("--server", "http://127.0.0.1:9", "host", "list", config=config)
    assert served.returncode == 2 and "without --server" in served.stderr


async def test_many_file_operations_at_once_share_one_sftp_session(remote_hosts, web1):
    """sshd allows 10 sessions per connection (the test hosts keep that default): a status
    reading the markers of many projects at once must not open one each."""
    base = Path(remote_hosts.config("web1")["marker_dir"]) / uuid.uuid4().hex[:8]
    await asyncio.gather(*[web1.create_file(base / f"p{i}" / "x.live") for i in range(30)])
    found = await asyncio.gather(*[web1.list_files(base / f"p{i}") for i in range(30)],
                                 web1.listening_ports())
    assert found[:30] == [{"x.live"}] * 30 and 22 in found[30]


@pytest.mark.parametrize(("entry", "error"), [
    ({"password": "hunter2"}, "hosts.web1.password: unknown key"),
    ({"identity_file": None}, "hosts.web1.identity_file: required (or agent: true)"),
    ({"marker_dir": "switch"}, "hosts.web1.marker_dir: expected an absolute path on that host, "
                               "got 'switch'"),
    ({"port": 70000}, "hosts.web1.port: must be 65535 or less"),
    ({"request_timeout": 0}, "hosts.web1.request_timeout: must be greater than 0"),
])
def test_host_config_is_checked_key_by_key(entry, error):
    from codeb_tui.domain.errors import ConfigError

    base = {"address": "192.0.2.1", "user": "deploy", "identity_file": "/k"}
    with pytest.raises(ConfigError) as refused:
        parse_config({"hosts": {"web1": {**base, **entry}}})
    assert str(refused.value) == error


def test_projects_name_declared_hosts_or_local():
    from codeb_tui.domain.errors import ConfigError

    host = {"address": "192.0.2.1", "user": "deploy", "agent": True}
    config = parse_config({"hosts": {"web1": host}, "projects": {"shop": {"hosts": ["web1", "local"]}}})
    assert config.projects["shop"].hosts == ["web1", "local"]
    assert config.hosts["web1"].target == "deploy@192.0.2.1:22"
    for data, error in [
        ({"projects": {"shop": {"hosts": ["web2"]}}},
         "projects.shop.hosts.0: unknown host 'web2' (declare it under hosts:, or use local)"),
        ({"projects": {"shop": {"hosts": []}}}, "projects.shop.hosts: expected at least one host"),
        ({"hosts": {"local": host}}, "hosts.local: 'local' is this machine and cannot be declared"),
    ]:
        with pytest.raises(ConfigError) as refused:
            parse_config(data)
        assert str(refused.value) == error


async def test_the_registry_offered_by_another_connection_is_taken_over_when_it_goes(
        remote_hosts, container_name):
    """The console and a CLI command both reach web1: the first offers the registry there; the
    second pulls through it, and offers it itself once the first is gone."""
    first = make_host(remote_hosts, "web1")
    second = make_host(remote_hosts, "web1")
    try:
        await first.connection()
        await second.connection()
        assert first.registry_forward_error is None
        assert second.registry_forward_error is not None  # 127.0.0.1:5000 taken there
        remote_hosts.run("web1", ["docker", "rmi", "-f", f"{IMAGE}:v2"])
        await second.docker.pull(f"{IMAGE}:v2")  # through the first one's offer
        await first.aclose()
        remote_hosts.run("web1", ["docker", "rmi", "-f", f"{IMAGE}:v2"])
        await second.docker.pull(f"{IMAGE}:v2")  # its own now
        assert second.registry_forward_error is None
        assert await second.docker.image_present(f"{IMAGE}:v2")
    finally:
        await asyncio.gather(first.aclose(), second.aclose())
