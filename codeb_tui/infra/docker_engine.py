"""The Docker engine, through the docker SDK.

The SDK blocks, so every call runs in a worker thread (`asyncio.to_thread`); nothing here ever
blocks the event loop the console draws on.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlencode

from codeb_tui.domain.errors import ImageNotFound, OperationFailed
from codeb_tui.infra import http1

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

T = TypeVar("T")

LABEL_PROJECT = "codeb.project"
LABEL_ENVIRONMENT = "codeb.environment"
LABEL_SLOT = "codeb.slot"
LABEL_PORT = "codeb.port"
LABEL_IMAGE = "codeb.image"
LABEL_INSTALLATION = "codeb.installation"
"""Which codeb installation (registry) made the container: several may share one Docker engine,
and one never touches another's containers."""


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    status: str  # created | running | exited | ...
    health: str | None  # starting | healthy | unhealthy | None (no HEALTHCHECK)
    exit_code: int | None
    labels: dict[str, str]
    image: str
    restart_count: int = 0

    @property
    def port(self) -> int | None:
        value = self.labels.get(LABEL_PORT, "")
        return int(value) if value.isdigit() else None


def _info(container: Container) -> ContainerInfo:
    return _inspected(container.attrs)


def _inspected(attrs: dict) -> ContainerInfo:
    """A container as GET /containers/<id>/json describes it (the SDK's Container.attrs)."""
    state = attrs.get("State") or {}
    health = (state.get("Health") or {}).get("Status")
    return ContainerInfo(
        id=attrs["Id"],
        name=attrs.get("Name", "").lstrip("/"),
        status=state.get("Status", ""),
        health=health,
        exit_code=state.get("ExitCode"),
        labels=dict(attrs.get("Config", {}).get("Labels") or {}),
        image=attrs.get("Config", {}).get("Image", ""),
        restart_count=attrs.get("RestartCount", 0),
    )


def _sparse_info(attrs: dict) -> ContainerInfo:
    status_text = attrs.get("Status", "")
    health = next((h for h in ("unhealthy", "healthy", "starting") if f"({h}" in status_text), None)
    exit_code = None
    if status_text.startswith("Exited (") and ")" in status_text:
        code = status_text[len("Exited ("):status_text.index(")")]
        exit_code = int(code) if code.lstrip("-").isdigit() else None
    names = attrs.get("Names") or [""]
    return ContainerInfo(
        id=attrs["Id"],
        name=names[0].lstrip("/"),
        status=attrs.get("State", ""),
        health=health,
        exit_code=exit_code,
        labels=dict(attrs.get("Labels") or {}),
        image=attrs.get("Image", ""),
    )


@dataclass(frozen=True)
class PullCounts:
    """How far a pull is: the image's layers and the bytes the daemon reported for them."""
    layers: int
    layers_done: int  # pulled, or already in the engine's store
    downloaded: int  # bytes
    extracted: int  # bytes
    total: int  # bytes of the layers whose size the daemon announced so far
    fraction: float
    """0..1: each layer counts once, half for its download and half for its extraction (the
    sizes of waiting layers are not known yet: bytes alone would move backwards)."""


@dataclass
class _Layer:
    total: int = 0
    downloaded: int = 0
    extracted: int = 0
    done: bool = False


class _PullTally:
    """The daemon's pull records (one per layer change) folded into `PullCounts`."""

    def __init__(self) -> None:
        self.layers: dict[str, _Layer] = {}
        self.fetching = False
        """Some layer must come from the registry (not every one "Already exists")."""

    def add(self, record: dict[str, Any]) -> None:
        layer_id, status = record.get("id"), record.get("status", "")
        detail = record.get("progressDetail") or {}
        # Records without a layer (or naming the tag, "Pulling from ...") say nothing of bytes.
        if not layer_id or (status.startswith("Pulling from") and not detail):
            return
        layer = self.layers.setdefault(layer_id, _Layer())
        self.fetching = self.fetching or status == "Pulling fs layer"
        if detail.get("total"):
            layer.total = int(detail["total"])
        if status == "Downloading":
            layer.downloaded = int(detail.get("current", 0))
        elif status in ("Download complete", "Verifying Checksum"):
            layer.downloaded = layer.total
        elif status == "Extracting":
            layer.downloaded = layer.total
            layer.extracted = int(detail.get("current", 0))
        elif status in ("Pull complete", "Already exists"):
            layer.downloaded = layer.extracted = layer.total
            layer.done = True

    def counts(self) -> PullCounts:
        layers = self.layers.values()

        def progress(layer: _Layer) -> float:
            if layer.done:
                return 1.0
            if not layer.total:
                return 0.0
            return (min(layer.downloaded, layer.total) + min(layer.extracted, layer.total)) / (2 * layer.total)

        return PullCounts(
            layers=len(self.layers), layers_done=sum(layer.done for layer in layers),
            downloaded=sum(layer.downloaded for layer in layers),
            extracted=sum(layer.extracted for layer in layers),
            total=sum(layer.total for layer in layers),
            fraction=sum(progress(layer) for layer in layers) / len(self.layers) if self.layers else 1.0)


def _errors() -> ModuleType:
    """`docker.errors`, imported on first need: the SDK (requests, urllib3) takes 60 to 100 ms
    to import, which a command that never asks Docker (`codeb --help`) must not pay. The
    expression of an `except _errors().NotFound:` is evaluated only when an exception passes."""
    import docker.errors

    return docker.errors


API_TIMEOUT = 120.0  # as the SDK client's
MAX_API_ANSWER = 256 * 1024 * 1024  # a list of every container of a busy engine, with labels


def _api_address(endpoint: str) -> tuple[socket.AddressFamily, Any] | None:
    """Where to reach the engine's API without the SDK: unix:// sockets and plain tcp://
    (None for anything else, e.g. ssh:// or TLS: the SDK's)."""
    if endpoint.startswith("unix://"):
        return socket.AF_UNIX, endpoint[len("unix://"):]
    if endpoint.startswith(("tcp://", "http://")):
        host, _, port = endpoint.split("://", 1)[1].rstrip("/").rpartition(":")
        host = host.strip("[]")
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                socket.inet_pton(family, host)
            except OSError:
                continue
            return (family, (host, int(port))) if port.isdigit() else None
    return None


def _short(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    text = str(explanation or exc)
    return text.splitlines()[0] if text else type(exc).__name__


class DockerEngine:
    def __init__(self, endpoint: str, bind_address: str = "127.0.0.1", stop_timeout: int = 10):
        self.endpoint = endpoint
        self.bind_address = bind_address
        self.stop_timeout = stop_timeout
        self._client: docker.DockerClient | None = None
        self._building = threading.Lock()
        self._api_address = _api_address(endpoint)

    @property
    def client(self) -> docker.DockerClient:
        """The SDK client, built on first use. Blocking (the constructor asks the engine for its
        API version): call it only inside a worker thread, as `_call` does."""
        with self._building:
            if self._client is None:
                import docker  # here, not at module import: see _errors

                try:
                    self._client = docker.DockerClient(base_url=self.endpoint, timeout=120)
                except docker.errors.DockerException as exc:
                    raise OperationFailed(
                        f"Docker ({self.endpoint}) unreachable: {_short(exc)}") from None
            return self._client

    async def _call(self, fn: Callable[[docker.DockerClient], T]) -> T:
        """Run `fn(client)` in a worker thread: the SDK blocks, the event loop must not."""
        try:
            return await asyncio.to_thread(lambda: fn(self.client))
        except _errors().DockerException as exc:
            if isinstance(exc, _errors().NotFound):
                raise
            raise OperationFailed(f"Docker ({self.endpoint}): {_short(exc)}") from None

    async def ping(self) -> bool:
        try:
            return bool(await self._call(lambda c: c.ping()))
        except Exception:
            return False

    async def version(self) -> str:
        """The engine's version ("20.10.24+dfsg1"), for `codeb host check`."""
        return str((await self._call(lambda c: c.version())).get("Version", "unknown"))

    async def pull(self, ref: str, progress: Callable[[PullCounts], None] | None = None,
                   every: float = 0.1) -> None:
        """Pull `ref`. `progress` is called on the event loop with the counts so far, at most
        once per `every` seconds and once at the end, and never when every layer was already
        there. A reference the registry does not hold is `ImageNotFound` with advice on where
        images come from."""
        repository, tag = _split_ref(ref)
        loop = asyncio.get_running_loop()
        abandoned = threading.Event()

        def pull() -> None:
            # The SDK's own images.pull reads this same stream, then asks for the image again.
            stream = self.client.api.pull(repository, tag=tag, stream=True, decode=True)
            tally, sent_at, sent = _PullTally(), 0.0, None
            try:
                for record in stream:
                    if abandoned.is_set():
                        return
                    if "error" in record:  # the daemon had begun answering: not an HTTP error
                        raise _errors().APIError(record["error"])
                    if progress is None:
                        continue
                    tally.add(record)
                    # Not before the first layer to fetch: the records of layers already
                    # present come first and would show a full bar.
                    if tally.fetching and time.monotonic() - sent_at >= every:
                        counts = tally.counts()
                        if counts.layers_done < counts.layers:
                            sent_at, sent = time.monotonic(), counts
                            loop.call_soon_threadsafe(progress, sent)
            finally:
                stream.close()
            # Scheduled before this thread returns: the caller sees every count before it resumes.
            if progress is not None and tally.fetching and (last := tally.counts()) != sent:
                loop.call_soon_threadsafe(progress, last)

        try:
            await asyncio.to_thread(pull)  # not _call: its errors are read here
        except _errors().DockerException as exc:
            detail = _short(exc)
            if isinstance(exc, (_errors().NotFound, _errors().ImageNotFound)) or any(
                word in detail.lower()
                for word in ("not found", "manifest unknown", "does not exist", "pull access denied")
            ):
                raise ImageNotFound(
                    f"Image not found: {ref}. Was it built and pushed? A git push triggers the build."
                ) from None
            raise OperationFailed(f"docker pull {ref}: {detail}") from None
        finally:
            abandoned.set()  # a cancelled caller: the thread stops reading at the next record

    async def image_present(self, ref: str) -> bool:
        try:
            await self._call(lambda c: c.images.get(ref))
            return True
        except _errors().NotFound:
            return False

    async def run_slot(self, *, name: str, image: str, port: int, labels: dict[str, str],
                       env: dict[str, str]) -> ContainerInfo:
        def run(client: docker.DockerClient) -> ContainerInfo:
            # create, start, inspect: containers.run() also inspects between the first two, a
            # round trip more (through SSH on a remote host).
            created = client.api.create_container(
                image,
                name=name,
                environment={"PORT": str(port), "HOST": self.bind_address, **env},
                labels={**labels, LABEL_PORT: str(port), LABEL_IMAGE: image},
                host_config=client.api.create_host_config(
                    network_mode="host",
                    init=True,  # without it a busybox PID 1 ignores SIGTERM: each stop takes 10 s
                    # Back after a daemon restart. A crashing image is still seen: the health
                    # check treats a restart as a failure.
                    restart_policy={"Name": "unless-stopped"},
                ),
            )
            client.api.start(created["Id"])
            return _inspected(client.api.inspect_container(created["Id"]))

        try:
            return await self._call(run)
        except _errors().NotFound as exc:
            raise OperationFailed(f"docker run {image}: {_short(exc)}") from None

    async def inspect(self, ident: str) -> ContainerInfo | None:
        if self._api_address is not None:  # as list_slot_containers: no SDK, no thread
            if not ident:
                return None
            attrs = await self._api_get(f"/containers/{quote(ident, safe='')}/json", missing_ok=True)
            return None if attrs is None else _inspected(attrs)
        try:
            container = await self._call(lambda c: c.containers.get(ident))
        except _errors().NotFound:
            return None
        return _info(container)

    async def image_digests(self, ref: str) -> set[str]:
        """The registry digests (`sha256:...`) the image `ref` names on this engine was pulled
        or pushed as, in `ref`'s own repository; empty when the engine has no such image."""
        repository, _ = _split_ref(ref)
        if self._api_address is not None:  # as inspect: no SDK, no thread
            attrs = await self._api_get(f"/images/{quote(ref, safe='/:@')}/json", missing_ok=True)
        else:
            try:
                attrs = await self._call(lambda c: c.api.inspect_image(ref))
            except _errors().NotFound:
                attrs = None
        digests = set()
        for entry in (attrs or {}).get("RepoDigests") or []:
            name, _, digest = entry.partition("@")
            if name == repository and digest:
                digests.add(digest)
        return digests

    async def logs(self, ident: str, tail: int = 20) -> str:
        try:
            container = await self._call(lambda c: c.containers.get(ident))
            data = await self._call(lambda _: container.logs(tail=tail))
        except (_errors().NotFound, OperationFailed):
            return ""
        return data.decode(errors="replace")

    async def stream_logs(self, ident: str, tail: int = 200) -> AsyncIterator[str]:
        """Follow a container's output line by line (the console's log view)."""
        container = await self._call(lambda c: c.containers.get(ident))
        stream = await self._call(lambda _: container.logs(stream=True, follow=True, tail=tail))
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def pump() -> None:
            buffer = b""
            try:
                for chunk in stream:
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        loop.call_soon_threadsafe(queue.put_nowait, line.decode(errors="replace"))
            except Exception:
                pass
            finally:
                if buffer:
                    loop.call_soon_threadsafe(queue.put_nowait, buffer.decode(errors="replace"))
                loop.call_soon_threadsafe(queue.put_nowait, None)

        task = loop.run_in_executor(None, pump)
        try:
            while (line := await queue.get()) is not None:
                yield line
        finally:
            try:
                stream.close()
            except Exception:
                pass
            await asyncio.wait([task], timeout=2)

    async def stop(self, ident: str) -> None:
        try:
            container = await self._call(lambda c: c.containers.get(ident))
            await self._call(lambda _: container.stop(timeout=self.stop_timeout))
        except _errors().NotFound:
            pass

    async def start(self, ident: str) -> None:
        container = await self._call(lambda c: c.containers.get(ident))
        await self._call(lambda _: container.start())

    async def rename(self, ident: str, name: str) -> None:
        container = await self._call(lambda c: c.containers.get(ident))
        await self._call(lambda _: container.rename(name))

    async def remove(self, ident: str) -> None:
        try:
            container = await self._call(lambda c: c.containers.get(ident))
            await self._call(lambda _: container.remove(force=True))
        except _errors().NotFound:
            pass

    async def list_slot_containers(self, all: bool = True, project: str | None = None,
                                   environment: str | None = None) -> list[ContainerInfo]:
        """Every container codeb created (by label), running or not; only one project's (and
        environment's) when given. One list call: a sparse list does not inspect each
        container, so one removed meanwhile cannot fail it."""
        labels = [LABEL_PROJECT if project is None else f"{LABEL_PROJECT}={project}"]
        if environment is not None:
            labels.append(f"{LABEL_ENVIRONMENT}={environment}")
        if self._api_address is not None:
            # The engine's API asked directly (http1.py): no SDK to import (60 to 100 ms at
            # start-up, for `codeb status`) and no worker thread per list.
            query = urlencode({"all": "1" if all else "0", "filters": json.dumps({"label": labels})})
            return [_sparse_info(attrs) for attrs in await self._api_get(f"/containers/json?{query}")]
        containers = await self._call(lambda c: c.containers.list(
            all=all, sparse=True, filters={"label": labels}))
        return [_sparse_info(c.attrs) for c in containers]

    async def _api_get(self, target: str, missing_ok: bool = False) -> Any:
        """GET `target` from the engine's API on its socket; the answer's JSON (None for a 404
        when `missing_ok`)."""
        family, address = self._api_address  # type: ignore[misc]
        request = http1.request_bytes("GET", target, "docker")
        try:
            async with asyncio.timeout(API_TIMEOUT):
                response = await http1.request(family, address, request, MAX_API_ANSWER)
        except TimeoutError:
            raise OperationFailed(f"Docker ({self.endpoint}): timed out") from None
        except http1.ConnectFailed as exc:
            raise OperationFailed(f"Docker ({self.endpoint}) unreachable: {exc}") from None
        except (OSError, EOFError, http1.RemoteProtocolError, http1.BodyTooLarge) as exc:
            raise OperationFailed(
                f"Docker ({self.endpoint}): {str(exc) or type(exc).__name__}") from None
        try:
            answer = json.loads(response.body)
        except ValueError:
            if response.status == 200:
                raise OperationFailed(f"Docker ({self.endpoint}): an answer that is not JSON") from None
            answer = None
        if response.status == 404 and missing_ok:
            return None
        if response.status != 200:
            message = answer.get("message") if isinstance(answer, dict) else None
            raise OperationFailed(f"Docker ({self.endpoint}): "
                                  f"{message or f'HTTP {response.status}'}")
        return answer

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _split_ref(ref: str) -> tuple[str, str | None]:
    if "@" in ref:
        return ref, None
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = ref.rsplit(":", 1)
        return repository, tag
    return ref, "latest"


def labels_for(project: str, environment: str, slot: str, installation: str) -> dict[str, Any]:
    return {LABEL_PROJECT: project, LABEL_ENVIRONMENT: environment, LABEL_SLOT: slot,
            LABEL_INSTALLATION: installation}
