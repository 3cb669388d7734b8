"""A host reached over SSH (asyncssh): the `Host` interface of infra/host.py, so the engine
drives another machine exactly as it drives this one.

One connection per host, opened on first use, with keepalives, and opened again by the next
call after it dropped. Everything goes through it:
- Docker: the host's socket forwarded to a unix socket in a 0700 directory of ours, which the
  same DockerEngine (docker SDK, unchanged) talks to.
- Caddy's admin API: a local TCP port forwarded to `caddy_admin` as the host sees it; requests
  carry that address as their Host header (Caddy's admin API answers 403 to any other).
- Health checks: one direct-tcpip channel per check to bind_address:port on the host (no
  listener per slot port to keep in step with deploys).
- Switch markers, and listening ports (/proc/net/tcp and tcp6 on the host): SFTP.
- The image registry (`forward_registry`): offered on the host at the address image references
  name, through a remote port forward, for a host that cannot reach it.

Host keys are checked against `known_hosts`, strictly: an unknown or changed key refuses the
connection with one line naming the host and both fingerprints. Every network step has a
timeout (connect_timeout, request_timeout); a request that times out closes the connection,
so whatever else waits on it fails at once and the next call reconnects: a host that is down
or hangs fails fast and holds up no other host.

A connection belongs to the event loop it was opened on; used from another loop (the CLI, the
console and tests each run their own), the host opens a new one there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncssh

from codeb_tui.domain.config import Config, HostConfig
from codeb_tui.domain.errors import HostKeyRefused, HostUnreachable, OperationFailed
from codeb_tui.infra.caddy import CaddyAdmin
from codeb_tui.infra.docker_engine import DockerEngine
from codeb_tui.infra.health import BATCH_OPEN, MAX_BODY, HealthChecker, HealthResult
from codeb_tui.infra.http1 import BodyTooLarge, RemoteProtocolError, Response, ResponseParser
from codeb_tui.infra.host import Host, parse_proc_net_tcp

T = TypeVar("T")

KEEPALIVE_COUNT = 2
"""Keepalives left unanswered before the connection counts as dropped (one every
request_timeout)."""


CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
           "aes256-ctr", "aes192-ctr", "aes128-ctr")
"""asyncssh's own list, AES-GCM first."""


class SSHHost(Host):
    def __init__(self, name: str, spec: HostConfig, config: Config) -> None:
        self.name = name
        self.spec = spec
        self.target = spec.target
        self._conn: asyncssh.SSHClientConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None  # opening the connection
        self._sftp_lock: asyncio.Lock | None = None  # starting its SFTP session
        self._sftp: asyncssh.SFTPClient | None = None
        self._sftp_conn: asyncssh.SSHClientConnection | None = None  # the one _sftp belongs to
        self._listeners: list[asyncssh.SSHListener] = []
        self.last_connect_ms: float | None = None
        """How long the last connection took to open (`codeb host check`)."""
        self.registry_forward_error: str | None = None
        """Why the registry could not be offered on the host (another connection may already
        offer it there), None when it is or none was asked for."""
        # 0700 (mkdtemp): whoever can open the forwarded socket drives the host's Docker.
        self._dir = Path(tempfile.mkdtemp(prefix=f"codeb-{name}-"))
        self._docker_socket = self._dir / "docker.sock"
        admin = urlsplit(spec.caddy_admin)
        self._caddy_dest = (admin.hostname or "127.0.0.1",
                            admin.port or (443 if admin.scheme == "https" else 80))
        self._caddy_port = _free_port()
        self.docker = _ForwardedDocker(self, f"unix://{self._docker_socket}", spec.bind_address,
                                       config.docker.stop_timeout)
        self.caddy = self._caddy_admin()
        self.health = _ChannelHealth(self, spec.bind_address, config.health.path,
                                     config.health.request_timeout)

    def _caddy_admin(self) -> _ForwardedCaddy:
        admin = urlsplit(self.spec.caddy_admin)
        return _ForwardedCaddy(self, f"{admin.scheme}://127.0.0.1:{self._caddy_port}{admin.path}",
                               host_header=admin.netloc, timeout=self.spec.request_timeout)

    # -- the connection ------------------------------------------------------------------------

    async def connection(self) -> asyncssh.SSHClientConnection:
        """The open connection, opened (again) if there is none on this event loop."""
        loop = asyncio.get_running_loop()
        conn = self._conn
        if conn is not None and self._loop is loop and not conn.is_closed():
            return conn
        if self._loop is not loop:
            self._abandon()
            self._loop, self._lock, self._sftp_lock = loop, asyncio.Lock(), asyncio.Lock()
        assert self._lock is not None
        async with self._lock:
            if self._conn is None or self._conn.is_closed():
                await self._open()
            assert self._conn is not None
            return self._conn

    async def _open(self) -> None:
        self._drop()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.spec.connect_timeout):
                conn = await asyncssh.connect(**self._connect_options())
        except asyncssh.HostKeyNotVerifiable:
            raise await self._key_refused() from None
        except TimeoutError:
            raise HostUnreachable(
                self.name, f"{self.target}: no answer within {self.spec.connect_timeout:g} s") from None
        except asyncssh.PermissionDenied:
            raise HostUnreachable(self.name, f"{self.target}: the key was refused "
                                             f"({self.spec.identity_file or 'agent'})") from None
        except (OSError, asyncssh.Error) as exc:
            raise HostUnreachable(self.name, f"{self.target}: {_reason(exc)}") from None
        self.last_connect_ms = (time.perf_counter() - started) * 1000
        try:
            async with asyncio.timeout(self.spec.request_timeout):
                await self._forward(conn)
        except BaseException as exc:
            conn.abort()
            self._close_listeners()
            if isinstance(exc, TimeoutError):
                raise HostUnreachable(self.name, f"{self.target}: setting up forwards timed out") from None
            if isinstance(exc, (OSError, asyncssh.Error)):
                raise HostUnreachable(self.name, f"{self.target}: {_reason(exc)}") from None
            raise
        self._conn = conn

    def _connect_options(self) -> dict[str, Any]:
        spec = self.spec
        return dict(
            host=spec.address, port=spec.port, username=spec.user,
            # Strict: a missing file trusts nothing (never None, which would trust anything).
            known_hosts=(str(spec.known_hosts) if Path(spec.known_hosts).exists()
                         else asyncssh.import_known_hosts("")),
            client_keys=[str(spec.identity_file)] if spec.identity_file else [],
            agent_path=() if spec.agent else None,  # (): $SSH_AUTH_SOCK
            config=None,  # ~/.ssh/config does not change what the config file says
            password=None, password_auth=False, kbdint_auth=False,
            preferred_auth="publickey",
            # AES-GCM first (OpenSSL's, with the CPU's AES instructions): ~15-35 % less of
            # codeb's CPU per request through the connection than chacha20-poly1305, asyncssh's
            # first choice (measured per docker inspect, Caddy admin GET and port check).
            encryption_algs=CIPHERS,
            keepalive_interval=spec.request_timeout, keepalive_count_max=KEEPALIVE_COUNT,
            connect_timeout=spec.connect_timeout,
        )

    async def _forward(self, conn: asyncssh.SSHClientConnection) -> None:
        self._docker_socket.unlink(missing_ok=True)
        self._listeners.append(
            await conn.forward_local_path(str(self._docker_socket), str(self.spec.docker_socket)))
        try:
            caddy = await conn.forward_local_port("127.0.0.1", self._caddy_port, *self._caddy_dest)
        except OSError:
            # Our port was taken meanwhile: another one, and the admin client follows it.
            caddy = await conn.forward_local_port("127.0.0.1", 0, *self._caddy_dest)
            self._caddy_port = caddy.get_port()
            self.caddy.close()  # its kept connections went to the old port
            self.caddy = self._caddy_admin()
        self._listeners.append(caddy)
        await self._forward_registry(conn)

    async def _forward_registry(self, conn: asyncssh.SSHClientConnection) -> None:
        self.registry_forward_error = None
        if self.spec.forward_registry:
            address, _, port = self.spec.forward_registry.rpartition(":")
            try:
                self._listeners.append(
                    await conn.forward_remote_port(address, int(port), address, int(port)))
            except asyncssh.ChannelListenError as exc:
                # Another connection (another codeb process, or the console next to this CLI)
                # offers it there already; ensure_registry() tries again before each pull.
                self.registry_forward_error = _reason(exc)

    async def ensure_registry(self) -> None:
        """Before a pull: the registry offered on the host by this connection, if another's
        offer was in the way when it opened (that one may be gone by now)."""
        await self.connection()
        if self.registry_forward_error is not None:
            await self.request(self._forward_registry, "registry forward")

    async def _key_refused(self) -> HostKeyRefused:
        """The one line for a host key known_hosts does not vouch for: both fingerprints."""
        offer = await server_key(self.spec)
        known = known_fingerprints(self.spec)
        path = self.spec.known_hosts
        offered = offer[0] if offer else "(could not be read)"
        if not known:
            return HostKeyRefused(
                self.name, f"Host {self.name} ({self.target}): unknown host key {offered} "
                f"(known_hosts {path} has none for it); check it, then `codeb host trust "
                f"{self.name}`", offer[0] if offer else None)
        return HostKeyRefused(
            self.name, f"Host {self.name} ({self.target}): host key changed: known "
            f"{', '.join(known)}, offered {offered}; refusing to connect (if the host was "
            f"reinstalled, check it, then `codeb host trust {self.name}`)",
            offer[0] if offer else None)

    async def request(self, fn: Callable[[asyncssh.SSHClientConnection], Awaitable[T]],
                      what: str) -> T:
        """`fn(connection)` within request_timeout; a failure is HostUnreachable naming the
        host, and a timeout closes the connection (whatever else waits on it fails at once)."""
        conn = await self.connection()
        try:
            async with asyncio.timeout(self.spec.request_timeout):
                return await fn(conn)
        except TimeoutError:
            conn.abort()
            raise HostUnreachable(
                self.name, f"{what}: no answer within {self.spec.request_timeout:g} s") from None
        except (OSError, asyncssh.Error) as exc:
            if conn.is_closed():
                raise HostUnreachable(self.name, f"{what}: {_reason(exc)}") from None
            raise OperationFailed(f"Host {self.name}: {what}: {_reason(exc)}") from None

    async def _sftp_client(self, what: str) -> asyncssh.SFTPClient:
        """One SFTP session per connection, started by the first call that needs it (sshd
        allows few sessions per connection: 10 by default; calls at once share this one)."""
        conn = await self.connection()
        if self._sftp is not None and self._sftp_conn is conn:
            return self._sftp
        assert self._sftp_lock is not None
        async with self._sftp_lock:
            if self._sftp is None or self._sftp_conn is not conn:
                self._sftp = await self.request(lambda c: c.start_sftp_client(), what)
                self._sftp_conn = conn
            return self._sftp

    def _close_listeners(self) -> None:
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                listener.close()
        self._listeners = []

    def _drop(self) -> None:
        """Forget the connection (closed, or about to be replaced)."""
        self._close_listeners()
        if self._sftp is not None:
            with contextlib.suppress(Exception):
                self._sftp.exit()
        self._sftp = self._sftp_conn = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.abort()
        self._conn = None

    def _abandon(self) -> None:
        """The connection of another (maybe closed) event loop: dropped without awaiting."""
        with contextlib.suppress(Exception):
            self._drop()
        self._conn = None
        self._listeners = []

    # -- the Host interface --------------------------------------------------------------------

    async def listening_ports(self) -> set[int]:
        # Read over SFTP, not with `cat` in an exec session: ~9 ms against ~250-350 ms (a
        # session and a process on the host each time; bench/ssh_host.py).
        sftp = await self._sftp_client("listening ports")

        async def read(_: Any) -> set[int]:
            ports: set[int] = set()
            for name in ("tcp", "tcp6"):
                chunks = []
                try:
                    # /proc files say they are empty: read until the end, not to their size.
                    async with sftp.open(f"/proc/net/{name}", "rb") as table:
                        while chunk := await table.read(65536):
                            chunks.append(chunk)
                except asyncssh.SFTPNoSuchFile:  # no IPv6 on the host
                    continue
                ports |= parse_proc_net_tcp(b"".join(chunks).decode("ascii", "replace"))
            return ports

        return await self.request(read, "listening ports")

    async def list_files(self, directory: Path) -> set[str]:
        sftp = await self._sftp_client(f"list {directory}")

        async def names(_: Any) -> set[str]:
            try:
                entries = await sftp.readdir(str(directory))
            except asyncssh.SFTPNoSuchFile:
                return set()
            return {entry.filename for entry in entries if entry.attrs.type == asyncssh.FILEXFER_TYPE_REGULAR}

        return await self.request(names, f"list {directory}")

    async def create_file(self, path: Path) -> None:
        sftp = await self._sftp_client(f"create {path}")

        async def create(_: Any) -> None:
            try:
                await (await sftp.open(str(path), "a")).close()
            except asyncssh.SFTPNoSuchFile:  # the first marker: its directory too (round trips)
                await sftp.makedirs(str(path.parent), exist_ok=True)
                await (await sftp.open(str(path), "a")).close()

        await self.request(create, f"create {path}")

    async def remove_file(self, path: Path) -> None:
        sftp = await self._sftp_client(f"remove {path}")

        async def remove(_: Any) -> None:
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                await sftp.remove(str(path))

        await self.request(remove, f"remove {path}")

    async def round_trip(self) -> float:
        sftp = await self._sftp_client("round trip")
        started = time.perf_counter()
        await self.request(lambda _: sftp.stat("/"), "round trip")
        return (time.perf_counter() - started) * 1000

    async def caddy_version(self) -> str | None:
        try:
            result = await self.request(lambda c: c.run("caddy version", check=False), "caddy version")
        except HostUnreachable:
            return None
        out = str(result.stdout or "").split()
        return out[0] if result.exit_status == 0 and out else None

    async def aclose(self) -> None:
        conn = self._conn if self._loop is _running_loop() else None
        self._drop()
        if conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.spec.request_timeout):
                    await conn.wait_closed()
        await super().aclose()
        shutil.rmtree(self._dir, ignore_errors=True)


class _ForwardedDocker(DockerEngine):
    """The docker SDK on the forwarded socket; each call first makes sure the connection (and
    so the forward) is up, and a call that outlasts its bound closes the connection: a hung
    host must not hold worker threads for the SDK's own 120 s timeout."""

    def __init__(self, host: SSHHost, endpoint: str, bind_address: str, stop_timeout: int):
        super().__init__(endpoint, bind_address, stop_timeout)
        self._ssh = host
        # A stop waits up to stop_timeout on the host before it answers.
        self._bound = host.spec.request_timeout + stop_timeout
        # Every call through _call (and its bound), also the list and inspect that a local
        # engine asks on the socket directly (docker_engine._api_get).
        self._api_address = None

    async def _call(self, fn):
        conn = await self._ssh.connection()
        try:
            async with asyncio.timeout(self._bound):
                return await super()._call(fn)
        except TimeoutError:
            conn.abort()
            raise HostUnreachable(self._ssh.name,
                                  f"Docker: no answer within {self._bound:g} s") from None


def _connected_first(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(method)
    async def call(self: Any, *args: Any, **kwargs: Any) -> T:
        await self._ssh.connection()
        return await method(self, *args, **kwargs)

    return call


def _registry_first(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(method)
    async def call(self: _ForwardedDocker, *args: Any, **kwargs: Any) -> T:
        await self._ssh.ensure_registry()
        return await method(self, *args, **kwargs)

    return call


class _ForwardedCaddy(CaddyAdmin):
    """Caddy's admin API through the local forward, which the connection must have first."""

    def __init__(self, host: SSHHost, admin_url: str, **options: Any) -> None:
        super().__init__(admin_url, **options)
        self._ssh = host

    async def ping(self) -> bool:
        try:
            await self._ssh.connection()
        except OperationFailed:  # unreachable, or its key refused
            return False
        return await super().ping()


# Every public call of Docker and of Caddy's admin API (also those that reach the socket
# without _call, e.g. a pull, which takes as long as it takes: keepalives watch it) first makes
# sure the forward is there; ping stays a yes or no.
for _name, _method in inspect.getmembers(DockerEngine, inspect.iscoroutinefunction):
    if not _name.startswith("_") and _name != "ping":
        setattr(_ForwardedDocker, _name,
                (_registry_first if _name == "pull" else _connected_first)(_method))
for _name, _method in inspect.getmembers(CaddyAdmin, inspect.iscoroutinefunction):
    if not _name.startswith("_") and _name != "ping":
        setattr(_ForwardedCaddy, _name, _connected_first(_method))


class _ChannelHealth(HealthChecker):
    """GET <path> on bind_address:port of the host, over a direct-tcpip channel of the
    connection (one per check; opening one is a single round trip on the open connection).
    An unreachable host is HostUnreachable, not an unhealthy slot."""

    def __init__(self, host: SSHHost, bind_address: str, path: str, request_timeout: float):
        super().__init__(bind_address, path, request_timeout)
        self._ssh = host
        self._request_host = f"[{bind_address}]" if ":" in bind_address else bind_address

    async def answers(self, port: int) -> bool:
        conn = await self._ssh.connection()
        try:
            async with asyncio.timeout(self.request_timeout):
                _, writer = await conn.open_connection(self.host, port)
        except TimeoutError:
            if conn.is_closed():
                raise HostUnreachable(self._ssh.name, "port check: connection lost") from None
            return True  # it holds the port but accepts nothing (a full backlog)
        except (OSError, asyncssh.Error):
            if conn.is_closed():
                raise HostUnreachable(self._ssh.name, "port check: connection lost") from None
            return False  # the host's connect was refused: nothing listens there
        writer.close()
        return True

    async def check_many(self, ports: Sequence[int], limit: int = BATCH_OPEN
                         ) -> list[HealthResult]:
        """check() of each port, `limit` channels at a time (the base class's epoll batch is
        for sockets of this machine; these bytes come over the SSH connection)."""
        gate = asyncio.Semaphore(max(1, limit))

        async def one(port: int) -> HealthResult:
            async with gate:
                return await self.check(port)

        return list(await asyncio.gather(*(one(port) for port in ports)))

    async def check(self, port: int) -> HealthResult:
        conn = await self._ssh.connection()
        started = time.perf_counter()
        writer = None
        try:
            async with asyncio.timeout(self.request_timeout):
                reader, writer = await conn.open_connection(self.host, port)
                writer.write((f"GET {self.path} HTTP/1.1\r\nHost: {self._request_host}:{port}\r\n"
                              "User-Agent: codeb-health\r\nConnection: close\r\n\r\n").encode("latin-1"))
                answer = await _read_answer(reader)
        except TimeoutError:
            if conn.is_closed():
                raise HostUnreachable(self._ssh.name, "health check: connection lost") from None
            return HealthResult(False, "timed out", None)
        except asyncssh.ChannelOpenError:
            if conn.is_closed():
                raise HostUnreachable(self._ssh.name, "health check: connection lost") from None
            return HealthResult(False, "connection refused", None)
        except (OSError, EOFError, asyncssh.Error) as exc:  # e.g. closed mid-answer
            if conn.is_closed():
                raise HostUnreachable(self._ssh.name, f"health check: {_reason(exc)}") from None
            return HealthResult(False, type(exc).__name__, None)
        except BodyTooLarge:
            return HealthResult(False, "body too large", None)
        except RemoteProtocolError as exc:
            return HealthResult(False, type(exc).__name__, None)
        finally:
            if writer is not None:
                writer.close()
        latency = (time.perf_counter() - started) * 1000
        return HealthResult(200 <= answer.status < 400, f"HTTP {answer.status}", latency)


async def _read_answer(reader: asyncssh.SSHReader) -> Response:
    """http1's parser fed from an SSH channel; IncompleteReadError when it closes mid-answer."""
    parser = ResponseParser(MAX_BODY, keep_body=False)
    buf = bytearray()
    while (answer := parser.feed(buf)) is None:
        data = await reader.read(65536)
        if not data:
            return parser.eof(buf)
        buf += data
    return answer


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _reason(exc: BaseException) -> str:
    """A short reason: "connection refused", "no route to host", the SSH error's text."""
    if isinstance(exc, asyncssh.Error):
        text = exc.reason or type(exc).__name__
    elif isinstance(exc, OSError) and exc.errno:
        text = os.strerror(exc.errno)  # asyncio's own text adds the address we already name
    else:
        text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:1].lower() + text.splitlines()[0][1:] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Host keys: what `codeb host trust` shows and records


def known_hosts_pattern(spec: HostConfig) -> str:
    """How known_hosts names the host: `address`, or `[address]:port` off port 22."""
    return spec.address if spec.port == 22 else f"[{spec.address}]:{spec.port}"


def known_keys(spec: HostConfig) -> list[asyncssh.SSHKey]:
    """The keys known_hosts trusts for the host (none when the file is missing)."""
    try:
        known = asyncssh.read_known_hosts(str(spec.known_hosts))
    except (OSError, ValueError):
        return []
    keys = known.match(spec.address, spec.address, spec.port)[0]
    # One line may match twice (as host name and as address): each key once.
    return list({key.public_data: key for key in keys}.values())


def known_fingerprints(spec: HostConfig) -> list[str]:
    return [key.get_fingerprint("sha256") for key in known_keys(spec)]


async def server_key(spec: HostConfig) -> tuple[str, str] | None:
    """(fingerprint, known_hosts line) of the key the host offers, read without logging in;
    of the algorithm known_hosts has for it when it has one (so the two compare). None when
    the host cannot be reached."""
    known = known_keys(spec)
    algorithms = [key.get_algorithm() for key in known] or ()
    try:
        async with asyncio.timeout(spec.connect_timeout):
            try:
                key = await asyncssh.get_server_host_key(
                    spec.address, spec.port, server_host_key_algs=algorithms, config=None)
            except asyncssh.KeyExchangeFailed:  # the host no longer has a key of that kind
                key = await asyncssh.get_server_host_key(spec.address, spec.port, config=None)
    except (OSError, TimeoutError, asyncssh.Error):
        return None
    if key is None:
        return None
    line = f"{known_hosts_pattern(spec)} {key.export_public_key('openssh').decode().strip()}"
    return key.get_fingerprint("sha256"), line


async def fetch_server_key(name: str, spec: HostConfig) -> tuple[str, str]:
    """(fingerprint, line) of the host's key; HostUnreachable when it does not answer."""
    offer = await server_key(spec)
    if offer is None:
        # Once more for the reason (server_key keeps its errors quiet for _key_refused).
        try:
            async with asyncio.timeout(spec.connect_timeout):
                await asyncssh.get_server_host_key(spec.address, spec.port, config=None)
        except TimeoutError:
            raise HostUnreachable(name, f"{spec.target}: no answer within "
                                        f"{spec.connect_timeout:g} s") from None
        except (OSError, asyncssh.Error) as exc:
            raise HostUnreachable(name, f"{spec.target}: {_reason(exc)}") from None
        raise HostUnreachable(name, f"{spec.target}: offered no host key")
    return offer


def record_host_key(spec: HostConfig, line: str) -> None:
    """Write `line` into known_hosts in place of the lines that name this host (a changed key
    replaces the old one), atomically; the file and its folder are made if missing."""
    path = Path(spec.known_hosts)
    pattern = known_hosts_pattern(spec)
    try:
        lines = path.read_text().splitlines(keepends=True)
    except FileNotFoundError:
        lines = []
    kept = [old for old in lines
            if not (old.split() and pattern in old.split()[0].split(","))]
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.codeb-tmp")
    temporary.write_text("".join(kept) + line + "\n")
    temporary.replace(path)
