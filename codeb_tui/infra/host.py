"""One interface for everything the engine does on a host: Docker, the proxy's admin API, HTTP
health checks and the sockets listening there. `LocalHost` is this machine; a host reached over
SSH is a second implementation of the same class, not a rewrite of the engine."""

from __future__ import annotations

import abc
import asyncio
import os
import socket
import struct
import time
from pathlib import Path

from codeb_tui.domain.config import Config
from codeb_tui.infra.caddy import CaddyAdmin
from codeb_tui.infra.docker_engine import DockerEngine
from codeb_tui.infra.health import HealthChecker

_LISTEN_STATE = "0A"


def parse_proc_net_tcp(text: str) -> set[int]:
    """Ports in LISTEN state from the text of /proc/net/tcp or /proc/net/tcp6."""
    ports = set()
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) > 3 and parts[3] == _LISTEN_STATE:
            ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_DUMP_REQUEST = 0x1 | 0x300  # NLM_F_REQUEST | NLM_F_DUMP
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_TCP_LISTEN = 10


def _sock_diag_listening_ports() -> set[int]:
    """Ports in LISTEN state, asked of the kernel over netlink (sock_diag, as `ss -ltn`).
    Asked for listening sockets only, the kernel walks its listening table alone: about a
    millisecond, where /proc/net/tcp walks every socket (tens of ms with many TIME_WAIT ones,
    which the health checks leave behind). OSError where netlink is not allowed."""
    ports: set[int] = set()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4) as nl:  # NETLINK_SOCK_DIAG
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
            # nlmsghdr, then inet_diag_req_v2: family, protocol, ext, pad, states, a zero sockid.
            request = struct.pack("=BBBBI48x", family, socket.IPPROTO_TCP, 0, 0, 1 << _TCP_LISTEN)
            nl.send(struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY,
                                _NLM_F_DUMP_REQUEST, seq, 0) + request)
            done = False
            while not done:
                data = nl.recv(65536)
                offset = 0
                while offset + 16 <= len(data):
                    length, kind = struct.unpack_from("=IH", data, offset)
                    if kind == _NLMSG_DONE:
                        done = True
                        break
                    if kind == _NLMSG_ERROR:
                        errno_ = -struct.unpack_from("=i", data, offset + 16)[0]
                        raise OSError(errno_, f"sock_diag: {os.strerror(errno_)}")
                    # inet_diag_msg: family, state, timer, retrans, then the sockid (sport first).
                    ports.add(struct.unpack_from("!H", data, offset + 16 + 4)[0])
                    offset += (length + 3) & ~3
    return ports


def _read_listening_ports() -> set[int]:
    ports: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            ports |= parse_proc_net_tcp(Path(f"/proc/net/{name}").read_text())
        except OSError:
            continue
    return ports


class Host(abc.ABC):
    name: str
    target: str = "this machine"
    """Where the host is, as `codeb host list` shows it (user@address:port for SSH hosts)."""
    docker: DockerEngine
    caddy: CaddyAdmin
    health: HealthChecker

    async def round_trip(self) -> float:
        """Milliseconds of one request and its answer on the host (`codeb host check`)."""
        # A stat of "/" never blocks on this machine: no thread (whose start-up would be
        # the figure).
        started = time.perf_counter()
        os.stat("/")
        return (time.perf_counter() - started) * 1000

    async def caddy_version(self) -> str | None:
        """`caddy version` on the host (the admin API does not say), None when it fails."""
        try:
            proc = await asyncio.create_subprocess_exec(
                "caddy", "version", stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL)
        except OSError:
            return None
        try:
            async with asyncio.timeout(5):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return None
        return out.decode(errors="replace").split()[0] if proc.returncode == 0 and out else None

    @abc.abstractmethod
    async def listening_ports(self) -> set[int]:
        """TCP ports some program listens on, on this host (any address)."""

    @abc.abstractmethod
    async def list_files(self, directory: Path) -> set[str]:
        """Names of the files in `directory` (empty when it does not exist)."""

    @abc.abstractmethod
    async def create_file(self, path: Path) -> None:
        """Create an empty file (the proxy's switch markers), parents included."""

    @abc.abstractmethod
    async def remove_file(self, path: Path) -> None:
        """Remove a file; a missing one is fine."""

    async def aclose(self) -> None:
        await self.health.aclose()
        self.caddy.close()
        self.docker.close()


class LocalHost(Host):
    def __init__(self, config: Config) -> None:
        self.name = "local"
        self.docker = DockerEngine(
            config.docker.endpoint, config.docker.bind_address, config.docker.stop_timeout
        )
        self.caddy = CaddyAdmin(config.caddy.admin)
        self.health = HealthChecker(
            config.docker.bind_address, config.health.path, config.health.request_timeout
        )

    async def list_files(self, directory: Path) -> set[str]:
        try:
            return {entry.name for entry in os.scandir(directory) if entry.is_file()}
        except FileNotFoundError:
            return set()

    async def create_file(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))

    async def remove_file(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    async def listening_ports(self) -> set[int]:
        try:
            return _sock_diag_listening_ports()
        except OSError:
            # In a thread: the kernel writes a line per socket, TIME_WAIT ones of the health
            # checks included, and that took 455 ms on a loaded machine (a stall of the loop).
            return await asyncio.to_thread(_read_listening_ports)
