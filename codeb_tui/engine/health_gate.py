"""The health gate: a new container must prove itself before it is called deployed, and a slot
must still answer before traffic is switched to it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from codeb_tui.domain.errors import HealthCheckFailed
from codeb_tui.domain.model import HealthRecord, Slot, utcnow
from codeb_tui.engine.context import Context
from codeb_tui.infra.docker_engine import ContainerInfo
from codeb_tui.infra.health import HealthResult
from codeb_tui.infra.host import Host


async def wait_healthy(ctx: Context, log: Callable[[str], None], container: ContainerInfo,
                       port: int, host: Host | None = None,
                       waiting: Callable[[float, float, str], None] | None = None) -> HealthRecord:
    """Docker's own health status if the image has one, then GET /health answering 2xx/3xx,
    within health.timeout, on `host` (the local one by default). After each answer that is not
    healthy yet, `waiting(seconds elapsed, timeout, last answer)`."""
    docker, health = (host or ctx.host).docker, (host or ctx.host).health
    timeout = ctx.config.health.timeout
    started = time.monotonic()
    deadline = started + timeout
    last = "no answer yet"
    announced = None
    has_docker_health = container.health is not None
    while True:
        # Without a Docker HEALTHCHECK, ask the slot first and inspect only while it does
        # not answer: a container that exited or restarts is a failure at once.
        if not has_docker_health:
            result = await health.check(port)
            last = result.detail
            if result.ok:
                return _healthy(ctx, log, result)
        info = await docker.inspect(container.id)
        if info is None:
            raise HealthCheckFailed(f"Container {container.name} disappeared during the health check")
        if info.status in ("exited", "dead", "restarting") or info.restart_count:
            raise HealthCheckFailed(
                f"Container {container.name} exited with code {info.exit_code} before becoming healthy"
            )
        if has_docker_health:
            if info.health == "unhealthy":
                raise HealthCheckFailed(f"Container {container.name}: Docker reports it unhealthy")
            if info.health == "healthy":
                result = await health.check(port)
                last = result.detail
                if result.ok:
                    return _healthy(ctx, log, result)
            else:
                last = f"docker health {info.health}"
        if last != announced:
            log(f"waiting: {last}")
            announced = last
        if waiting is not None:
            waiting(min(time.monotonic() - started, timeout), timeout, last)
        if time.monotonic() >= deadline:
            raise HealthCheckFailed(
                f"Health check failed: {container.name} not healthy within {timeout:g} s (last: {last})"
            )
        await asyncio.sleep(ctx.config.health.interval)


def _healthy(ctx: Context, log: Callable[[str], None], result: HealthResult) -> HealthRecord:
    log(f"healthy: GET {ctx.config.health.path} -> {result.detail} in {result.latency_ms:.0f} ms")
    return HealthRecord(True, result.detail, utcnow(), result.latency_ms)


async def check_slot(ctx: Context, slot: Slot, what: str, host: Host | None = None) -> HealthRecord:
    """A final check of a slot that should be serving, on `host` (the local one by default):
    its container runs and /health answers."""
    host = host or ctx.host
    # By id: the name may be held by a container an interrupted deploy started, which never
    # passed this gate.
    info = await host.docker.inspect(slot.container_on(host.name) or slot.container_name or "")
    if info is None or info.status != "running":
        state = "missing" if info is None else info.status
        raise HealthCheckFailed(f"{what}: container {slot.container_name} is {state}")
    result = await host.health.check(slot.port)
    if not result.ok:
        raise HealthCheckFailed(f"{what}: GET {ctx.config.health.path} on port {slot.port} -> {result.detail}")
    return HealthRecord(True, result.detail, utcnow(), result.latency_ms)
