"""Cleanup: grace slots past their expiry (or forced, or one named slot) become empty and their
containers are removed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from codeb_tui.domain.errors import TransitionRefused
from codeb_tui.domain.model import Environment, SlotName, SlotState, utcnow
from codeb_tui.engine.context import Context
from codeb_tui.engine.hosts import on_hosts
from codeb_tui.engine.operation import OperationRun
from codeb_tui.engine.proxy_switch import commit

ProjectLock = Callable[[str, Environment], AbstractAsyncContextManager[None]]
"""The facade's project lock, taken per project+environment while it is cleaned."""


async def cleanup(ctx: Context, run: OperationRun, lock: ProjectLock, project: str | None,
                  env_filter: Environment | None, force: bool,
                  chosen: SlotName | None) -> tuple[str, dict[str, Any]]:
    now = utcnow()
    cleaned: list[str] = []
    targets = [(p, e) for p, e in await asyncio.to_thread(ctx.registry.list_slot_files)
               if (project is None or p == project) and (env_filter is None or e is env_filter)]
    if project is not None and not targets:
        raise TransitionRefused(f"{project} has no slots"
                                + (f" in {env_filter.value}" if env_filter else ""))
    for name, env in targets:
        try:
            held = lock(name, env)
            await held.__aenter__()
        except Exception as exc:  # busy (another operation) or unreadable: the others go on
            run.warn(f"skipped {name} ({env.value}): {exc}")
            continue
        try:
            pair = await ctx.registry.aread_slots(name, env)
            if pair is None:
                continue
            for slot in pair.slots():
                if chosen is not None:
                    if slot.name is not chosen:
                        continue
                    if slot.state is SlotState.ACTIVE:
                        raise TransitionRefused(
                            f"Slot {slot.name.value} of {name} ({env.value}) is active and "
                            "serves production; promote or roll back first")
                    if slot.state is SlotState.EMPTY:
                        raise TransitionRefused(
                            f"Slot {slot.name.value} of {name} ({env.value}) is already empty")
                elif slot.state is not SlotState.GRACE:
                    continue
                elif not force and slot.grace_expires_at and slot.grace_expires_at > now:
                    left = slot.grace_expires_at - now
                    run.log(f"{name} ({env.value}) {slot.name.value}: grace has "
                            f"{left.total_seconds() / 3600:.1f} h left; kept")
                    continue
                async with run.step(f"remove {name} ({env.value}) {slot.name.value}"):
                    pair = await commit(ctx, run, pair, pair.with_slot(slot.emptied()),
                                        expected_version=pair.version)
                    await on_hosts(ctx, pair.hosts, lambda host, slot=slot: host.docker.remove(
                        slot.container_name or slot.container_on(host.name) or ""))
                    run.slot, run.from_state, run.to_state = slot.name.value, slot.state.value, "empty"
                    cleaned.append(f"{name}-{env.suffix}-{slot.name.value}")
                    run.log(f"removed {slot.image} from {name} ({env.value}) {slot.name.value}")
        finally:
            await held.__aexit__(None, None, None)
    summary = f"cleaned {len(cleaned)} slot(s)" + (f": {', '.join(cleaned)}" if cleaned else "")
    return summary, {"cleaned": cleaned}
