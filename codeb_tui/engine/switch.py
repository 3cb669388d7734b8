"""Promote and rollback: one switch procedure. Traffic moves to a slot that has just answered
its health check; the slot it leaves goes into grace, kept warm for the way back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from codeb_tui.domain.errors import HealthCheckFailed, TransitionRefused
from codeb_tui.domain.model import Environment, ProjectSlots, Slot, SlotState, utcnow
from codeb_tui.engine.context import Context
from codeb_tui.engine.health_gate import check_slot
from codeb_tui.engine.hosts import host_label, labelled, on_hosts
from codeb_tui.engine.operation import OperationRun
from codeb_tui.engine.proxy_switch import commit


@dataclass(frozen=True)
class SwitchKind:
    source: SlotState
    """The state of the slot traffic moves to."""
    check_step: str
    unhealthy: str
    """The words of a failed check ("Health Check Failed", "Grace slot unhealthy")."""
    refuse_unhealthy: bool
    """A failed check is a refusal (exit 2) rather than a failure (exit 1)."""


PROMOTE = SwitchKind(SlotState.DEPLOYED, "final health check", "Health Check Failed", False)
ROLLBACK = SwitchKind(SlotState.GRACE, "grace slot health check", "Grace slot unhealthy", True)


def _nothing_to_switch(kind: SwitchKind, project: str, env: Environment,
                       pair: ProjectSlots | None) -> TransitionRefused:
    states = describe_states(pair)
    if kind is PROMOTE:
        return TransitionRefused(f"Cannot promote {project} ({env.value}): no deployed slot"
                                 f" ({states}). Run deploy first")
    return TransitionRefused(f"No grace slot: cannot roll back {project} ({env.value}) ({states})")


async def switch(ctx: Context, run: OperationRun, kind: SwitchKind, project: str,
                 env: Environment, pair: ProjectSlots | None) -> tuple[Slot, Slot | None]:
    """Move production traffic to the slot in `kind.source`; the active one goes into grace.
    Returns (the slot now live, the slot now in grace). The caller holds the project lock and
    has read the slot file (`pair`) under it: the write checks its version."""
    target = pair.in_state(kind.source) if pair else None
    if pair is None or target is None:
        raise _nothing_to_switch(kind, project, env, pair)
    run.slot, run.image, run.hosts = target.name.value, target.image, pair.hosts
    run.from_state, run.to_state = kind.source.value, SlotState.ACTIVE.value
    async with run.step(kind.check_step):
        try:
            # Every host's slot must answer before any host's traffic moves.
            checks = await on_hosts(ctx, pair.hosts,
                                    lambda host: check_slot(ctx, target, kind.unhealthy, host))
        except HealthCheckFailed as exc:
            if kind.refuse_unhealthy:
                raise TransitionRefused(str(exc)) from None
            raise
        for name, health in zip(pair.hosts, checks):
            run.log(f"{host_label(name, pair.hosts)}{target.name.value} answers {health.detail} "
                    f"in {health.latency_ms:.0f} ms")
        health = max(checks, key=lambda record: record.latency_ms or 0.0)
    now = utcnow()
    after = pair.with_slot(target.with_(state=SlotState.ACTIVE, promoted_at=now,
                                        grace_expires_at=None, last_health=health))
    previous = pair.active
    if previous is not None:
        after = after.with_slot(previous.with_(
            state=SlotState.GRACE, grace_expires_at=now + timedelta(hours=ctx.config.grace_hours)))
    async with run.step("switch proxy"):
        await commit(ctx, run, pair, after, expected_version=pair.version)
    return target, previous


async def promote(ctx: Context, run: OperationRun, project: str, env: Environment,
                  pair: ProjectSlots | None) -> tuple[str, dict[str, Any]]:
    live, previous = await switch(ctx, run, PROMOTE, project, env, pair)
    url = ctx.config.production_url(project, env)
    kept = (f"; {previous.name.value} ({previous.image}) kept in grace for "
            f"{ctx.config.grace_hours:g} h") if previous else ""
    return (f"{project} ({env.value}) {live.image} on {live.name.value} is live at {url}"
            f"{_on_hosts(run)}{kept}", _result(live, previous, url, run))


async def rollback(ctx: Context, run: OperationRun, project: str, env: Environment,
                   pair: ProjectSlots | None) -> tuple[str, dict[str, Any]]:
    live, previous = await switch(ctx, run, ROLLBACK, project, env, pair)
    url = ctx.config.production_url(project, env)
    return (f"{project} ({env.value}) rolled back to {live.name.value} ({live.image}) at {url}"
            f"{_on_hosts(run)}", _result(live, previous, url, run))


def _on_hosts(run: OperationRun) -> str:
    return f" on {', '.join(run.hosts)}" if labelled(run.hosts) else ""


def _result(live: Slot, previous: Slot | None, url: str, run: OperationRun) -> dict[str, Any]:
    result = {"slot": live.name.value, "port": live.port, "image": live.image, "url": url,
              "grace_slot": previous.name.value if previous else None}
    if labelled(run.hosts):
        result["hosts"] = list(run.hosts)
    return result


def describe_states(pair: ProjectSlots | None) -> str:
    if pair is None:
        return "no slots yet"
    return ", ".join(f"{s.name.value} is {s.state.value}" for s in pair.slots())
