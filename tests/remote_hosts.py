"""Remote test hosts: two Linux network namespaces on this machine, each a small server of its
own with sshd, dockerd and Caddy, reached from the default namespace over a veth pair
(a pytest plugin: the session-scoped fixture `remote_hosts`).

Each host (`web1`, `web2`) has:
- a network namespace `codeb-<pid>-<name>` (the pytest process's pid, so two sessions on one
  machine never share one) and a veth pair with a /30 from 10.213.0.0/16: the addresses exist
  only on the two ends, nothing is routed beyond them. Inside, `lo` and the veth end only: the
  host has no route out, so images come from the loopback registry through the SSH connection's
  remote port forward, as on a server that cannot reach the registry.
- sshd on the veth address, port 22, key login only (the session's own client key).
- dockerd with no bridge and no iptables, its own data and exec roots, pid file, socket and
  key file; containers run with the host network, which is the namespace's.
- Caddy with its admin API on the namespace's 127.0.0.1:2019 (sites wherever the config loaded
  into it says).

The filesystem is shared with this machine (only the network is separate), so every path a
host's config names is under its own temporary directory.

Daemons are started with `nsenter --net=...` (not `ip netns exec`, which remounts /sys and then
dockerd finds no cgroups), each as a single process whose PID we keep; teardown stops only
those, then whatever else lives in the namespace (containers of its dockerd), unmounts
dockerd's mounts under the host's directory, deletes the veth pair, the namespace and the
directory, whatever happened before.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest

HOST_NAMES = ("web1", "web2")
CADDY_ADMIN = "http://127.0.0.1:2019"
REGISTRY = os.environ.get("CODEB_REGISTRY_URL", "127.0.0.1:5000")
SUBNET_BASE = (10 << 24) | (213 << 16)  # 10.213.0.0/16: one /30 per host
START_TIMEOUT = 30.0
RECORDS = Path("/run/codeb-test-hosts")
"""One file per live set of test hosts (pid, folder, namespaces), for reap_stale."""
_serials = itertools.count()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _dotted(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, "big"))


def _addresses_in_use() -> set[str]:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    return {line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3}


def _children(pid: int) -> list[int]:
    """PIDs whose parent is `pid` (to stop an sshd together with its connections)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _signal_tree(pid: int, sig: signal.Signals) -> None:
    for child in _children(pid):
        _signal_tree(child, sig)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _stop(proc: subprocess.Popen | None, timeout: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass
class TestHost:
    __test__ = False  # not a test class, whatever its name

    name: str
    netns: str
    veth_outer: str
    veth_inner: str
    outer_address: str
    address: str
    root: Path
    host_key: asyncssh.SSHKey
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def docker_socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def marker_dir(self) -> Path:
        return self.root / "markers"

    def nsenter(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", *argv]

    def spawn(self, what: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.root / f"{what}.log", "ab")
        try:
            self.procs[what] = subprocess.Popen(
                self.nsenter(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True)
        finally:
            log.close()

    def start_sshd(self) -> None:
        self.spawn("sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", str(self.root / "sshd_config")])

    def stop_sshd(self) -> None:
        """sshd and the connections it serves (its children): the host refuses SSH at once."""
        proc = self.procs.pop("sshd", None)
        if proc is not None and proc.poll() is None:
            _signal_tree(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def log(self, what: str) -> str:
        with contextlib.suppress(OSError):
            return (self.root / f"{what}.log").read_text(errors="replace")[-2000:]
        return ""


class RemoteHosts:
    """What the `remote_hosts` fixture yields."""

    def __init__(self, names: tuple[str, ...] = HOST_NAMES) -> None:
        self.names = list(names)
        self.root = Path(tempfile.mkdtemp(prefix="codeb-hosts-"))
        self.known_hosts = self.root / "known_hosts"
        self.identity_file = self.root / "id_ed25519"
        self.hosts: dict[str, TestHost] = {}
        self.record: Path | None = None

    # -- what tests use ---------------------------------------------------------------------

    def config(self, name: str, **overrides: object) -> dict:
        """The `hosts:` entry for `name` in a codeb config."""
        host = self.hosts[name]
        entry = {
            "address": host.address,
            "port": 22,
            "user": "root",
            "identity_file": str(self.identity_file),
            "known_hosts": str(self.known_hosts),
            "docker_socket": str(host.docker_socket),
            "caddy_admin": CADDY_ADMIN,
            "bind_address": "127.0.0.1",
            "marker_dir": str(host.marker_dir),
            "forward_registry": REGISTRY,
            "connect_timeout": 3.0,
            "request_timeout": 3.0,
        }
        entry.update(overrides)
        return entry

    def hosts_config(self) -> dict:
        """`hosts:` for every test host."""
        return {name: self.config(name) for name in self.names}

    def run(self, name: str, argv: list[str], timeout: float = 60.0,
            check: bool = False) -> subprocess.CompletedProcess:
        """`argv` inside the host's namespace; `docker` is pointed at the host's own dockerd."""
        host = self.hosts[name]
        env = {**os.environ, "DOCKER_HOST": f"unix://{host.docker_socket}"}
        return subprocess.run(host.nsenter(argv), capture_output=True, text=True,
                              timeout=timeout, check=check, env=env)

    def curl(self, name: str, url: str, host_header: str | None = None) -> tuple[int, str]:
        """(status, body) of a GET inside the host (0 when nothing answered)."""
        argv = ["curl", "-s", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}", url]
        if host_header:
            argv[1:1] = ["-H", f"Host: {host_header}"]
        out = self.run(name, argv).stdout
        body, _, status = out.rpartition("\n")
        return int(status or 0), body

    def stop(self, name: str, how: str = "link") -> None:
        """Take a host down. `link`: its veth end goes down, packets are dropped and new
        connections hang (a machine that went away); `sshd`: sshd and its connections are
        killed, connections are refused at once; `freeze`: sshd and its connections are
        stopped (SIGSTOP), TCP still connects but nothing answers (a host that hangs)."""
        host = self.hosts[name]
        if how == "link":
            _ip("-n", host.netns, "link", "set", host.veth_inner, "down")
        elif how == "sshd":
            host.stop_sshd()
        elif how == "freeze":
            _signal_tree(host.procs["sshd"].pid, signal.SIGSTOP)
        else:
            raise ValueError(f"stop how: link, sshd or freeze, not {how!r}")

    def start(self, name: str) -> None:
        """Undo any `stop`: the link up, sshd running and answering."""
        host = self.hosts[name]
        _ip("-n", host.netns, "link", "set", host.veth_inner, "up")
        proc = host.procs.get("sshd")
        if proc is not None and proc.poll() is None:
            _signal_tree(proc.pid, signal.SIGCONT)
        else:
            host.start_sshd()
        self._wait_ssh(host)

    def restart_sshd(self, name: str) -> None:
        """sshd killed with its connections, then started again (a host's sshd restarting)."""
        host = self.hosts[name]
        host.stop_sshd()
        host.start_sshd()
        self._wait_ssh(host)

    def replace_host_key(self, name: str) -> asyncssh.SSHKey:
        """Give the host a new host key (its sshd restarted), as a reinstalled server has;
        known_hosts keeps the old one. Returns the new key."""
        host = self.hosts[name]
        host.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self._write_host_key(host)
        self.restart_sshd(name)
        return host.host_key

    def known_hosts_line(self, name: str) -> str:
        host = self.hosts[name]
        return f"{host.address} {host.host_key.export_public_key('openssh').decode().strip()}\n"

    def write_known_hosts(self, names: list[str] | None = None) -> None:
        """known_hosts with the current keys of `names` (default: every host)."""
        lines = [self.known_hosts_line(name) for name in (self.names if names is None else names)]
        self.known_hosts.write_text("".join(lines))

    # -- bring-up and teardown --------------------------------------------------------------

    def up(self) -> None:
        reap_stale()
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key.write_private_key(str(self.identity_file))
        self.identity_file.chmod(0o600)
        authorized = client_key.export_public_key("openssh").decode()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        in_use = _addresses_in_use()
        pid, serial = os.getpid(), next(_serials) % 10  # a process may hold several sets
        for index, name in enumerate(self.names):
            slot = ((pid * 10 + serial) % 8000) * len(self.names) + index
            while _dotted(SUBNET_BASE + slot * 4 + 2) in in_use:
                slot = (slot + 8000 * len(self.names)) % 16384
            in_use.add(_dotted(SUBNET_BASE + slot * 4 + 2))
            base = SUBNET_BASE + slot * 4
            self.hosts[name] = TestHost(
                name=name, netns=f"codeb-{pid}-{serial}-{name}",
                veth_outer=f"cb{pid}{serial}{index}o", veth_inner=f"cb{pid}{serial}{index}i",
                outer_address=_dotted(base + 1), address=_dotted(base + 2), root=self.root / name,
                host_key=asyncssh.generate_private_key("ssh-ed25519"))
        RECORDS.mkdir(parents=True, exist_ok=True)
        self.record = RECORDS / f"{pid}-{serial}.json"
        self.record.write_text(json.dumps({"pid": pid, "root": str(self.root), "hosts": [
            {"name": h.name, "netns": h.netns, "veth_outer": h.veth_outer}
            for h in self.hosts.values()]}))
        for host in self.hosts.values():
            host.root.mkdir()
            self._network(host)
            self._write_host_key(host)
            (host.root / "authorized_keys").write_text(authorized)
            self._start_daemons(host)
        for host in self.hosts.values():
            self._wait_ready(host)
        self.write_known_hosts()

    def _network(self, host: TestHost) -> None:
        _ip("netns", "add", host.netns)
        _ip("link", "add", host.veth_outer, "type", "veth", "peer", "name", host.veth_inner,
            "netns", host.netns)
        _ip("addr", "add", f"{host.outer_address}/30", "dev", host.veth_outer)
        _ip("link", "set", host.veth_outer, "up")
        _ip("-n", host.netns, "addr", "add", f"{host.address}/30", "dev", host.veth_inner)
        _ip("-n", host.netns, "link", "set", host.veth_inner, "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")

    def _write_host_key(self, host: TestHost) -> None:
        path = host.root / "ssh_host_ed25519_key"
        path.unlink(missing_ok=True)
        host.host_key.write_private_key(str(path))
        path.chmod(0o600)

    def _start_daemons(self, host: TestHost) -> None:
        root = host.root
        (root / "sshd_config").write_text(
            f"ListenAddress {host.address}:22\n"
            f"HostKey {root / 'ssh_host_ed25519_key'}\n"
            f"PidFile {root / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "AllowTcpForwarding yes\nAllowStreamLocalForwarding yes\nGatewayPorts no\n"
            "Subsystem sftp internal-sftp\n")
        host.start_sshd()
        (root / "daemon.json").write_text(json.dumps(
            {"deprecated-key-path": str(root / "docker-key.json")}))
        proxy = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
                 "NO_PROXY": "127.0.0.1,localhost"}
        host.spawn("dockerd", [
            "dockerd", "--bridge=none", "--iptables=false", "--ip-masq=false",
            "--data-root", str(root / "docker"), "--exec-root", str(root / "docker-exec"),
            "--pidfile", str(root / "dockerd.pid"), "-H", f"unix://{host.docker_socket}",
            "--config-file", str(root / "daemon.json")],
            env={**os.environ, **proxy})
        (root / "caddy.json").write_text(json.dumps({"admin": {"listen": "127.0.0.1:2019"}}))
        host.spawn("caddy", ["caddy", "run", "--config", str(root / "caddy.json")],
                   env={**os.environ, "XDG_CONFIG_HOME": str(root / "caddy-config"),
                        "XDG_DATA_HOME": str(root / "caddy-data")})
        host.marker_dir.mkdir()

    def _wait_ssh(self, host: TestHost) -> None:
        self._wait(host, "sshd", lambda: _connects(host.address, 22))

    def _wait_ready(self, host: TestHost) -> None:
        self._wait_ssh(host)
        self._wait(host, "dockerd", lambda: _docker_ping(host.docker_socket))
        self._wait(host, "caddy", lambda: self.curl(host.name, CADDY_ADMIN + "/config/")[0] == 200)

    @staticmethod
    def _wait(host: TestHost, what: str, ready) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            proc = host.procs.get(what)
            if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
                raise RuntimeError(f"test host {host.name}: {what} did not start:\n{host.log(what)}")
            time.sleep(0.05)

    def down(self) -> None:
        """Everything this object made, in reverse, whatever state it is in."""
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                self._down(host)
        shutil.rmtree(self.root, ignore_errors=True)
        if self.record is not None:
            self.record.unlink(missing_ok=True)

    def _down(self, host: TestHost) -> None:
        host.stop_sshd()
        with contextlib.suppress(Exception):
            _ip("-n", host.netns, "link", "set", host.veth_inner, "up")  # a stopped link
        _stop(host.procs.pop("caddy", None))
        _stop(host.procs.pop("dockerd", None), timeout=30)
        _remove(host.netns, host.veth_outer, host.root)


def _remove(netns: str, veth_outer: str, root: Path) -> None:
    """A test host's namespace, link and mounts, once its daemons are stopped (or dead)."""
    # What is left in the namespace was started by this host's dockerd (shims, containers).
    left = subprocess.run(["ip", "netns", "pids", netns], capture_output=True,
                          text=True).stdout.split()
    for pid in left:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    prefix = str(root) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True)
    subprocess.run(["ip", "link", "del", veth_outer], capture_output=True)
    subprocess.run(["ip", "netns", "del", netns], capture_output=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale() -> None:
    """Test hosts left by a session that was killed (SIGKILL skips teardown): each session
    records its hosts in RECORDS; a record whose process is gone is torn down here."""
    if not RECORDS.is_dir():
        return
    for record in RECORDS.glob("*.json"):
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if _alive(data["pid"]):
            continue
        for host in data["hosts"]:
            _remove(host["netns"], host["veth_outer"], Path(data["root"]) / host["name"])
        shutil.rmtree(data["root"], ignore_errors=True)
        record.unlink(missing_ok=True)


def _connects(address: str, port: int) -> bool:
    """Whether sshd answers with its banner (a listening socket alone is not enough)."""
    try:
        with socket.create_connection((address, port), timeout=1) as sock:
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def _docker_ping(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1)
            sock.connect(str(path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return b" 200 " in sock.recv(256)
    except OSError:
        return False


@pytest.fixture(scope="session")
def remote_hosts():
    """Two remote test hosts, `web1` and `web2`, for the whole session (see RemoteHosts)."""
    hosts = RemoteHosts()
    try:
        hosts.up()
        yield hosts
    finally:
        hosts.down()
