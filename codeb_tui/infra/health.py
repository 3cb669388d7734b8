"""HTTP health checks of slots (httpx, async, many at once)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class HealthResult:
    ok: bool
    detail: str  # "200 OK", "500", "connection refused", ...
    latency_ms: float | None


class HealthChecker:
    def __init__(self, host: str, path: str, request_timeout: float) -> None:
        self.host = host
        self.path = path
        self._client = httpx.AsyncClient(
            timeout=request_timeout,
            trust_env=False,  # never send a health check through a proxy
            verify=False,  # plain HTTP on the slot's port; no SSL context to build
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=0),
        )

    async def check(self, port: int) -> HealthResult:
        """GET http://host:port/health; 2xx and 3xx are healthy."""
        url = f"http://{self.host}:{port}{self.path}"
        started = time.perf_counter()
        try:
            response = await self._client.get(url, follow_redirects=False)
        except httpx.ConnectError:
            return HealthResult(False, "connection refused", None)
        except httpx.TimeoutException:
            return HealthResult(False, "timed out", None)
        except httpx.HTTPError as exc:
            return HealthResult(False, type(exc).__name__, None)
        latency = (time.perf_counter() - started) * 1000
        ok = 200 <= response.status_code < 400
        return HealthResult(ok, f"HTTP {response.status_code}", latency)

    async def aclose(self) -> None:
        await self._client.aclose()
