"""The Docker engine, through the docker SDK.

The SDK blocks, so every call runs in a worker thread (`asyncio.to_thread`); nothing here ever
blocks the event loop the console draws on.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from codeb_tui.domain.errors import ImageNotFound, OperationFailed

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
    attrs = container.attrs
    state = attrs.get("State", {})
    health = (state.get("Health") or {}).get("Status")
    return ContainerInfo(
        id=container.id,
        name=container.name,
        status=state.get("Status", container.status),
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


def _errors() -> ModuleType:
    """`docker.errors`, imported on first need: the SDK (requests, urllib3) takes 60 to 100 ms
    to import, which a command that never asks Docker (`codeb --help`) must not pay. The
    expression of an `except _errors().NotFound:` is evaluated only when an exception passes."""
    import docker.errors

    return docker.errors


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

    async def pull(self, ref: str) -> str:
        """Pull `ref`; return the image id. A reference the registry does not hold is
        `ImageNotFound` with advice on where images come from."""
        repository, tag = _split_ref(ref)

        def pull() -> str:
            image = self.client.images.pull(repository, tag=tag)
            return image.id

        try:
            return await asyncio.to_thread(pull)  # not _call: its errors are read here
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

    async def image_present(self, ref: str) -> bool:
        try:
            await self._call(lambda c: c.images.get(ref))
            return True
        except _errors().NotFound:
            return False

    async def run_slot(self, *, name: str, image: str, port: int, labels: dict[str, str],
                       env: dict[str, str]) -> ContainerInfo:
        def run(client: docker.DockerClient) -> ContainerInfo:
            container = client.containers.run(
                image,
                name=name,
                detach=True,
                network_mode="host",
                init=True,  # without it a busybox PID 1 ignores SIGTERM and every stop takes 10 s
                environment={"PORT": str(port), "HOST": self.bind_address, **env},
                labels={**labels, LABEL_PORT: str(port), LABEL_IMAGE: image},
                # Back after a daemon restart. A crashing image is still seen: the health check
                # treats a restart as a failure.
                restart_policy={"Name": "unless-stopped"},
            )
            container.reload()
            return _info(container)

        try:
            return await self._call(run)
        except _errors().NotFound as exc:
            raise OperationFailed(f"docker run {image}: {_short(exc)}") from None

    async def inspect(self, ident: str) -> ContainerInfo | None:
        try:
            container = await self._call(lambda c: c.containers.get(ident))
        except _errors().NotFound:
            return None
        return _info(container)

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
        containers = await self._call(lambda c: c.containers.list(
            all=all, sparse=True, filters={"label": labels}))
        return [_sparse_info(c.attrs) for c in containers]

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
