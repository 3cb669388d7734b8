"""Status: every slot as the registry has it, plus (live) its container and its health.

`check` is the live part alone, for slot records a front end already has: the console checks
the rows on screen every poll and sweeps the others in small batches, without reading the
registry again (slot files reach it by file-system events)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import replace

from codeb_tui.domain.errors import OperationFailed
from codeb_tui.domain.model import Environment, ProjectSlots, Slot, SlotState
from codeb_tui.domain.status import ContainerState, Health, SlotStatus
from codeb_tui.engine.context import Context
from codeb_tui.engine import host_status
from codeb_tui.infra.docker_engine import ContainerInfo
from codeb_tui.infra.health import HealthResult

CONTAINERS_MAX_AGE = 4.0
"""Seconds a listing of Docker's containers serves `check`: listing them all costs far more
than a health check, and a container that stopped also fails its health check at once."""
CONTAINERS_RECHECK = 1.0
"""Seconds before a listing that lacks a wanted running container is asked again."""


async def status(ctx: Context, project: str | None = None, env_filter: Environment | None = None,
                 live: bool = True) -> list[SlotStatus]:
    if project is not None and env_filter is not None:  # one file: read that one only
        pair = await ctx.registry.aread_slots(project, env_filter)
        pairs = [pair] if pair is not None else []
    else:
        pairs = [p for p in await ctx.registry.aread_all()
                 if (project is None or p.project == project)
                 and (env_filter is None or p.environment is env_filter)]
    elsewhere = [p for p in pairs if not p.local_only]
    if elsewhere:  # projects on remote or several hosts: each host asked at once
        local, remote = await asyncio.gather(
            _local_status(ctx, [p for p in pairs if p.local_only], live),
            host_status.remote_statuses(
                ctx, elsewhere, live, lambda pair, slot: slot_status(ctx, pair, slot, None, None,
                                                                     None)))
        by_pair = {**{(r.project, r.environment): [] for r in local}, **remote}
        for record in local:
            by_pair[record.key].append(record)
        return [record for pair in pairs for record in by_pair[(pair.project, pair.environment)]]
    return await _local_status(ctx, pairs, live)


async def _local_status(ctx: Context, pairs: list[ProjectSlots], live: bool) -> list[SlotStatus]:
    containers = await _list_containers(ctx) if live else None
    slots = [(pair, slot) for pair in pairs for slot in pair.slots()]
    checks = await _health_checks(ctx, [slot.port if live and slot.state is not SlotState.EMPTY
                                        else None for _, slot in slots])
    checked_at = time.monotonic() if live else None
    return [slot_status(ctx, pair, slot, result, containers, checked_at)
            for (pair, slot), result in zip(slots, checks)]


class ContainerListing:
    """Docker's slot containers as last listed, listed again when older than `max_age`."""

    def __init__(self, max_age: float = CONTAINERS_MAX_AGE) -> None:
        self.max_age = max_age
        self._listed: dict[str, ContainerInfo] | None = None
        self._at = float("-inf")

    async def get(self, ctx: Context, wanted: Sequence[str | None] = ()
                  ) -> dict[str, ContainerInfo] | None:
        """The listing; listed again sooner (after CONTAINERS_RECHECK) when a wanted container
        is missing or not running in it: a deploy that just started one must not show as
        "container missing" for seconds, and a stopped one is news an operator waits for."""
        age = time.monotonic() - self._at
        if age >= self.max_age or (age >= CONTAINERS_RECHECK and self._listed is not None
                                   and any(name and (name not in self._listed
                                                     or self._listed[name].status != "running")
                                           for name in wanted)):
            self._listed = await _list_containers(ctx)
            self._at = time.monotonic()
        return self._listed


async def check(ctx: Context, slots: Sequence[SlotStatus],
                listing: ContainerListing) -> list[SlotStatus]:
    """These slot records with their health checked now and their container state from a
    recent listing. Checks start in the order given (a batch opens its connections in that
    order): a front end passes the slots it shows first."""
    if any(s.hosts for s in slots):  # projects on remote or several hosts: asked there
        local, remote = await asyncio.gather(
            check(ctx, [s for s in slots if not s.hosts], listing),
            host_status.check_remote(ctx, [s for s in slots if s.hosts]))
        rest = iter(remote)
        local_rows = iter(local)
        return [next(rest) if s.hosts else next(local_rows) for s in slots]
    containers = await listing.get(ctx, [s.container for s in slots])
    checks = await _health_checks(ctx, [None if s.state is SlotState.EMPTY else s.port
                                        for s in slots])
    checked_at = time.monotonic()
    return [replace(s, health=_health(s.state, result),
                    health_detail=None if result is None else result.detail,
                    latency_ms=None if result is None else result.latency_ms,
                    container_status=_container_state(s.container, containers),
                    checked_at=None if result is None else checked_at)
            for s, result in zip(slots, checks)]


async def _list_containers(ctx: Context) -> dict[str, ContainerInfo] | None:
    try:
        return {c.name: c for c in await ctx.host.docker.list_slot_containers()}
    except OperationFailed:
        return None  # Docker unreachable: containers unknown, not missing


async def _health_checks(ctx: Context, ports: list[int | None]) -> list[HealthResult | None]:
    """A check of each port (None: nothing to check), in one batch (BATCH_OPEN open at once)."""
    wanted = [port for port in ports if port is not None]
    results = iter(await ctx.host.health.check_many(wanted))
    return [None if port is None else next(results) for port in ports]


def _health(state: SlotState, check: HealthResult | None) -> Health:
    if state is SlotState.EMPTY:
        return Health.NONE
    if check is None:
        return Health.UNKNOWN
    return Health.HEALTHY if check.ok else Health.UNHEALTHY


def _container_state(name: str | None,
                     containers: dict[str, ContainerInfo] | None) -> ContainerState | None:
    if not name:
        return None
    if containers is None:
        return ContainerState.UNKNOWN
    info = containers.get(name)
    return ContainerState.of(info.status) if info else ContainerState.MISSING


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
    container_status = (_container_state(slot.container_name, containers)
                        if checked_at is not None else None)
    return SlotStatus(
        project=pair.project, environment=env, slot=slot.name, state=slot.state, port=slot.port,
        image=slot.image, health=_health(slot.state, check),
        health_detail=None if check is None else check.detail,
        latency_ms=None if check is None else check.latency_ms,
        url=url, container=slot.container_name, container_status=container_status,
        version=pair.version, deployed_at=slot.deployed_at,
        grace_expires_at=slot.grace_expires_at,
        checked_at=None if check is None else checked_at,
    )
