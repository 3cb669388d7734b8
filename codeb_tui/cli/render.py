"""What the commands print: one table renderer, event streams, and each answer as text or JSON.

Tables are plain columns two spaces apart with no trailing blanks and no wrapping, so scripts
can split them on whitespace; on a terminal the header is bold.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any

from codeb_tui.domain import events
from codeb_tui.domain.errors import EXIT_FAILED, EXIT_OK
from codeb_tui.domain.status import PortsReport, SlotStatus
from codeb_tui.engine.facade import DbMigration, DbStatus, TeamSummary, dumps_event
from codeb_tui.engine.reconcile import ReconcileReport

KEY_NOTE = ("This is the only time the key is shown: codeb stores only its SHA-256 hash. "
            "Keep it in a secret store.")
_WIDE = 1_000_000  # never wrap nor cut a cell (long URLs, drift details)
_TRAILING_BLANKS = re.compile(r"[ ]+((?:\x1b\[[0-9;]*m)*)$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` on one line with what a terminal would act on (newlines, escapes, carriage
    returns) shown as `\\n`, `\\x1b`: an operation's line echoes its input before validation,
    and a hostile project name must neither forge lines nor drive the terminal."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None,
          indent: int = 0) -> str:
    # rich (about 35 ms) only when a table is printed: not for --help, --json or event lines.
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    styled = sys.stdout.isatty()
    grid = Table(box=None, show_header=header is not None, header_style="bold" if styled else "",
                 pad_edge=False, padding=(0, 1))
    for name in header or rows[0]:
        grid.add_column(Text(name if header else ""), no_wrap=True)
    for row in rows:
        grid.add_row(*(Text(cell) for cell in row))  # Text: a cell is never read as markup
    console = Console(file=io.StringIO(), width=_WIDE, force_terminal=styled,
                      color_system="standard" if styled else None, highlight=False)
    console.print(grid)
    margin = " " * indent
    return "\n".join(margin + _TRAILING_BLANKS.sub(r"\1", line)
                     for line in console.file.getvalue().splitlines())


def emit(as_json: bool, data: dict[str, Any], text: str | Callable[[], str]) -> None:
    """`text` may be a function: a table is then built (and rich imported, ~100 ms at start-up)
    only when it is shown, never for --json."""
    if as_json:
        print(json.dumps(data, default=str), flush=True)
    else:
        print(text if isinstance(text, str) else text(), flush=True)


def progress_text(summary: tuple[str, float, str], width: int) -> str:
    """A ProgressBoard's summary as one terminal line of at most `width` characters, bar first."""
    what, fraction, figures = summary
    filled = round(fraction * 20)
    text = f"[{'#' * filled}{'-' * (20 - filled)}] {printable(f'{what}: {figures}')}"
    return text[:max(width, 1)]


class _ProgressLine:
    """The one line a terminal shows for transient events, rewritten in place (never wrapped,
    which would leave the old text behind) and erased before the next line is printed."""

    def __init__(self) -> None:
        self.drawn = False
        self.board = events.ProgressBoard()

    def draw(self) -> None:
        summary = self.board.summary()
        if summary is None:
            self.erase()
            return
        width = shutil.get_terminal_size().columns - 1
        sys.stdout.write(f"\r{progress_text(summary, width)}\x1b[K")
        sys.stdout.flush()
        self.drawn = True

    def erase(self) -> None:
        if self.drawn:
            sys.stdout.write("\r\x1b[K")
            sys.stdout.flush()
            self.drawn = False


async def print_stream(stream: AsyncIterator[events.Event], as_json: bool) -> int:
    """Print an operation's events as they come; the exit code of its terminal event. Progress
    events are a line rewritten in place on a terminal, JSON lines with --json, else left out
    (a log file gets the step lines)."""
    terminal: events.Event | None = None
    progress = _ProgressLine() if not as_json and sys.stdout.isatty() else None
    async for event in stream:
        done = isinstance(event, (events.Finished, events.Failed))
        if as_json:
            print(dumps_event(event), flush=True)
        elif isinstance(event, events.Progress):
            if progress is not None:
                progress.board.update(event)
                progress.draw()
        else:
            if progress is not None:
                progress.erase()
                progress.board.update(event)  # a step's end ends its progress
            if not done:
                print(printable(event.line()), flush=True)
                if progress is not None:
                    progress.draw()  # still running on another host: back under the line
        if done:
            terminal = event
    if progress is not None:
        progress.erase()
    if isinstance(terminal, events.Finished):
        if not as_json:
            print(printable(terminal.line()))
        warn(terminal.warnings)
        return EXIT_OK
    if isinstance(terminal, events.Failed):
        # One line for a failure, whatever else happened: the warnings (a database that was
        # down, say) are in the --json event and the history, not in the way of the reason.
        sys.stderr.write(f"codeb: {printable(terminal.error)}\n")
        return terminal.exit_code
    return EXIT_FAILED


def warn(warnings: list[str]) -> None:
    for warning in warnings:
        sys.stderr.write(f"warning: {printable(warning)}\n")


# --- slots and ports ---------------------------------------------------------------------------


def status_text(slots: list[SlotStatus]) -> str:
    if not slots:
        return "no slots yet: deploy a project first"
    rows = [(s.project, s.environment.value, s.slot.value, s.state.value, str(s.port),
             s.image or "-",
             s.health.value + (f" ({s.health_detail})" if s.health_detail else ""),
             s.url or "-") for s in slots]
    header = ("PROJECT", "ENV", "SLOT", "STATE", "PORT", "IMAGE", "HEALTH", "URL")
    if any(s.hosts for s in slots):  # projects on remote hosts: each host's word per row
        rows = [(*row, _hosts_cell(s)) for row, s in zip(rows, slots)]
        header = (*header, "HOSTS")
    return table(rows, header)


def _hosts_cell(slot: SlotStatus) -> str:
    """`web1 healthy, web2 unreachable`; `local` for a project on this machine only."""
    if not slot.hosts:
        return "local"
    return ", ".join(f"{h.host} {h.health.value if h.reachable else 'unreachable'}"
                     for h in slot.hosts)


def ports_text(report: PortsReport) -> str:
    out = []
    for env in report.environments:
        low, high = env.range
        out.append(f"{env.environment.value} {low}-{high}: {len(env.used_pairs)} pairs used, "
                   f"{env.free_pairs} free")
        if env.used_pairs:
            out.append(table([(f"{p.blue}/{p.green}", p.project or "(not codeb)")
                              for p in env.used_pairs], indent=2))
    if report.conflicts:
        out.append("conflicts:")
        out.append(table([(str(c.port), f"{c.kind.value}: {c.detail}") for c in report.conflicts],
                         indent=2))
    else:
        out.append("no conflicts")
    return "\n".join(out)


def reconcile_text(report: ReconcileReport) -> str:
    summary = report.summary()
    lines: list[str] = []
    if report.drift:
        lines.append(table(
            [(d.kind.value, d.project or "-", d.environment or "-", d.slot or "-",
              "fixed" if d.fixed else "fixable" if d.fixable else "cannot fix", d.detail)
             for d in report.drift],
            ("KIND", "PROJECT", "ENV", "SLOT", "STATUS", "DETAIL")))
    checked = summary["checked"]
    parts = [f"{checked.get('slots', 0)} slots in {checked.get('slot_files', 0)} files"]
    if "db_rows" in checked:
        parts.append(f"{checked['db_rows']} database rows ({summary['database']})")
    if "containers" in checked:
        parts.append(f"{checked['containers']} containers")
    if "routes_live" in checked:
        parts.append(f"{checked['routes_live']} live routes")
    lines.append(f"checked {', '.join(parts)} in {summary['elapsed_ms']:.0f} ms")
    if summary["busy"]:
        lines.append(f"skipped (an operation is running): {', '.join(summary['busy'])}")
    lines.extend(f"error: {error}" for error in summary["errors"])
    if report.in_sync:
        lines.append(f"in sync: {summary['fixed']} drift(s) repaired" if report.drift
                     else "in sync")
    else:
        remaining, unfixable = summary["remaining"], summary["unfixable"]
        advice = []
        if remaining - unfixable:
            hint = " / ".join(sorted({"--prune" if d.kind == "orphan_container" else "--repair"
                                      for d in report.remaining if d.fixable}))
            advice.append(f"{remaining - unfixable} fixable with {hint}")
        if unfixable:
            advice.append(f"{unfixable} need an operator")
        lines.append(f"drift remains: {remaining} ({'; '.join(advice)})")
    return "\n".join(lines)


# --- teams, keys and the schema ----------------------------------------------------------------


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def team_json(team: Any, active_keys: int | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"id": team.id, "name": team.name, "created_at": _ts(team.created_at)}
    if active_keys is not None:
        data["active_keys"] = active_keys
    return data


def key_json(key: Any) -> dict[str, Any]:
    # Never the key, never its hash.
    return {"id": key.id, "prefix": key.prefix, "team": key.team, "role": key.role,
            "name": key.name, "created_at": _ts(key.created_at), "revoked_at": _ts(key.revoked_at)}


def teams_text(teams: list[TeamSummary]) -> str:
    if not teams:
        return "no teams yet: codeb team create NAME"
    return table([(t.team.name, _ts(t.team.created_at) or "-", str(t.active_keys)) for t in teams],
                 ("TEAM", "CREATED", "ACTIVE KEYS"))


def keys_text(keys: list[Any], team: str | None) -> str:
    if not keys:
        return "no API keys" + (f" for team {team}" if team else "")
    return table([(f"cb_{k.prefix}", k.team, k.role, k.name or "-", _ts(k.created_at) or "-",
                   _ts(k.revoked_at) or "-") for k in keys],
                 ("KEY", "TEAM", "ROLE", "NAME", "CREATED", "REVOKED"))


def print_new_key(as_json: bool, key: str, row: Any) -> None:
    if as_json:
        emit(True, {"key": key, **key_json(row), "note": KEY_NOTE}, "")
        return
    # The key alone on stdout (KEY=$(codeb apikey create ...) works); the rest on stderr.
    sys.stderr.write(f"created API key cb_{row.prefix} for team {row.team}, role "
                     f"{row.role}{f', name {row.name}' if row.name else ''}:\n")
    print(key, flush=True)
    sys.stderr.write(f"{KEY_NOTE}\n")


def db_status_text(status: DbStatus) -> str:
    pending = ("none" if not status.pending else
               ", ".join(f"{v:03d} {name}" for v, name in status.pending) + "  (codeb db migrate)")
    return table([("backend", status.backend), ("where", status.where),
                  ("version", str(status.version)), ("latest", str(status.latest)),
                  ("pending", pending)])


def db_migrate_text(done: DbMigration) -> str:
    if not done.applied:
        return f"{done.description}: up to date (schema version {done.version})"
    return (f"applied migration{'s' if len(done.applied) > 1 else ''} "
            f"{', '.join(f'{v:03d}' for v in done.applied)} to {done.description}: "
            f"schema version {done.version}")
