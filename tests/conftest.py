"""Fixtures over the real services that `scripts/services.sh up` starts (loopback only).

Docker and the image registry are shared; each test session runs its own Caddy (admin and
listener on loopback ports of its own) so tests never disturb the demo's proxy. Every test gets
its own registry root, SQLite file and project-name prefix, and its containers are removed after.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import docker
import httpx
import pytest
import yaml

from codeb_tui.domain.config import Config, parse_config
from codeb_tui.domain import events
from codeb_tui.engine.facade import Engine, local_principal
from tests.remote_hosts import remote_hosts  # noqa: F401  (the fixture: two SSH test hosts)

REPO = Path(__file__).resolve().parent.parent
REGISTRY = os.environ.get("CODEB_REGISTRY_URL", "127.0.0.1:5000")
IMAGE = f"{REGISTRY}/demo/app"


LOCAL = local_principal()
"""The operator at this machine's shell: every test's principal unless it tests access."""


def free_ports(count: int) -> list[int]:
    """Ports the kernel has free now (ephemeral range, far from the slot ranges), so that two
    test sessions on one machine never share a Caddy."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


CADDY_ADMIN_PORT, CADDY_HTTP_PORT = free_ports(2)
PG_DSN = os.environ.get("CODEB_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def image(tag: str) -> str:
    return f"{IMAGE}:{tag}"


def _require_env() -> str:
    host = os.environ.get("DOCKER_HOST")
    if not host:
        pytest.fail("DOCKER_HOST is not set: run the suite with `bash scripts/test.sh`", pytrace=False)
    return host


@pytest.fixture(scope="session")
def docker_host() -> str:
    return _require_env()


@pytest.fixture(scope="session")
def docker_client(docker_host):
    client = docker.DockerClient(base_url=docker_host)
    yield client
    client.close()


MANIFEST_TYPES = ("application/vnd.docker.distribution.manifest.v2+json, "
                  "application/vnd.oci.image.manifest.v1+json")


@pytest.fixture
def pushed(docker_client):
    """push(repository, tag, source_tag="v1") -> reference: the demo image `source_tag` pushed
    to the registry as `{REGISTRY}/{repository}:{tag}`, as a CI build would leave it. What was
    pushed is deleted from the registry afterwards (by digest, in that repository only), so
    test runs do not pile tags up in the demo's image picker."""
    refs: list[tuple[str, str]] = []

    def push(repository: str, tag: str, source_tag: str = "v1") -> str:
        assert repository != "demo/app", "deleting by digest would take the demo's tags too"
        repo = f"{REGISTRY}/{repository}"
        docker_client.images.get(image(source_tag)).tag(repo, tag)
        for line in docker_client.images.push(repo, tag=tag, stream=True, decode=True):
            assert "error" not in line, line
        refs.append((repository, tag))
        return f"{repo}:{tag}"

    yield push
    for repository, tag in refs:
        head = httpx.head(f"http://{REGISTRY}/v2/{repository}/manifests/{tag}",
                          headers={"Accept": MANIFEST_TYPES}, timeout=10, trust_env=False)
        digest = head.headers.get("Docker-Content-Digest")
        if head.status_code == 200 and digest:
            httpx.delete(f"http://{REGISTRY}/v2/{repository}/manifests/{digest}",
                         timeout=10, trust_env=False)
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(f"{REGISTRY}/{repository}:{tag}", force=True)


@pytest.fixture(scope="session")
def caddy(tmp_path_factory):
    """A Caddy of the test session's own, admin and sites on free loopback ports."""
    root = tmp_path_factory.mktemp("caddy")
    config = root / "caddy.json"
    config.write_text(f'{{"admin": {{"listen": "127.0.0.1:{CADDY_ADMIN_PORT}"}}}}')
    env = {**os.environ, "XDG_CONFIG_HOME": str(root / "config"), "XDG_DATA_HOME": str(root / "data")}
    log = open(root / "caddy.log", "w")
    proc = subprocess.Popen([shutil.which("caddy") or "/usr/bin/caddy", "run", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 15
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{CADDY_ADMIN_PORT}/config/", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"caddy did not start: {(root / 'caddy.log').read_text()[-2000:]}")
        time.sleep(0.1)
    yield {"admin": f"http://127.0.0.1:{CADDY_ADMIN_PORT}", "listen": f"127.0.0.1:{CADDY_HTTP_PORT}"}
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


_counter = itertools.count()


@pytest.fixture
def prefix(docker_client):
    """A project-name prefix of this test's own; its containers are removed afterwards."""
    value = f"t{uuid.uuid4().hex[:5]}{next(_counter)}"
    yield value
    for container in docker_client.containers.list(all=True, filters={"label": "codeb.project"},
                                                   ignore_removed=True):
        if container.labels.get("codeb.project", "").startswith(value):
            try:
                container.remove(force=True)
            except docker.errors.NotFound:  # removed meanwhile (the test's own clean-up)
                pass


def config_dict(tmp_path: Path, caddy_info: dict, docker_host: str, **overrides) -> dict:
    data = {
        "registry": {"root": str(tmp_path / "registry")},
        "environments": {
            "production": {"domain": "{project}.prod.test", "preview_domain": "{slot}.{project}.prod-preview.test"},
            "staging": {"domain": "{project}.staging.test", "preview_domain": "{slot}.{project}.staging-preview.test"},
            "preview": {"domain": "{project}.preview.test", "preview_domain": "{slot}.{project}.pr.test"},
        },
        "docker": {"endpoint": docker_host},
        "caddy": {"admin": caddy_info["admin"], "listen": caddy_info["listen"],
                  "config_dir": str(tmp_path / "caddy")},
        "health": {"timeout": 15, "interval": 0.1, "request_timeout": 2},
        "database": {"sqlite_path": str(tmp_path / "codeb.sqlite3")},
    }
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            data.setdefault(section, {})[name] = value
        else:
            data[section] = value
    return data


@pytest.fixture
def make_config(tmp_path, caddy, docker_host):
    def make(**overrides) -> Config:
        return parse_config(config_dict(tmp_path, caddy, docker_host, **overrides))

    return make


@pytest.fixture
def config_file(tmp_path, caddy, docker_host):
    def write(**overrides) -> Path:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config_dict(tmp_path, caddy, docker_host, **overrides)))
        return path

    return write


@pytest.fixture
async def engine(make_config):
    engine = Engine(make_config())
    yield engine
    await engine.aclose()


async def collect(stream) -> list[events.Event]:
    return [event async for event in stream]


def terminal(evs: list[events.Event]) -> events.Event:
    assert isinstance(evs[-1], (events.Finished, events.Failed)), evs[-1]
    return evs[-1]


def ok(evs: list[events.Event]) -> events.Finished:
    """The operation's Finished event; fails with its error otherwise."""
    last = terminal(evs)
    assert isinstance(last, events.Finished), getattr(last, "error", last)
    return last


def through_caddy(host: str, path: str = "/") -> httpx.Response:
    """A request through the session's Caddy with the site's Host header (never DNS)."""
    return httpx.get(f"http://127.0.0.1:{CADDY_HTTP_PORT}{path}", headers={"Host": host},
                     timeout=5, trust_env=False)


def run_cli(*args: str, config: Path | None = None, env: dict | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "codeb_tui.cli", *args]
    if config is not None:
        cmd += ["--config", str(config)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=REPO)


# --- the secondary store on both backends (shared by test_store.py and test_access.py) ---------
# PostgreSQL tests use a fresh schema (codeb_test_<random>) dropped afterwards; they FAIL when
# PostgreSQL is unreachable unless CODEB_SKIP_PG=1. Server: CODEB_TEST_PG_DSN (default
# postgresql://postgres@127.0.0.1:5432/test).

STORE_PG_DSN = os.environ.get("CODEB_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
STORE_SKIP_PG = os.environ.get("CODEB_SKIP_PG") == "1"
STORE_BACKENDS = ["sqlite", "postgresql"]


async def drop_pg_schema(schema: str) -> None:
    import asyncpg

    try:
        conn = await asyncpg.connect(STORE_PG_DSN, timeout=5)
    except Exception:
        return  # the test itself already failed on the unreachable server
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
def pg_schema():
    if STORE_SKIP_PG:
        pytest.skip("CODEB_SKIP_PG=1")
    return "codeb_test_" + uuid.uuid4().hex[:12]


@pytest.fixture
async def make_store(request, tmp_path):
    """A factory of unconnected stores on one database (request.param: "sqlite" or
    "postgresql"); all are closed (and the PG schema dropped) afterwards."""
    from codeb_tui.store import open_store

    backend = request.param
    stores = []
    schema = request.getfixturevalue("pg_schema") if backend == "postgresql" else None
    sqlite_path = tmp_path / "nested" / "dir" / "codeb.sqlite3"

    def make():
        dsn = STORE_PG_DSN if backend == "postgresql" else None
        store = open_store(dsn, sqlite_path, 3.0, schema=schema or "public")
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()
    if schema is not None:
        await drop_pg_schema(schema)


@pytest.fixture
async def store(make_store):
    """A connected, migrated store (parametrise `make_store` indirectly to pick the backend)."""
    s = make_store()
    await s.connect()
    await s.migrate()
    return s


# --- another codeb process holding locks, and the event loop's worst stall --------------------

HOLD_LOCKS = """
import asyncio, sys
from contextlib import AsyncExitStack
from pathlib import Path
from codeb_tui.registry.locks import file_lock

async def hold(root, seconds, names):
    async with AsyncExitStack() as stack:
        for name in names:
            await stack.enter_async_context(file_lock(
                Path(root) / "locks" / f"{name}.lock", f"deploy by a colleague ({name})", name,
                actor="colleague"))
        print("held", flush=True)
        await asyncio.sleep(seconds)

asyncio.run(hold(sys.argv[1], float(sys.argv[2]), sys.argv[3:]))
"""


@contextlib.contextmanager
def locks_held_elsewhere(registry_root: Path, seconds: float, *names: str):
    """Another process holds these registry locks (e.g. "shop-prod", "proxy") for `seconds`."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCKS, str(registry_root), str(seconds),
                             *names], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


class LoopStalls:
    """Ticks every 5 ms on the running loop and keeps the longest time the loop was kept from
    ticking by its own work: the gap between ticks less the time the thread waited for a CPU
    (/proc/thread-self/schedstat), so that a machine busy with other processes is not taken
    for a blocked event loop."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.gaps: list[tuple[float, float]] = []
        """(seconds since the start, stall) of every stall over 50 ms, to find their source."""
        self._task: asyncio.Task | None = None

    @staticmethod
    def _runqueue_wait() -> float:
        try:
            with open("/proc/thread-self/schedstat") as stat:
                return int(stat.read().split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0

    async def _tick(self) -> None:
        start = last = time.perf_counter()
        waited = self._runqueue_wait()
        while True:
            await asyncio.sleep(0.005)
            now, now_waited = time.perf_counter(), self._runqueue_wait()
            stall = now - last - 0.005 - (now_waited - waited)
            if stall > 0.05:
                self.gaps.append((round(last - start, 3), round(stall, 3)))
            self.worst = max(self.worst, stall)
            last, waited = now, now_waited

    def __enter__(self) -> "LoopStalls":
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


class TcpGate:
    """A loopback TCP forwarder to a real server that a test can close (an outage: connections
    cut, new ones refused) and open again on the same port."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_ports(1)[0]
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._writers -= {writer, up_writer}


@pytest.fixture
async def fresh_pg_database():
    """A database of this test's own on the local PostgreSQL, dropped afterwards."""
    import asyncpg

    name = f"codeb_t_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(STORE_PG_DSN, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield STORE_PG_DSN.rsplit("/", 1)[0] + "/" + name
    admin = await asyncpg.connect(STORE_PG_DSN, timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
