"""The epilogue of every operation: its deployment and audit rows, after the file registry.

A database failure is a warning on the operation, never its failure: the rows go to the
journal (engine/history.py) and reach the database later.
"""

from __future__ import annotations

from datetime import datetime, timezone

from codeb_tui.domain import events
from codeb_tui.domain.model import ProjectSlots
from codeb_tui.engine.context import Context
from codeb_tui.engine.operation import OperationRun
from codeb_tui.store.base import AuditRecord, DeploymentRecord, SlotRow


REFUSAL_PATIENCE = 1.0
"""Seconds a refusal waits for a database it has not connected to yet; then its rows go to the
journal and the refusal is answered."""


def result_word(terminal: events.Event) -> str:
    """succeeded | denied | refused | failed: the `result` column of both tables."""
    if isinstance(terminal, events.Finished):
        return "succeeded"
    if isinstance(terminal, events.Failed) and terminal.error_type == "AccessDenied":
        return "denied"
    if isinstance(terminal, events.Failed) and terminal.exit_code == 2:
        return "refused"
    return "failed"


async def record_operation(ctx: Context, run: OperationRun, terminal: events.Event) -> None:
    now = datetime.now(timezone.utc)
    result = result_word(terminal)
    error = terminal.error if isinstance(terminal, events.Failed) else None
    deployment = DeploymentRecord(
        operation_id=run.operation_id, operation=run.operation, project=run.project,
        environment=run.environment, slot=run.slot, image=run.image, result=result,
        started_at=run.started_at, finished_at=now, error=error, actor=run.actor,
    )
    audit = AuditRecord(
        operation_id=run.operation_id, actor=run.actor, team=run.team, action=run.operation,
        project=run.project, environment=run.environment, from_state=run.from_state,
        to_state=run.to_state, result=result, duration_ms=run.elapsed_ms, created_at=now,
        detail={"slot": run.slot, "image": run.image, "error": error},
        log="\n".join(run.lines + [f"{terminal.ts:%H:%M:%S} {terminal.line()}"]),
    )
    rows = [row for pair in run.written for row in slot_rows(pair)]
    refused = result in ("refused", "denied")
    try:
        warning = await ctx.history.record(deployment, audit, rows,
                                           REFUSAL_PATIENCE if refused else None)
    except OSError as exc:  # the journal itself could not be written (disk full, read-only)
        warning = f"history not recorded: {exc}"
    if warning:
        run.warn(warning)


def slot_rows(pair: ProjectSlots) -> list[SlotRow]:
    return [
        SlotRow(project=pair.project, environment=pair.environment.value, slot=s.name.value,
                state=s.state.value, port=s.port, image=s.image, container_id=s.container_id,
                deployed_at=s.deployed_at, promoted_at=s.promoted_at,
                grace_expires_at=s.grace_expires_at, version=pair.version)
        for s in pair.slots()
    ]
