"""`codeb ssh-serve`: the console over SSH, met with asyncssh's client on loopback.

The server runs as `codeb ssh-serve` in its own process, over the real Docker engine, registry,
Caddy and SQLite database; each session's console is a real process on a real pty. What a client
sees is read through pyte, a terminal emulator (a test-only dependency): the screen as a
terminal of that size would show it, so sizes and resizes are checked as an operator sees them.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pyte
import pytest

from codeb_tui.domain import events
from codeb_tui.domain.config import load_config
from codeb_tui.engine.facade import Engine
from conftest import LOCAL, REPO, collect, free_ports, image, run_cli, terminal

WAIT = 30.0
"""Seconds a test waits for a screen to show something (a limit for a hang, not a figure)."""


@dataclass
class Keys:
    alice: asyncssh.SSHKey  # admin
    bob: asyncssh.SSHKey  # viewer
    carol: asyncssh.SSHKey  # member
    mallory: asyncssh.SSHKey  # nobody's


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(*(asyncssh.generate_private_key("ssh-ed25519") for _ in range(4)))


def _public(key: asyncssh.SSHKey) -> str:
    return key.export_public_key().decode().strip()


@dataclass
class Server:
    port: int
    config_path: Path
    process: subprocess.Popen
    log: Path

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


@pytest.fixture
def ssh_server(config_file, keys, tmp_path):
    started: list[Server] = []

    carol_keys = tmp_path / "carol_authorized_keys"  # options before the key are dropped
    carol_keys.write_text(f'# carol\nno-pty,command="echo hi" {_public(keys.carol)} carol@box\n')

    def start(**ssh) -> Server:
        port = free_ports(1)[0]
        section = {
            "listen": f"127.0.0.1:{port}", "state_dir": str(tmp_path / "ssh"),
            "operators": [
                {"name": "alice", "role": "admin", "team": "ops", "keys": [_public(keys.alice)]},
                {"name": "bob", "role": "viewer", "team": "ops", "keys": [_public(keys.bob)]},
                {"name": "carol", "role": "member", "team": "dev",
                 "authorized_keys": str(carol_keys)},
            ],
            **ssh,
        }
        path = config_file(ssh=section)
        log = tmp_path / f"ssh-serve-{port}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "codeb_tui.cli", "ssh-serve", "--config", str(path)],
            stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO)
        server = Server(port, path, process, log)
        started.append(server)
        deadline = time.monotonic() + WAIT
        while "listening on" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ssh-serve did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        return server

    yield start
    for server in started:
        try:
            server.stop()
        except subprocess.TimeoutExpired:  # a console that never ended: fail, leave nothing
            for pid in _children(server.process.pid):
                os.kill(pid, signal.SIGKILL)
            server.process.kill()
            raise


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


async def _connect(server: Server, user: str, key: asyncssh.SSHKey) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect("127.0.0.1", server.port, username=user, client_keys=[key],
                                  known_hosts=None, agent_path=None, agent_forwarding=False)


class Terminal:
    """One SSH session with a pty, its output read through a terminal emulator."""

    def __init__(self, conn: asyncssh.SSHClientConnection, process: asyncssh.SSHClientProcess,
                 columns: int, rows: int) -> None:
        self.conn, self.process = conn, process
        self.screen = pyte.Screen(columns, rows)
        self.stream = pyte.ByteStream(self.screen)

    @classmethod
    async def open(cls, server: Server, user: str, key: asyncssh.SSHKey, columns: int = 120,
                   rows: int = 36, term: str = "xterm-256color") -> Terminal:
        conn = await _connect(server, user, key)
        process = await conn.create_process(term_type=term, term_size=(columns, rows),
                                            encoding=None)
        return cls(conn, process, columns, rows)

    @property
    def text(self) -> str:
        return "\n".join(self.screen.display)

    @property
    def footer(self) -> str:
        return self.screen.display[-1]

    def line_with(self, needle: str) -> str:
        return next((line for line in self.screen.display if needle in line), "")

    async def wait_for(self, shows, what: str = "") -> str:
        """Read until `shows(text)` (or the text contains `shows`) holds."""
        check = shows if callable(shows) else (lambda text: shows in text)
        deadline = asyncio.get_running_loop().time() + WAIT
        while not check(self.text):
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                pytest.fail(f"the screen never showed {what or shows!r}:\n{self.text}")
            try:
                data = await asyncio.wait_for(self.process.stdout.read(65536), min(left, 0.5))
            except TimeoutError:
                continue
            if not data:
                pytest.fail(f"the session ended before showing {what or shows!r}:\n{self.text}")
            self.stream.feed(data)
        return self.text

    async def press(self, keys: str) -> None:
        self.process.stdin.write(keys.encode())

    def resize(self, columns: int, rows: int) -> None:
        self.process.change_terminal_size(columns, rows)
        self.screen.resize(rows, columns)

    async def rest(self) -> bytes:
        """Everything up to the end of the session."""
        out = b""
        while data := await asyncio.wait_for(self.process.stdout.read(65536), WAIT):
            self.stream.feed(data)
            out += data
        return out

    def close(self) -> None:
        self.conn.close()


def _wait_for_log(server: Server, pattern: str) -> str:
    """Wait until the server's log matches `pattern` (a regular expression); its first group."""
    deadline = time.monotonic() + WAIT
    while (found := re.search(pattern, server.log.read_text())) is None:
        if time.monotonic() > deadline:
            pytest.fail(f"ssh-serve never logged {pattern!r}: {server.log.read_text()[-2000:]}")
        time.sleep(0.1)
    return found.group(1) if found.groups() else found.group(0)


async def _audit(server: Server, action: str) -> list:
    async with Engine(load_config(server.config_path)) as engine:
        return await engine.history(LOCAL, action=action)


async def _audit_until(server: Server, action: str, found) -> list:
    """Audit rows of `action`, waiting until `found(rows)` (a refusal is audited in the
    background, just after the client is answered)."""
    deadline = time.monotonic() + WAIT
    while True:
        rows = await _audit(server, action)
        if found(rows) or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.2)


async def _production_pair(server: Server, project: str) -> None:
    """v1 active, v2 deployed: ready for a promote."""
    async with Engine(load_config(server.config_path)) as engine:
        for stream in (engine.deploy(LOCAL, project, image("v1")), engine.promote(LOCAL, project),
                       engine.deploy(LOCAL, project, image("v2"))):
            assert isinstance(terminal(await collect(stream)), events.Finished)


def _row(term: Terminal, project: str) -> str:
    return term.line_with(project)


# --- sizes, resize, promote seen elsewhere, roles ------------------------------------------------


async def test_two_sessions_of_different_sizes_and_a_resize(ssh_server, keys, prefix):
    server = ssh_server()
    project = f"{prefix}-size"
    await _production_pair(server, project)
    wide = await Terminal.open(server, "alice", keys.alice, columns=170, rows=40)
    narrow = await Terminal.open(server, "bob", keys.bob, columns=100, rows=30,
                                 term="screen-256color")
    try:
        # The wide terminal gets the wide table (URL columns from 150 columns on), the narrow
        # one the compact table; each fills its own size, footer on its last line.
        await wide.wait_for(lambda t: project in t and "Production URL" in t, "the wide table")
        await narrow.wait_for(project)
        assert "Production URL" not in narrow.text
        # Each session's console is a session leader with its pty as controlling terminal
        # (so window changes reach it).
        pid = int(_wait_for_log(server, r"session of bob \(\S+\) started: console pid (\d+), "
                                        r"100x30 screen-256color"))  # the client's size and TERM
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        assert int(stat[3]) == pid and int(stat[4]) != 0  # session id, tty_nr
        await narrow.wait_for(lambda t: "Quit" in narrow.screen.display[29], "the footer on line 30")
        await wide.wait_for(lambda t: "Quit" in wide.screen.display[39], "the footer on line 40")
        # A window change reaches the console (SIGWINCH through the pty): it redraws wide.
        narrow.resize(160, 30)
        await narrow.wait_for(lambda t: "Production URL" in t, "the table redrawn wide")
    finally:
        wide.close()
        narrow.close()


async def test_promote_in_one_session_is_seen_in_the_other_and_a_viewer_may_not(ssh_server, keys,
                                                                               prefix):
    server = ssh_server()
    project = f"{prefix}-promo"
    await _production_pair(server, project)
    admin = await Terminal.open(server, "alice", keys.alice)
    viewer = await Terminal.open(server, "bob", keys.bob)
    try:
        before = re.compile(r"active\s+\d+ v1.*deployed\s+\d+ v2")
        await admin.wait_for(lambda t: bool(before.search(_row(admin, project))), "v1 active")
        await viewer.wait_for(lambda t: bool(before.search(_row(viewer, project))), "v1 active")
        # The viewer's console offers no promote; pressed anyway, the key says why.
        await admin.wait_for(lambda t: "Promote" in admin.footer, "Promote in the footer")
        await viewer.wait_for(lambda t: "Logs" in viewer.footer, "the viewer's footer")
        assert "Promote" not in viewer.footer and "Deploy" not in viewer.footer
        await viewer.press("p")
        await viewer.wait_for(lambda t: "Access Denied" in t and "ssh:bob" in t, "the refusal")
        assert "Promote?" not in viewer.text
        # The admin promotes (production asks for the project name to be typed).
        await admin.press("p")
        await admin.wait_for("Promote?")
        await admin.press(project + "\r")
        after = re.compile(r"grace\s+\d+ v1.*active\s+\d+ v2")
        await admin.wait_for(lambda t: bool(after.search(_row(admin, project))), "v2 active")
        await viewer.wait_for(lambda t: bool(after.search(_row(viewer, project))),
                              "the promote seen in the other session")
    finally:
        admin.close()
        viewer.close()
    promotes = await _audit(server, "promote")
    assert [(r.actor, r.team, r.result) for r in promotes
            if r.project == project and r.actor != LOCAL.actor] == [("ssh:alice", "ops", "succeeded")]


async def test_a_member_may_not_clean_up_production(ssh_server, keys, prefix):
    server = ssh_server()
    project = f"{prefix}-member"
    await _production_pair(server, project)
    member = await Terminal.open(server, "carol", keys.carol)
    try:
        await member.wait_for(project)
        # Row actions follow the selected row's environment: until a row is selected the
        # footer offers what the member may do somewhere (cleanup too), then production's.
        await member.wait_for(lambda t: "Promote" in member.footer
                              and "Cleanup" not in member.footer,
                              "the member's footer for a production row, without Cleanup")
        await member.press("c")
        await member.wait_for(lambda t: "Access Denied" in t and "ssh:carol" in t,
                              "the member's refusal")
        assert "Clean up?" not in member.text
    finally:
        member.close()


# --- refusals ----------------------------------------------------------------------------------


async def test_an_unknown_key_is_refused_and_audited_with_its_fingerprint(ssh_server, keys):
    server = ssh_server()
    with pytest.raises(asyncssh.PermissionDenied):
        await _connect(server, "mallory", keys.mallory)
    with pytest.raises(asyncssh.PermissionDenied):  # a known name with someone else's key
        await _connect(server, "alice", keys.mallory)
    with pytest.raises(asyncssh.PermissionDenied):  # no password is ever asked for
        await asyncssh.connect("127.0.0.1", server.port, username="alice", password="alice",
                               client_keys=None, known_hosts=None, agent_path=None)
    fingerprint = keys.mallory.get_fingerprint()
    rows = await _audit_until(server, "ssh.login", lambda rows: len(rows) >= 2)
    assert sorted((r.actor, r.result, r.detail["fingerprint"]) for r in rows) == [
        ("ssh:alice", "refused", fingerprint), ("ssh:mallory", "refused", fingerprint)]
    assert fingerprint in server.log.read_text()


async def _empty_agent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An ssh-agent holding no key: every request (the client lists keys) gets an empty list."""
    try:
        while True:
            size = int.from_bytes(await reader.readexactly(4), "big")
            await reader.readexactly(size)
            writer.write(b"\x00\x00\x00\x05\x0c\x00\x00\x00\x00")  # IDENTITIES_ANSWER, 0 keys
    except asyncio.IncompleteReadError:
        writer.close()


async def test_exec_sftp_and_forwarding_are_refused_and_audited(ssh_server, keys, caddy, tmp_path):
    server = ssh_server()
    async with await _connect(server, "alice", keys.alice) as conn:
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_process("cat /etc/passwd")
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_process(subsystem="sftp")
        caddy_host, caddy_port = caddy["listen"].split(":")
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_connection(asyncssh.SSHTCPSession, caddy_host, int(caddy_port))
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", 9)
        # Agent forwarding: asked for with the console session; refused, the console served.
        agent = await asyncio.start_unix_server(_empty_agent, str(tmp_path / "agent.sock"))
        async with await asyncssh.connect(
                "127.0.0.1", server.port, username="alice", client_keys=[keys.alice],
                known_hosts=None, agent_path=str(tmp_path / "agent.sock"),
                agent_forwarding=True) as forwarding:
            process = await forwarding.create_process(term_type="xterm", term_size=(80, 24),
                                                      encoding=None)
            await Terminal(forwarding, process, 80, 24).wait_for("codeb")
        agent.close()
        # No shell without a terminal either: the one thing served is the console.
        process = await conn.create_process(term_type=None)
        out = await asyncio.wait_for(process.stdout.read(), WAIT)
        assert "connect with a terminal" in out
    fingerprint = keys.alice.get_fingerprint()
    for action in ("ssh.exec", "ssh.subsystem", "ssh.forward"):
        rows = await _audit_until(server, action, lambda rows: bool(rows))
        assert rows and all(r.actor == "ssh:alice" and r.result == "refused"
                            and r.detail["fingerprint"] == fingerprint for r in rows), action
    exec_rows = await _audit(server, "ssh.exec")
    assert exec_rows[0].detail["command"] == "cat /etc/passwd"
    forwards = await _audit_until(server, "ssh.forward", lambda rows: len(rows) >= 3)
    assert sorted(r.detail["reason"] for r in forwards) == [
        "agent forwarding is not offered", "port forwarding is not offered",
        "remote port forwarding is not offered"]


# --- disconnect during a deploy ------------------------------------------------------------------


async def test_a_session_dropped_during_a_deploy_lets_it_finish_and_audits_the_end(ssh_server, keys,
                                                                                  prefix):
    server = ssh_server()
    project = f"{prefix}-drop"
    async with Engine(load_config(server.config_path)) as engine:
        done = terminal(await collect(engine.deploy(LOCAL, project, image("v1"), "staging")))
        assert isinstance(done, events.Finished), done
    deployer = await Terminal.open(server, "alice", keys.alice)
    watcher = await Terminal.open(server, "bob", keys.bob, columns=170)
    try:
        await deployer.wait_for(project)
        await watcher.wait_for(project)
        await deployer.press("d")
        await deployer.wait_for(f"Deploy to {project}")
        await deployer.wait_for("demo/app:", "the image field")
        await deployer.press("slow\r")  # the field holds "<registry>/demo/app:"; slow starts in 8 s
        await deployer.wait_for("health check", "the deploy's health check step")
        # The other session sees who runs what, and which step, from the lock.
        await watcher.wait_for(lambda t: f"deploy {project} (staging) by ssh:alice at 'health check'" in t,
                               "the running deploy in the other session")
        deployer.close()  # the client goes away mid-deploy
    finally:
        watcher.close()
    async with Engine(load_config(server.config_path)) as engine:
        deadline = time.monotonic() + 60
        while True:
            ends = await engine.history(LOCAL, action="ssh.session")
            if any(r.actor == "ssh:alice" for r in ends) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        rows = {s.slot.value: s for s in await engine.status(LOCAL, project, "staging")}
        deploys = [r for r in await engine.history(LOCAL, project=project, action="deploy")
                   if r.actor == "ssh:alice"]
    end = next(r for r in ends if r.actor == "ssh:alice")
    assert end.result == "ended" and end.detail["event"] == "session ended"
    assert "client gone" in end.detail["reason"]
    assert end.detail["operations"] == [
        {"operation": f"deploy {project} (staging) {image('slow')}", "result": "succeeded"}]
    assert [r.result for r in deploys] == ["succeeded"]
    # Deployed whole (a deploy replaces the deployed, never promoted, v1), and healthy.
    assert [(s.state.value, s.health.value) for s in rows.values() if s.image == image("slow")] \
        == [("deployed", "healthy")]
    # Then the console process ended by itself, and the server let the session go.
    _wait_for_log(server, r"session of alice ended \(console exit 0\)")


# --- limits --------------------------------------------------------------------------------------


async def test_the_session_limit_and_the_idle_timeout_say_so(ssh_server, keys):
    server = ssh_server(max_sessions=1, idle_timeout=3)
    first = await Terminal.open(server, "alice", keys.alice)
    try:
        second = await Terminal.open(server, "bob", keys.bob)  # while the first one is open
        out = (await second.rest()).decode()
        assert "1 sessions are open, the most this server takes (ssh.max_sessions)" in out
        assert second.process.exit_status == 1
        second.close()
        # No key for 3 s: the console ends (terminal restored), then the message.
        out = (await first.rest()).decode()
        assert "no key pressed for 3 s (ssh.idle_timeout): session closed" in out
        assert first.process.exit_status == 0
    finally:
        first.close()
    rows = await _audit_until(server, "ssh.session", lambda rows: len(rows) >= 2)
    assert {(r.actor, r.result) for r in rows} == {("ssh:bob", "refused"), ("ssh:alice", "ended")}


# --- the host key and the operators --------------------------------------------------------------


async def test_host_key_is_0600_and_kept_across_starts(ssh_server, keys, tmp_path):
    server = ssh_server()
    key_path = tmp_path / "ssh" / "ssh_host_ed25519_key"
    assert key_path.stat().st_mode & 0o777 == 0o600
    async with await _connect(server, "alice", keys.alice) as conn:
        first = conn.get_server_host_key().get_fingerprint()
    assert server.stop() == 0
    again = ssh_server()
    async with await _connect(again, "alice", keys.alice) as conn:
        assert conn.get_server_host_key().get_fingerprint() == first


async def test_operator_add_list_remove(ssh_server, keys, tmp_path):
    server = ssh_server()
    config = str(server.config_path)
    key_file = tmp_path / "dave.pub"
    key_file.write_text(f"{_public(keys.mallory)} dave@laptop\n")
    with pytest.raises(asyncssh.PermissionDenied):
        await _connect(server, "dave", keys.mallory)
    added = run_cli("operator", "add", "dave", "--role", "viewer", "--team", "ops",
                    "--key-file", str(key_file), config=server.config_path)
    assert added.returncode == 0, added.stderr
    assert keys.mallory.get_fingerprint() in added.stdout
    assert (tmp_path / "ssh" / "operators.json").stat().st_mode & 0o777 == 0o600
    # The running server takes the new operator at the next login.
    term = await Terminal.open(server, "dave", keys.mallory)
    await term.wait_for("Quit")
    term.close()
    listed = run_cli("operator", "list", config=server.config_path).stdout
    assert re.search(r"dave\s+viewer\s+ops\s+SHA256:\S+\s+operators.json", listed)
    assert re.search(r"alice\s+admin\s+ops\s+SHA256:\S+\s+config", listed)
    # Refusals: one line each.
    for args, says in ((["remove", "alice"], "declared in the config"),
                       (["add", "alice", "--role", "viewer", "--key", _public(keys.bob)], "declared in the config"),
                       (["add", "Eve!", "--role", "viewer", "--key", _public(keys.bob)], "invalid operator name"),
                       (["add", "eve", "--role", "viewer", "--key", "ssh-ed25519 nope"], "not a public key"),
                       (["add", "eve", "--role", "boss", "--key", _public(keys.bob)], "boss")):
        refused = run_cli("operator", *args, "--config", config)
        assert refused.returncode == 2 and says in refused.stderr, (args, refused.stderr)
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    removed = run_cli("operator", "remove", "dave", config=server.config_path)
    assert removed.returncode == 0 and "removed operator dave" in removed.stdout
    with pytest.raises(asyncssh.PermissionDenied):
        await _connect(server, "dave", keys.mallory)


def test_a_bad_listen_address_is_one_error_line(config_file):
    done = run_cli("ssh-serve", "--listen", "nowhere", config=config_file())
    assert done.returncode == 2
    assert done.stderr.strip() == "codeb: ssh.listen: expected host:port with a port in 1..65535, got 'nowhere'"
