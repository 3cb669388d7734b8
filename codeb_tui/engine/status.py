"""Status: every slot as the registry has it, plus (live) its container and its health."""

from __future__ import annotations

import asyncio
import time

from codeb_tui.domain.errors import OperationFailed
from codeb_tui.domain.model import Environment, ProjectSlots, Slot, SlotState
from codeb_tui.domain.status import ContainerState, Health, SlotStatus
from codeb_tui.engine.context import Context
from codeb_tui.infra.docker_engine import ContainerInfo
from codeb_tui.infra.health import HealthResult

HEALTH_CONCURRENCY = 32
"""Checks in flight at once: a thousand gathered together queue on the client's connection
pool and time out instead of answering."""


async def status(ctx: Context, project: str | None = None, env_filter: Environment | None = None,
                 live: bool = True) -> list[SlotStatus]:
    pairs = [p for p in await ctx.registry.aread_all()
             if (project is None or p.project == project)
             and (env_filter is None or p.environment is env_filter)]
    containers: dict[str, ContainerInfo] | None = None
    if live:
        try:
            containers = {c.name: c for c in await ctx.host.docker.list_slot_containers()}
        except OperationFailed:
            containers = None  # Docker unreachable: containers unknown, not missing
    slots = [(pair, slot) for pair in pairs for slot in pair.slots()]
    gate = asyncio.Semaphore(HEALTH_CONCURRENCY)

    async def check(slot: Slot) -> HealthResult | None:
        if not live or slot.state is SlotState.EMPTY:
            return None
        async with gate:
            return await ctx.host.health.check(slot.port)

    checks = await asyncio.gather(*[check(slot) for _, slot in slots])
    checked_at = time.monotonic() if live else None
    return [slot_status(ctx, pair, slot, result, containers, checked_at)
            for (pair, slot), result in zip(slots, checks)]


def slot_status(ctx: Context, pair: ProjectSlots, slot: Slot, check: HealthResult | None,
                containers: dict[str, ContainerInfo] | None,
                checked_at: float | None) -> SlotStatus:
    env = pair.environment
    if slot.state is SlotState.ACTIVE:
        url = ctx.config.production_url(pair.project, env)
    elif slot.state is SlotState.EMPTY:
        url = None
    else:
        url = ctx.config.preview_url(pair.project, env, slot.name.value)
    if slot.state is SlotState.EMPTY:
        health = Health.NONE
    elif check is None:
        health = Health.UNKNOWN
    else:
        health = Health.HEALTHY if check.ok else Health.UNHEALTHY
    container_status: ContainerState | None = None
    if checked_at is not None and slot.container_name:
        if containers is None:
            container_status = ContainerState.UNKNOWN
        else:
            info = containers.get(slot.container_name)
            container_status = ContainerState.of(info.status) if info else ContainerState.MISSING
    return SlotStatus(
        project=pair.project, environment=env, slot=slot.name, state=slot.state, port=slot.port,
        image=slot.image, health=health,
        health_detail=None if check is None else check.detail,
        latency_ms=None if check is None else check.latency_ms,
        url=url, container=slot.container_name, container_status=container_status,
        deployed_at=slot.deployed_at, grace_expires_at=slot.grace_expires_at,
        version=pair.version, checked_at=None if check is None else checked_at,
    )
