"""Deploy: an image into the idle slot, proven healthy before anything else changes, and undone
completely on any failure (the previous container restarted, the registry as it was).

A project on several hosts is deployed on all of them at once (`on_hosts`): pull, start and
health check per host (`_deploy_on_host`); the deploy succeeds only when every host is healthy,
and a failure on one undoes it on all, so the previous state keeps running everywhere."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any

from codeb_tui.domain import events
from codeb_tui.domain.errors import BadInput, OperationFailed, TransitionRefused
from codeb_tui.domain.model import (
    LOCAL_HOST,
    Environment,
    HealthRecord,
    ProjectSlots,
    Slot,
    SlotState,
    container_name,
    utcnow,
)
from codeb_tui.engine.context import Context
from codeb_tui.engine.health_gate import wait_healthy
from codeb_tui.engine.hosts import gather_hosts, host_label, labelled, named, on_hosts
from codeb_tui.engine.operation import OperationRun
from codeb_tui.engine.port_book import installation_id, release_ports, reserve_ports, seen_ports
from codeb_tui.engine.proxy_switch import commit
from codeb_tui.infra.docker_engine import ContainerInfo, PullCounts, labels_for
from codeb_tui.infra.host import Host
from codeb_tui.infra.image_registry import ImageRegistry

REPLACED_SUFFIX = "-replaced"


def project_hosts(ctx: Context, project: str, chosen: tuple[str, ...] | None) -> tuple[str, ...]:
    """Where a new project goes: --host, else config `projects.<name>.hosts`, else local."""
    if chosen:
        hosts = tuple(dict.fromkeys(chosen))
    else:
        configured = ctx.config.projects.get(project)
        hosts = tuple(configured.hosts) if configured and configured.hosts else (LOCAL_HOST,)
    for name in hosts:
        ctx.host_named(name)  # an unknown name is refused before anything is touched
    return hosts


@dataclass
class HostDeploy:
    """What a deploy did on one host, for its undo."""

    host: Host
    label: str
    old: ContainerInfo | None = None
    new: ContainerInfo | None = None
    old_was_running: bool = False
    health: HealthRecord | None = None


async def deploy(ctx: Context, run: OperationRun, project: str, env: Environment, image: str,
                 confirm_grace: bool, hosts: tuple[str, ...] | None = None
                 ) -> tuple[str, dict[str, Any]]:
    """The body of a deploy; the caller holds the project lock. `hosts` (--host) only for a
    first deploy: later ones go where the slot file says."""
    async with run.step("read slot registry"):
        pair = await ctx.registry.aread_slots(project, env)
        if pair is None:
            where = project_hosts(ctx, project, hosts)
            run.log(f"new project: {project} has no {env.value} slots yet"
                    + (f"; hosts {', '.join(where)}" if labelled(where) else ""))
            target = None
        else:
            where = pair.hosts
            if hosts and set(hosts) != set(where):
                raise BadInput(f"{project} ({env.value}) lives on {', '.join(where)}; --host "
                               "applies to a first deploy only")
            for name in where:
                ctx.host_named(name)
            target = pair.deploy_target()
            run.log(f"target slot {target.name.value} ({target.state.value}, port {target.port})")
            if target.state is SlotState.GRACE and not confirm_grace:
                raise TransitionRefused(
                    f"Slot {target.name.value} of {project} ({env.value}) is in grace "
                    f"(the rollback target, image {target.image}); deploying into it "
                    "destroys the rollback target. Confirm with --yes"
                )
            run.from_state = target.state.value

    # A new project needs the ports in use on every host: ask Docker and the hosts while pulling.
    seen = asyncio.ensure_future(seen_ports(ctx, where)) if pair is None else None
    try:
        if ctx.config.docker.pull:
            async with run.step("pull image"):
                wanted = await _registry_digest(ctx, image)
                await on_hosts(ctx, where, lambda host: _pull(run, host, where, image, wanted))
    except BaseException:
        await _drop([seen])
        raise

    reserved: ProjectSlots | None = None
    if pair is None:
        assert seen is not None
        async with run.step("allocate ports"):
            pair = reserved = await reserve_ports(ctx, project, env, await seen, run.actor, where)
            run.log(f"allocated blue {pair.blue.port}, green {pair.green.port}")
        target = pair.blue
        run.from_state = SlotState.EMPTY.value
    assert target is not None
    run.slot = target.name.value
    name = container_name(project, env, target.name)
    run.hosts = where
    ident = await installation_id(ctx)
    parts = {n: HostDeploy(ctx.host_named(n), host_label(n, where)) for n in where}

    try:
        if labelled(where):
            results = await gather_hosts(ctx, where, lambda host: _deploy_on_host(
                ctx, run, parts[host.name], project, env, target, name, image, ident))
            for host_name, result in zip(where, results):
                if isinstance(result, BaseException):
                    raise named(host_name, result)
        else:
            await _deploy_on_host(ctx, run, parts[LOCAL_HOST], project, env, target, name,
                                  image, ident)

        deployed = target.with_(
            state=SlotState.DEPLOYED, image=image, container_id=parts[where[0]].new.id,
            container_ids=(tuple((n, parts[n].new.id) for n in where) if labelled(where)
                           else ()),
            container_name=name, deployed_at=utcnow(), promoted_at=None,
            grace_expires_at=None, last_health=_worst([parts[n].health for n in where]),
        )
        async with run.step("update proxy and registry"):
            await commit(ctx, run, None if reserved else pair, pair.with_slot(deployed),
                         expected_version=pair.version)
    except BaseException:
        await asyncio.gather(*[_undo(run, part, name) for part in parts.values()])
        if reserved is not None:
            try:
                await release_ports(ctx, reserved, run.actor)
                run.log(f"released ports {reserved.blue.port}/{reserved.green.port}")
            except Exception as exc:
                run.log(f"could not release ports {reserved.blue.port}/{reserved.green.port}: "
                        f"{exc}", level="error")
        raise

    await _remove_replaced(ctx, run, where, parts)
    run.to_state = SlotState.DEPLOYED.value
    url = ctx.config.preview_url(project, env, target.name.value)
    on = f" on {', '.join(where)}" if labelled(where) else ""
    result = {"slot": target.name.value, "port": target.port, "image": image,
              "preview_url": url, "container": name}
    if labelled(where):
        result["hosts"] = list(where)
    return (f"{project} ({env.value}) {image} deployed to {target.name.value} "
            f"on port {target.port}{on}; preview {url}", result)


async def _registry_digest(ctx: Context, image: str) -> str | None:
    """The digest `image` names in the configured registry now (None: pull as usual)."""
    url = ctx.config.docker.registry_url
    return None if url is None else await ImageRegistry(str(url)).digest(image)


async def _pull(run: OperationRun, host: Host, where: tuple[str, ...], image: str,
                wanted: str | None) -> None:
    """Pull `image` on `host`, unless the host has it as the registry's digest for its tag
    now: then a pull would change nothing, and on a remote host it costs round trips through
    SSH (the registry's manifest, then each layer's check)."""
    label = host_label(host, where)
    if wanted is not None and wanted in await host.docker.image_digests(image):
        run.log(f"{label}{image} is here already ({wanted[:19]}): no pull")
        return

    def progress(counts: PullCounts) -> None:
        run.progress(events.PullProgress, step=label + "pull image", image=image, **asdict(counts))

    await host.docker.pull(image, progress)
    run.log(f"{label}pulled {image}")


async def _drop(futures: list[asyncio.Future | None]) -> None:
    """Cancel work started ahead that is no longer wanted, and wait for it to end."""
    waiting = [f for f in futures if f is not None]
    for future in waiting:
        future.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


async def _deploy_on_host(ctx: Context, run: OperationRun, part: HostDeploy, project: str,
                          env: Environment, target: Slot, name: str, image: str,
                          ident: str | None) -> None:
    """One host's part: the previous container put aside, the new one started and healthy.
    `part` records each step as it happens, for the undo."""
    docker, label = part.host.docker, part.label

    def log(message: str, level: str = "info") -> None:
        run.log(label + message, level=level)

    async with run.step(label + "stop previous container"):
        previous = target.container_on(part.host.name)
        old = await docker.inspect(previous) if previous else None
        if old is None:
            log("slot has no container")
        else:
            part.old, part.old_was_running = old, old.status == "running"
            await docker.stop(old.id)
            # Keep it, under another name, until the new one is healthy.
            await docker.rename(old.id, name + REPLACED_SUFFIX)
            log(f"stopped {name} ({old.image}); kept until the new one is healthy")

    async with run.step(label + "start container"):
        # The health gate must hear the new container, not another program that happens
        # to answer on the slot's port (the new one would fail to bind and restart).
        if await part.host.health.answers(target.port):
            raise OperationFailed(
                f"Port {target.port} of {project} ({env.value}) {target.name.value} is taken "
                "by another program; stop it (see `codeb ports`) and deploy again")
        part.new = await docker.run_slot(
            name=name, image=image, port=target.port,
            labels=labels_for(project, env.value, target.name.value, ident),
            env={"CODEB_PROJECT": project, "CODEB_ENVIRONMENT": env.value,
                 "CODEB_SLOT": target.name.value},
        )
        log(f"started {name} ({part.new.id[:12]}) on port {target.port}")

    def waiting(elapsed_s: float, timeout_s: float, detail: str) -> None:
        run.progress(events.HealthWait, step=label + "health check", elapsed_s=elapsed_s,
                     timeout_s=timeout_s, detail=detail, fraction=elapsed_s / timeout_s)

    async with run.step(label + "health check"):
        part.health = await wait_healthy(ctx, log, part.new, target.port, host=part.host,
                                         waiting=waiting)


def _worst(records: list[HealthRecord | None]) -> HealthRecord | None:
    """The slot's last health over its hosts: the slowest answer."""
    known = [r for r in records if r is not None]
    return max(known, key=lambda r: r.latency_ms or 0.0) if known else None


async def _remove_replaced(ctx: Context, run: OperationRun, where: tuple[str, ...],
                           parts: dict[str, HostDeploy]) -> None:
    """The containers the new ones replaced, now that the slot file names the new ones."""
    if not labelled(where):
        old = parts[LOCAL_HOST].old
        if old is not None:
            await ctx.host.docker.remove(old.id)
        return
    for part in parts.values():
        if part.old is None:
            continue
        try:
            await part.host.docker.remove(part.old.id)
        except Exception as exc:  # the deploy is done: the next operation's recovery removes it
            run.warn(f"{part.label}could not remove the replaced container {part.old.name}: {exc}")


async def _undo(run: OperationRun, part: HostDeploy, name: str) -> None:
    """Put one host back as it was before the deploy."""
    docker, label = part.host.docker, part.label
    try:
        if part.new is not None:
            logs = (await docker.logs(part.new.id, tail=5)).strip()
            if logs:
                run.log(f"{label}last lines of the new container: "
                        + " | ".join(logs.splitlines()[-5:]), level="error")
            await docker.remove(part.new.id)
            run.log(f"{label}removed the new container {name}")
        if part.old is not None:
            await docker.rename(part.old.id, name)
            if part.old_was_running:
                await docker.start(part.old.id)
                run.log(f"{label}restarted the previous container {name} ({part.old.image})")
    except Exception as exc:
        run.log(f"{label}could not fully restore the previous state: {exc}", level="error")
