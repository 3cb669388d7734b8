"""The private image registry's HTTP API (Docker Registry v2): repositories and their tags."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from urllib.parse import urlsplit

from codeb_tui.domain.errors import OperationFailed
from codeb_tui.infra import http1

MANIFEST_TYPES = ", ".join((
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
))
"""What the Docker daemon accepts when it pulls: the registry then serves the manifest whose
digest the daemon records in the image's RepoDigests."""
MAX_MANIFEST = 4 * 1024 * 1024


class ImageRegistry:
    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    @property
    def host(self) -> str:
        """The registry as image references name it (127.0.0.1:5000)."""
        return self.url.split("://", 1)[-1]

    async def _get(self, path: str) -> dict:
        # Imported here, not at module import: httpx (60 to 100 ms with rich) is for the image
        # picker, never for `codeb --help`.
        import httpx

        try:
            async with httpx.AsyncClient(timeout=self.timeout, trust_env=False) as client:
                response = await client.get(self.url + path)
        except httpx.HTTPError as exc:
            raise OperationFailed(f"Image registry {self.url} unreachable: {exc}") from None
        if response.status_code != 200:
            raise OperationFailed(f"Image registry {self.url}{path} answered {response.status_code}")
        return response.json()

    async def digest(self, image: str) -> str | None:
        """`sha256:...` of the manifest the reference `image` (host/repository:tag) names now
        in this registry (a digest is the hash of the manifest's bytes as served), or None when
        it cannot be had here: an image of another registry, no tag or a digest reference,
        https, an error, no answer within the timeout. The caller then pulls as usual."""
        parts = urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname or "@" in image:
            return None
        path = image.removeprefix(self.host + "/")
        repository, _, tag = path.rpartition(":")
        if path == image or not repository or "/" in tag:
            return None  # elsewhere, or no tag: `latest` and the rest are the daemon's to resolve
        data = http1.request_bytes("GET", f"/v2/{repository}/manifests/{tag}", parts.netloc,
                                   accept=MANIFEST_TYPES)
        try:
            async with asyncio.timeout(self.timeout):
                answer = await http1.request(socket.AF_INET6 if ":" in parts.hostname
                                             else socket.AF_INET,
                                             (parts.hostname, parts.port or 80), data,
                                             MAX_MANIFEST)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, http1.ConnectFailed,
                http1.RemoteProtocolError, http1.BodyTooLarge):
            return None
        if answer.status != 200:
            return None
        return "sha256:" + hashlib.sha256(answer.body).hexdigest()

    async def repositories(self) -> list[str]:
        return sorted((await self._get("/v2/_catalog?n=1000")).get("repositories") or [])

    async def tags(self, repository: str) -> list[str]:
        return sorted((await self._get(f"/v2/{repository}/tags/list")).get("tags") or [])

    async def references(self) -> list[str]:
        """Every `host/repository:tag` the registry offers, for the image picker."""
        refs = []
        for repository in await self.repositories():
            refs.extend(f"{self.host}/{repository}:{tag}" for tag in await self.tags(repository))
        return refs
