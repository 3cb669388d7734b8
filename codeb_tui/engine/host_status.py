"""Status of the projects that run on remote or several hosts: each host asked at once, each
within its request timeout, so that a host that is down or slow is marked unreachable and never
holds up the others.

A host that failed is reported unreachable at once by the next status calls while one probe in
the background asks it again (`HostProbe.task`): a console polling every second never waits on
a dead host more than once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from codeb_tui.domain.errors import CodebError
from codeb_tui.domain.model import ProjectSlots, Slot, SlotState
from codeb_tui.domain.status import ContainerState, Health, HostHealth, HostState, SlotStatus
from codeb_tui.engine.context import Context
from codeb_tui.infra.docker_engine import ContainerInfo
from codeb_tui.infra.health import HealthResult

HOST_CONCURRENCY = 16
"""Health checks in flight at once per remote host (channels of one SSH connection)."""


@dataclass
class HostProbe:
    """What a host answered last: its containers, or why not."""

    containers: dict[str, ContainerInfo] | None
    error: str | None
    at: float
    task: asyncio.Task | None = None


def request_timeout(ctx: Context, name: str) -> float:
    """How long a host may take to answer one request (a name the config no longer has fails
    at once anyway: unknown host)."""
    spec = ctx.config.hosts.get(name)
    return spec.request_timeout if spec is not None else ctx.config.health.request_timeout * 4


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return f"no answer within {timeout:g} s"
    return str(exc) or type(exc).__name__


async def _ask(ctx: Context, name: str) -> HostProbe:
    timeout = request_timeout(ctx, name)
    try:
        host = ctx.host_named(name)
        listed = await asyncio.wait_for(host.docker.list_slot_containers(), timeout)
        return HostProbe({c.name: c for c in listed}, None, time.monotonic())
    except (CodebError, OSError, asyncio.TimeoutError, TimeoutError) as exc:
        return HostProbe(None, _reason(exc, timeout), time.monotonic())


async def probe(ctx: Context, name: str) -> HostProbe:
    """The host's containers now, or why it cannot be asked. A host known down answers at
    once from its last probe while a background probe asks again."""
    last = ctx.host_probes.get(name)
    if last is not None and last.error is not None:
        if last.task is None or last.task.done():
            if last.task is not None and not last.task.cancelled() and last.task.exception() is None:
                fresh = last.task.result()
                ctx.host_probes[name] = fresh
                if fresh.error is None:
                    return fresh
                last = fresh
            last.task = asyncio.ensure_future(_ask(ctx, name))
        return last
    found = await _ask(ctx, name)
    ctx.host_probes[name] = found
    return found


async def host_states(ctx: Context, names: Iterable[str]) -> list[HostState]:
    names = list(names)
    probes = await asyncio.gather(*[probe(ctx, name) for name in names])
    return [HostState(name, p.error is None, p.error or "") for name, p in zip(names, probes)]


RegistryRecord = Callable[[ProjectSlots, Slot], SlotStatus]
"""The registry's part of a slot's record (status.slot_status without a check)."""


async def remote_statuses(ctx: Context, pairs: Sequence[ProjectSlots], live: bool,
                          registry_record: RegistryRecord
                          ) -> dict[tuple[str, object], list[SlotStatus]]:
    """(project, environment) -> its two SlotStatus records, for pairs on remote or several
    hosts."""

    names = sorted({h for pair in pairs for h in pair.hosts})
    per_host: dict[str, dict[tuple[str, object, str], HostHealth]] = {}
    if live:
        results = await asyncio.gather(*[_host_part(ctx, name, pairs) for name in names])
        per_host = dict(zip(names, results))
    checked_at = time.monotonic() if live else None
    found: dict[tuple[str, object], list[SlotStatus]] = {}
    for pair in pairs:
        rows = []
        for slot in pair.slots():
            base = registry_record(pair, slot)
            base = replace(base, hosts=tuple(HostHealth(name, base.health)
                                             for name in pair.hosts))
            if not live or slot.state is SlotState.EMPTY:
                rows.append(base)
                continue
            key = (pair.project, pair.environment, slot.name.value)
            hosts = tuple(per_host[name][key] for name in pair.hosts)
            rows.append(combine(base, hosts, checked_at))
        found[(pair.project, pair.environment)] = rows
    return found


async def check_remote(ctx: Context, slots: Sequence[SlotStatus]) -> list[SlotStatus]:
    """These records (of projects on remote or several hosts) checked again now."""
    pairs_hosts = {(s.project, s.environment): tuple(h.host for h in s.hosts) for s in slots}
    names = sorted({h for hosts in pairs_hosts.values() for h in hosts})
    wanted = {name: [s for s in slots if s.state is not SlotState.EMPTY
                     and name in pairs_hosts[s.key]] for name in names}
    results = await asyncio.gather(*[
        _check_on(ctx, name, [(s.project, s.environment, s.slot.value, s.port, s.container)
                              for s in wanted[name]]) for name in names])
    per_host = dict(zip(names, results))
    checked_at = time.monotonic()
    out = []
    for s in slots:
        if s.state is SlotState.EMPTY or not s.hosts:
            out.append(s)
            continue
        key = (s.project, s.environment, s.slot.value)
        out.append(combine(s, tuple(per_host[h.host][key] for h in s.hosts), checked_at))
    return out


async def _host_part(ctx: Context, name: str, pairs: Sequence[ProjectSlots]
                     ) -> dict[tuple[str, object, str], HostHealth]:
    wanted = [(pair.project, pair.environment, slot.name.value, slot.port, slot.container_name)
              for pair in pairs if name in pair.hosts
              for slot in pair.slots() if slot.state is not SlotState.EMPTY]
    return await _check_on(ctx, name, wanted)


async def _check_on(ctx: Context, name: str, wanted: list[tuple]) -> dict[tuple, HostHealth]:
    """Each (project, environment, slot, port, container) on host `name`: one probe (its
    containers), then the health checks, each within the host's request timeout."""
    seen = await probe(ctx, name)
    if seen.error is not None:
        down = HostHealth(name, Health.UNKNOWN, f"{name} unreachable: {seen.error}",
                          container_status=ContainerState.UNKNOWN, reachable=False)
        return {w[:3]: down for w in wanted}
    host = ctx.host_named(name)
    timeout = request_timeout(ctx, name)
    gate = asyncio.Semaphore(HOST_CONCURRENCY)

    async def one(port: int) -> HealthResult | str:
        async with gate:
            try:
                return await asyncio.wait_for(host.health.check(port), timeout)
            except (CodebError, OSError, asyncio.TimeoutError, TimeoutError) as exc:
                return _reason(exc, timeout)

    checks = await asyncio.gather(*[one(w[3]) for w in wanted])
    out = {}
    for (project, env, slot, _port, container), result in zip(wanted, checks):
        info = seen.containers.get(container or "") if seen.containers is not None else None
        state = ContainerState.of(info.status) if info else ContainerState.MISSING
        if isinstance(result, str):
            out[(project, env, slot)] = HostHealth(name, Health.UNKNOWN, result, None, state,
                                                   reachable=False)
        else:
            out[(project, env, slot)] = HostHealth(
                name, Health.HEALTHY if result.ok else Health.UNHEALTHY, result.detail,
                result.latency_ms, state)
    return out


_RANK = {Health.UNHEALTHY: 0, Health.UNKNOWN: 1, Health.HEALTHY: 2, Health.NONE: 3}


def combine(base: SlotStatus, hosts: tuple[HostHealth, ...],
            checked_at: float | None) -> SlotStatus:
    """A slot's record over its hosts: healthy only when every host is; otherwise the worst
    host's word, named."""
    worst = min(hosts, key=lambda h: _RANK[h.health])
    not_running = [h for h in hosts if h.container_status is not ContainerState.RUNNING]
    detail = worst.detail if worst.health is Health.HEALTHY else f"{worst.host}: {worst.detail}"
    if worst.detail and worst.detail.startswith(f"{worst.host} "):
        detail = worst.detail
    latencies = [h.latency_ms for h in hosts if h.latency_ms is not None]
    return replace(base, health=worst.health, health_detail=detail,
                   latency_ms=max(latencies) if latencies else None,
                   container_status=(not_running[0].container_status if not_running
                                     else ContainerState.RUNNING),
                   checked_at=checked_at, hosts=hosts)
