"""The port book: which pairs are taken, by whom, and every disagreement about it.

A pair is written into ssot.json under the ssot lock before a container starts on it, so two
codeb processes never allocate the same pair; the ports Docker and the host know may be read
before the lock is taken (see `reserve_ports`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

from codeb_tui.domain.model import LOCAL_HOST, Environment, ProjectSlots, Slot, SlotName, SlotState
from codeb_tui.domain.ports import PortSources, allocate_port_pair
from codeb_tui.domain.status import (
    EnvironmentPorts,
    PortConflict,
    PortConflictKind,
    PortPairUse,
    PortsReport,
)
from codeb_tui.engine.context import Context
from codeb_tui.engine.hosts import on_hosts
from codeb_tui.infra.docker_engine import ContainerInfo
from codeb_tui.infra.host import Host

SeenPorts = tuple[frozenset[int], frozenset[int]]
"""(ports of codeb's containers, ports some program listens on)."""


async def seen_ports(ctx: Context, hosts: Sequence[str] = (LOCAL_HOST,)) -> SeenPorts:
    """Ports of codeb's containers (running or not) and ports listening, on every one of
    `hosts`: a project's pair must be free on each host it runs on."""

    async def on(host: Host) -> tuple[list[ContainerInfo], set[int]]:
        return await asyncio.gather(host.docker.list_slot_containers(), host.listening_ports())

    containers: set[int] = set()
    listening: set[int] = set()
    for found, ports in await on_hosts(ctx, hosts, on):
        containers |= {c.port for c in found if c.port is not None}
        listening |= ports
    return frozenset(containers), frozenset(listening)


async def reserve_ports(ctx: Context, project: str, env: Environment, seen: SeenPorts,
                        actor: str, hosts: Sequence[str] = (LOCAL_HOST,)) -> ProjectSlots:
    """Allocate a pair, write it into ssot.json and write the project's slot file with both
    slots empty, so that a process killed from here on leaves a pair its project owns rather
    than a leak. `seen` may be read before the lock is taken: another codeb process writes its
    pair into ssot.json before it starts a container on it, and ssot.json is read under the
    lock."""
    registry = ctx.registry
    async with registry.global_lock("ssot", f"allocate ports for {project} ({env.value})",
                                    actor=actor):
        ssot = await registry.aread_ssot()
        containers, listening = seen
        sources = PortSources(registry=frozenset(ssot.allocated), containers=containers,
                              listening=listening)
        blue, green = allocate_port_pair(ctx.config.env(env).ports, sources, env.value)
        ssot.allocated[blue] = project
        ssot.allocated[green] = project
        await registry.awrite_ssot(ssot)
        empty = ProjectSlots(project, env, Slot(SlotName.BLUE, blue), Slot(SlotName.GREEN, green),
                             hosts=tuple(hosts))
        return await registry.awrite_slots(empty, expected_version=0)


async def release_ports(ctx: Context, pair: ProjectSlots, actor: str) -> None:
    """Give back the pair of a project+environment whose slots are all empty (a first deploy
    that failed): its slot file goes, then its ports."""
    registry = ctx.registry
    async with registry.global_lock("ssot", f"release ports of {pair.project}", actor=actor):
        current = await registry.aread_slots(pair.project, pair.environment)
        if current is not None and any(s.state is not SlotState.EMPTY for s in current.slots()):
            return  # deployed meanwhile: the pair is in use
        await asyncio.to_thread(registry.remove_slots, pair.project, pair.environment)
        ssot = await registry.aread_ssot()
        for port in pair.ports:
            if ssot.allocated.get(port) == pair.project:
                del ssot.allocated[port]
        await registry.awrite_ssot(ssot)


async def installation_id(ctx: Context, create: bool = True) -> str | None:
    """This installation's identity, kept in ssot.json ("installation") and written when the
    first container is started (`create`). Containers carry it as a label; reconcile and
    recovery touch no container without it. None when not created yet (then no container is
    this installation's)."""
    if ctx.installation is None:
        ssot = await ctx.registry.aread_ssot()
        ident = ssot.extra.get(INSTALLATION_KEY)
        if not _valid_installation(ident):
            if not create:
                return None
            async with ctx.registry.global_lock("ssot", "record this installation's id"):
                ssot = await ctx.registry.aread_ssot()
                ident = ssot.extra.get(INSTALLATION_KEY)
                if not _valid_installation(ident):
                    ident = uuid.uuid4().hex[:16]
                    ssot.extra[INSTALLATION_KEY] = ident
                    await ctx.registry.awrite_ssot(ssot)
        ctx.installation = ident
    return ctx.installation


INSTALLATION_KEY = "installation"


def _valid_installation(value: object) -> bool:
    return isinstance(value, str) and 8 <= len(value) <= 64 and value.isalnum()


async def ports_report(ctx: Context, host: Host | None = None) -> PortsReport:
    """Each environment's range with used and free pairs, and every disagreement between
    ssot.json, codeb's containers and the sockets listening on `host` (the local one by
    default)."""
    host = host or ctx.host
    ssot, containers, listening = await asyncio.gather(
        ctx.registry.aread_ssot(), host.docker.list_slot_containers(), host.listening_ports())
    by_port = {c.port: c for c in containers if c.port is not None}
    running_ports = {c.port for c in containers if c.status == "running"}
    ranges = {env: ctx.config.env(env).ports for env in Environment}
    environments = []
    for env, (low, high) in ranges.items():
        pairs = []
        free = 0
        for port in range(low + low % 2, high, 2):
            owners = {ssot.allocated.get(p) for p in (port, port + 1)} - {None}
            held = [p for p in (port, port + 1) if p in listening and p not in running_ports]
            if not owners and not held and port not in by_port and port + 1 not in by_port:
                free += 1
                continue
            pairs.append(PortPairUse(
                blue=port, green=port + 1,
                project=", ".join(sorted(o or "?" for o in owners)) or None,
                listening=tuple(p for p in (port, port + 1) if p in listening),
                containers=tuple(by_port[p].name for p in (port, port + 1) if p in by_port)))
        environments.append(EnvironmentPorts(env, (low, high), tuple(pairs), free))
    conflicts = []
    for port in sorted(set(ssot.allocated) | set(by_port) | listening):
        if not any(lo <= port <= hi for lo, hi in ranges.values()):
            continue
        owner = ssot.allocated.get(port)
        container = by_port.get(port)
        if port in listening and port not in running_ports:
            if owner:
                conflicts.append(PortConflict(
                    port, PortConflictKind.HELD_BY_UNKNOWN_PROCESS,
                    f"port {port} is allocated to {owner} in ssot.json but another program "
                    "listens on it"))
            else:
                conflicts.append(PortConflict(
                    port, PortConflictKind.FOREIGN_LISTENER,
                    f"port {port} is not in ssot.json but another program listens on it; "
                    "allocation skips its pair"))
        if container is not None and owner is None:
            conflicts.append(PortConflict(
                port, PortConflictKind.CONTAINER_NOT_IN_REGISTRY,
                f"container {container.name} uses port {port}, which ssot.json does not allocate"))
        if container is not None and owner and container.labels.get("codeb.project") != owner:
            conflicts.append(PortConflict(
                port, PortConflictKind.OWNER_MISMATCH,
                f"ssot.json gives port {port} to {owner} but container {container.name} uses it"))
    return PortsReport(tuple(environments), tuple(conflicts))
