"""CaddyAdmin (infra/caddy.py) against a real Caddy of this module's own."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time

import pytest
from conftest import free_ports

from codeb_tui.domain.errors import ProxyApplyFailed
from codeb_tui.infra.caddy import CaddyAdmin

ORIGIN = "caddy-admin.test:2019"  # a Host Caddy is told to accept, as behind an SSH forward
SITE_PORT = [0]  # the sites' port, one for the module: Caddy keeps its listener across loads


def _admin_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def admin_port(tmp_path_factory):
    root = tmp_path_factory.mktemp("caddy-admin")
    port, SITE_PORT[0] = free_ports(2)
    (root / "caddy.json").write_text(json.dumps({"admin": {"listen": f"127.0.0.1:{port}"}}))
    env = {**os.environ, "XDG_CONFIG_HOME": str(root / "config"), "XDG_DATA_HOME": str(root / "data")}
    with open(root / "caddy.log", "w") as log:
        proc = subprocess.Popen([shutil.which("caddy") or "/usr/bin/caddy", "run", "--config",
                                 str(root / "caddy.json")], stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 15
    while not _admin_answers(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"caddy did not start: {(root / 'caddy.log').read_text()[-2000:]}")
        time.sleep(0.1)
    yield port
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def site_config(admin_port: int, sites: int, **admin: object) -> dict:
    """A config with `sites` routes on one server."""
    routes = [{"match": [{"host": [f"site{i}.example.com"]}],
               "handle": [{"handler": "static_response", "body": f"site {i} " + "x" * 40}]}
              for i in range(sites)]
    return {"admin": {"listen": f"127.0.0.1:{admin_port}", **admin},
            "apps": {"http": {"servers": {"codeb": {"listen": [f"127.0.0.1:{SITE_PORT[0]}"],
                                                     "routes": routes}}}}}


async def test_load_then_current_round_trips_a_large_config(admin_port):
    # 3,000 routes: a request body and an answer far larger than one socket buffer.
    admin = CaddyAdmin(f"http://127.0.0.1:{admin_port}")
    config = site_config(admin_port, 3000)
    assert len(json.dumps(config)) > 300_000
    await admin.load(config)
    assert await admin.current() == config
    assert await admin.ping()


async def test_rejected_config_is_caddys_error_and_changes_nothing(admin_port):
    admin = CaddyAdmin(f"http://127.0.0.1:{admin_port}")
    before = site_config(admin_port, 2)
    await admin.load(before)
    bad = site_config(admin_port, 1)
    bad["apps"]["http"]["servers"]["codeb"]["routes"][0]["handle"][0]["handler"] = "no_such_handler"
    with pytest.raises(ProxyApplyFailed, match="^Caddy rejected the config: .*no_such_handler"):
        await admin.load(bad)
    assert await admin.current() == before


async def test_a_part_of_the_config_by_id_or_path(admin_port):
    admin = CaddyAdmin(f"http://127.0.0.1:{admin_port}")
    config = site_config(admin_port, 3)
    route = config["apps"]["http"]["servers"]["codeb"]["routes"][1]
    route["@id"] = "site1&<co>"  # Caddy's encoder escapes &, < and >: compared parsed
    await admin.load(config)
    assert await admin.part("/id/site1&<co>") == route
    assert await admin.part("/config/apps/http/servers/codeb/listen") == [
        f"127.0.0.1:{SITE_PORT[0]}"]
    assert await admin.part("/id/no-such-id") is None
    assert await admin.part("/config/apps/http/servers/other/listen") is None
    await admin.load({"admin": {"listen": f"127.0.0.1:{admin_port}"}})  # restarted empty
    assert await admin.part("/config/apps/http/servers/codeb/listen") is None


async def test_unreachable_admin_is_one_error_and_ping_false():
    port = free_ports(1)[0]  # nothing listens there
    admin = CaddyAdmin(f"http://127.0.0.1:{port}", timeout=2)
    assert not await admin.ping()
    with pytest.raises(ProxyApplyFailed, match=f"^Caddy admin http://127.0.0.1:{port} unreachable"):
        await admin.current()
    with pytest.raises(ProxyApplyFailed, match="unreachable"):
        await admin.load({})


async def test_host_header_reaches_an_admin_that_checks_origins(admin_port):
    plain = CaddyAdmin(f"http://127.0.0.1:{admin_port}")
    forwarded = CaddyAdmin(f"http://127.0.0.1:{admin_port}", host_header=ORIGIN)
    config = site_config(admin_port, 1, origins=[ORIGIN])
    await plain.load(config)
    try:
        # Caddy now refuses the Host the URL gives (403) and accepts the named one. Its admin
        # server restarts with the new admin config: wait until it answers at all.
        deadline = time.monotonic() + 10
        while not await forwarded.ping() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        with pytest.raises(ProxyApplyFailed, match="answered 403"):
            await plain.current()
        assert await forwarded.current() == config
    finally:
        await forwarded.load(site_config(admin_port, 1))
    deadline = time.monotonic() + 10
    while not await plain.ping() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert await plain.ping()


async def test_https_admin_is_refused_in_one_line():
    admin = CaddyAdmin("https://127.0.0.1:2019")
    with pytest.raises(ProxyApplyFailed, match="only plain http:// is supported"):
        await admin.current()
