"""Deploy: an image into the idle slot, proven healthy before anything else changes, and undone
completely on any failure (the previous container restarted, the registry as it was)."""

from __future__ import annotations

import asyncio
from typing import Any

from codeb_tui.domain.errors import OperationFailed, TransitionRefused
from codeb_tui.domain.model import Environment, ProjectSlots, SlotState, container_name, utcnow
from codeb_tui.engine.context import Context
from codeb_tui.engine.health_gate import wait_healthy
from codeb_tui.engine.operation import OperationRun
from codeb_tui.engine.port_book import installation_id, release_ports, reserve_ports, seen_ports
from codeb_tui.engine.proxy_switch import commit
from codeb_tui.infra.docker_engine import ContainerInfo, labels_for

REPLACED_SUFFIX = "-replaced"


async def deploy(ctx: Context, run: OperationRun, project: str, env: Environment, image: str,
                 confirm_grace: bool) -> tuple[str, dict[str, Any]]:
    """The body of a deploy; the caller holds the project lock."""
    docker = ctx.host.docker
    async with run.step("read slot registry"):
        pair = await ctx.registry.aread_slots(project, env)
        if pair is None:
            run.log(f"new project: {project} has no {env.value} slots yet")
            target = None
        else:
            target = pair.deploy_target()
            run.log(f"target slot {target.name.value} ({target.state.value}, port {target.port})")
            if target.state is SlotState.GRACE and not confirm_grace:
                raise TransitionRefused(
                    f"Slot {target.name.value} of {project} ({env.value}) is in grace "
                    f"(the rollback target, image {target.image}); deploying into it "
                    "destroys the rollback target. Confirm with --yes"
                )
            run.from_state = target.state.value

    # A new project needs the ports in use: ask Docker and the host while pulling.
    seen = asyncio.ensure_future(seen_ports(ctx)) if pair is None else None
    try:
        if ctx.config.docker.pull:
            async with run.step("pull image"):
                await docker.pull(image)
                run.log(f"pulled {image}")
    except BaseException:
        if seen is not None:
            seen.cancel()
            await asyncio.gather(seen, return_exceptions=True)
        raise

    reserved: ProjectSlots | None = None
    if pair is None:
        assert seen is not None
        async with run.step("allocate ports"):
            pair = reserved = await reserve_ports(ctx, project, env, await seen, run.actor)
            run.log(f"allocated blue {pair.blue.port}, green {pair.green.port}")
        target = pair.blue
        run.from_state = SlotState.EMPTY.value
    assert target is not None
    run.slot = target.name.value
    name = container_name(project, env, target.name)

    old: ContainerInfo | None = None
    new: ContainerInfo | None = None
    old_was_running = False
    try:
        async with run.step("stop previous container"):
            old = await docker.inspect(target.container_id) if target.container_id else None
            if old is None:
                run.log("slot has no container")
            else:
                old_was_running = old.status == "running"
                await docker.stop(old.id)
                # Keep it, under another name, until the new one is healthy.
                await docker.rename(old.id, name + REPLACED_SUFFIX)
                run.log(f"stopped {name} ({old.image}); kept until the new one is healthy")

        async with run.step("start container"):
            # The health gate must hear the new container, not another program that happens
            # to answer on the slot's port (the new one would fail to bind and restart).
            if target.port in await ctx.host.listening_ports():
                raise OperationFailed(
                    f"Port {target.port} of {project} ({env.value}) {target.name.value} is taken "
                    "by another program; stop it (see `codeb ports`) and deploy again")
            new = await docker.run_slot(
                name=name, image=image, port=target.port,
                labels=labels_for(project, env.value, target.name.value,
                                  await installation_id(ctx)),
                env={"CODEB_PROJECT": project, "CODEB_ENVIRONMENT": env.value,
                     "CODEB_SLOT": target.name.value},
            )
            run.log(f"started {name} ({new.id[:12]}) on port {target.port}")

        async with run.step("health check"):
            health = await wait_healthy(ctx, run.log, new, target.port)

        deployed = target.with_(
            state=SlotState.DEPLOYED, image=image, container_id=new.id,
            container_name=name, deployed_at=utcnow(), promoted_at=None,
            grace_expires_at=None, last_health=health,
        )
        async with run.step("update proxy and registry"):
            await commit(ctx, run, None if reserved else pair, pair.with_slot(deployed),
                         expected_version=pair.version)
    except BaseException:
        await _undo(ctx, run, name, new, old, old_was_running, reserved)
        raise

    if old is not None:
        await docker.remove(old.id)
    run.to_state = SlotState.DEPLOYED.value
    url = ctx.config.preview_url(project, env, target.name.value)
    return (f"{project} ({env.value}) {image} deployed to {target.name.value} "
            f"on port {target.port}; preview {url}",
            {"slot": target.name.value, "port": target.port, "image": image,
             "preview_url": url, "container": name})


async def _undo(ctx: Context, run: OperationRun, name: str, new: ContainerInfo | None,
                old: ContainerInfo | None, old_was_running: bool,
                reserved: ProjectSlots | None) -> None:
    """Put everything back as it was before the deploy."""
    docker = ctx.host.docker
    try:
        if new is not None:
            logs = (await docker.logs(new.id, tail=5)).strip()
            if logs:
                run.log("last lines of the new container: " + " | ".join(logs.splitlines()[-5:]),
                        level="error")
            await docker.remove(new.id)
            run.log(f"removed the new container {name}")
        if old is not None:
            await docker.rename(old.id, name)
            if old_was_running:
                await docker.start(old.id)
                run.log(f"restarted the previous container {name} ({old.image})")
        if reserved is not None:
            await release_ports(ctx, reserved, run.actor)
            run.log(f"released ports {reserved.blue.port}/{reserved.green.port}")
    except Exception as exc:
        run.log(f"could not fully restore the previous state: {exc}", level="error")
