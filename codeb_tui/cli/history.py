"""`codeb history`: the audit trail, newest first (locally or from `--server`)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

import click

from codeb_tui.cli import render
from codeb_tui.cli.app import Session, codeb, command, run
from codeb_tui.domain.errors import BadInput

if TYPE_CHECKING:
    from codeb_tui.api.models import HistoryEntry


def _when(option: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise BadInput(f"{option}: expected an ISO 8601 time such as 2025-01-31T12:00:00Z, got "
                       f"{value!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def history_text(entries: list[HistoryEntry]) -> str:
    if not entries:
        return "no history"
    return render.table(
        [(e.created_at.strftime("%Y-%m-%d %H:%M:%S"), e.actor, e.team or "-", e.action,
          e.project or "-", e.environment or "-", e.result, f"{e.duration_ms:.0f} ms")
         for e in entries],
        ("TIME", "ACTOR", "TEAM", "ACTION", "PROJECT", "ENV", "RESULT", "DURATION"))


@command(codeb, "history", "deployment and audit history, newest first")
@click.argument("project", required=False)
@click.option("--action", metavar="ACTION", help="deploy, promote, rollback, cleanup, ...")
@click.option("--team", metavar="TEAM")
@click.option("--since", metavar="TIME", help="ISO 8601, e.g. 2025-01-31T12:00:00Z")
@click.option("--until", metavar="TIME")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
def history(project: str | None, action: str | None, team: str | None, since: str | None,
            until: str | None, limit: int) -> int:
    start, end = _when("--since", since), _when("--until", until)

    async def work(engine, s: Session) -> None:
        # The API's models (pydantic, ~0.1 s to build) are loaded by the commands that use
        # them, not by every `codeb` start.
        from codeb_tui.api.models import HistoryEntry

        records = await engine.history(s.principal, project=project, action=action, team=team,
                                       since=start, until=end, limit=limit)
        entries = [HistoryEntry.model_validate(record) for record in records]
        render.emit(s.as_json, {"history": [e.model_dump(mode="json") for e in entries]},
                    history_text(entries))
    return run(work)
