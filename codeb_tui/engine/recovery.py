"""What an interrupted operation left behind, put right.

A codeb process killed mid-operation (SIGKILL, a power cut) leaves the slot file as it was before
the operation (it is written last) and may leave containers that do not match it: the new
container of a deploy that never passed the health gate, the previous one stopped and renamed
aside. The slot file is the truth, and containers are known by id: those no slot references are
removed, those a slot references get their name back and are started again. The next operation
on the project does this first, under the project lock, and says so; `reconcile --repair` and
`--prune` do the same for every project.

A container stopped under its own name is no proof of an interrupted operation (an operator may
have stopped it, or it crashed): operations leave it stopped, so that a rollback to it is
refused as unhealthy; only `reconcile --repair` starts it.
"""

from __future__ import annotations

from collections.abc import Callable

from codeb_tui.domain.errors import HealthCheckFailed
from codeb_tui.domain.model import (
    LOCAL_HOST,
    Environment,
    ProjectSlots,
    Slot,
    SlotState,
    container_name,
)
from codeb_tui.engine.context import Context
from codeb_tui.engine.health_gate import wait_healthy
from codeb_tui.engine.hosts import host_label, on_hosts
from codeb_tui.engine.port_book import installation_id
from codeb_tui.infra.docker_engine import LABEL_INSTALLATION, ContainerInfo
from codeb_tui.infra.host import Host


def serving_slots(pair: ProjectSlots | None, host: str = LOCAL_HOST) -> dict[str, Slot]:
    """container id -> slot, for the slots that should have a container on `host`."""
    if pair is None:
        return {}
    return {s.container_on(host): s for s in pair.slots()
            if s.state is not SlotState.EMPTY and s.container_on(host)}


async def recover(ctx: Context, log: Callable[[str], None], project: str, env: Environment,
                  pair: ProjectSlots | None) -> list[str]:
    """Undo what an interrupted operation left of this project+environment on each of its
    hosts (the caller holds the project lock). Returns what was done, one phrase each."""
    names = pair.hosts if pair is not None else (LOCAL_HOST,)

    async def on(host: Host) -> list[str]:
        containers = await host.docker.list_slot_containers(project=project,
                                                            environment=env.value)
        done = await remove_unreferenced(ctx, pair, containers, host)
        done += await restore_referenced(ctx, log, project, env, pair, containers,
                                         start_stopped=False, host=host)
        return [host_label(host, names) + line for line in done]

    return [line for lines in await on_hosts(ctx, names, on) for line in lines]


async def remove_unreferenced(ctx: Context, pair: ProjectSlots | None,
                              containers: list[ContainerInfo],
                              host: Host | None = None) -> list[str]:
    """Remove this installation's containers of the project+environment no slot references."""
    host = host or ctx.host
    referenced = serving_slots(pair, host.name)
    if all(c.id in referenced for c in containers):
        return []
    ours = await installation_id(ctx, create=False)
    done = []
    for container in containers:
        if container.id in referenced or container.labels.get(LABEL_INSTALLATION) != ours:
            continue
        await host.docker.remove(container.id)
        done.append(f"removed {container.name} ({container.image}, {container.status}), "
                    "which no slot references")
    return done


async def restore_referenced(ctx: Context, log: Callable[[str], None], project: str,
                             env: Environment, pair: ProjectSlots | None,
                             containers: list[ContainerInfo], start_stopped: bool,
                             host: Host | None = None) -> list[str]:
    """Give each slot's container its name back and start it again (a renamed one always: an
    interrupted deploy stopped it; one stopped under its own name only with `start_stopped`),
    then wait for its health, so that a rollback right after finds its target answering."""
    host = host or ctx.host
    docker = host.docker
    by_id = {c.id: c for c in containers}
    done = []
    for container_id, slot in serving_slots(pair, host.name).items():
        found = by_id.get(container_id)
        if found is None:
            continue  # gone: nothing to restore here (reconcile reports it)
        expected = container_name(project, env, slot.name)
        renamed = found.name != expected
        if renamed:
            holder = await docker.inspect(expected)
            if holder is not None and holder.id != found.id:
                done.append(f"cannot rename {found.name} back to {expected}: {holder.name} "
                            "holds the name")
                continue
            await docker.rename(found.id, expected)
            done.append(f"renamed {found.name} back to {expected}")
        if found.status != "running" and (renamed or start_stopped):
            await docker.start(found.id)
            what = f"started {expected} ({slot.image}) again for the {slot.state.value} slot"
            restarted = await docker.inspect(found.id)
            try:
                if restarted is None:
                    raise HealthCheckFailed(f"{expected} disappeared")
                await wait_healthy(ctx, log, restarted, slot.port, host=host)
            except HealthCheckFailed as exc:
                # Left as it was found rather than crash-looping on its restart policy.
                await docker.stop(found.id)
                what += f", but it is not healthy ({exc}); stopped again"
            done.append(what)
    return done
