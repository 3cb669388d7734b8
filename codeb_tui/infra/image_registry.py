"""The private image registry's HTTP API (Docker Registry v2): repositories and their tags."""

from __future__ import annotations

from codeb_tui.domain.errors import OperationFailed


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
