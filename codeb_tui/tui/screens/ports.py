"""Port ranges with used and free pairs, and every disagreement between ssot.json, running
containers and listening sockets, explained (Engine.ports)."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from codeb_tui.domain.errors import CodebError
from codeb_tui.domain.status import PortConflictKind, PortsReport
from codeb_tui.tui.screens.base import ConsoleScreen
from codeb_tui.tui.session import ConsoleSession
from codeb_tui.tui.widgets.footer import KeyFooter

REFRESH_EVERY = 3.0
"""Seconds between reloads of the report while the screen is visible (live mode only)."""

EXPLAIN = {
    PortConflictKind.FOREIGN_LISTENER: "another program listens here; the allocator skips this pair",
    PortConflictKind.HELD_BY_UNKNOWN_PROCESS:
        "allocated in ssot.json, yet a program that is not its container listens",
    PortConflictKind.CONTAINER_NOT_IN_REGISTRY:
        "a codeb container uses a port ssot.json does not allocate",
    PortConflictKind.OWNER_MISMATCH: "ssot.json and the container's label name different projects",
}


class PortsScreen(ConsoleScreen):
    BINDINGS = [
        Binding("escape,q", "app.pop_screen", "Back", id="ports-back"),
        Binding("r", "reload", "Reload", id="ports-reload"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="ports"):
            yield Static("loading the port report…", id="ports-report")
        yield KeyFooter()

    def __init__(self, session: ConsoleSession) -> None:
        super().__init__(session)
        self._shown: PortsReport | None = None

    def on_mount(self) -> None:
        self.action_reload()
        if self.session.live:
            self.set_interval(REFRESH_EVERY, self._tick)

    def _tick(self) -> None:
        """Reload only while this screen is the one on top (not under help or a modal)."""
        if self.is_current:
            self._load()

    def action_reload(self) -> None:
        self._load()

    @work(exclusive=True, group="ports", exit_on_error=False)
    async def _load(self) -> None:
        target = self.query_one("#ports-report", Static)
        try:
            report = await self.session.engine.ports(self.session.principal)
        except CodebError as exc:
            self._shown = None
            target.update(Text(f"cannot build the port report: {exc}", style="bold red"))
            return
        if report != self._shown:  # unchanged: no redraw, the scroll position stays
            self._shown = report
            target.update(render_report(report))


def render_report(report: PortsReport) -> Group:
    parts = []
    summary = Table(title="Port ranges", title_justify="left", expand=False)
    for column in ("Environment", "Range", "Used pairs", "Free pairs"):
        summary.add_column(column)
    for env in report.environments:
        low, high = env.range
        summary.add_row(env.environment.value, f"{low}-{high}", str(len(env.used_pairs)),
                        str(env.free_pairs))
    parts.append(summary)
    for env in report.environments:
        if not env.used_pairs:
            continue
        table = Table(title=f"{env.environment}: used pairs", title_justify="left", expand=False)
        for column in ("Blue/Green", "Project (ssot.json)", "Listening", "Containers"):
            table.add_column(column)
        for pair in env.used_pairs:
            table.add_row(f"{pair.blue}/{pair.green}",
                          pair.project or Text("(not codeb)", style="yellow"),
                          " ".join(map(str, pair.listening)) or "-",
                          " ".join(pair.containers) or "-")
        parts.append(table)
    conflicts = report.conflicts
    if conflicts:
        table = Table(title=f"{len(conflicts)} conflict(s)", title_justify="left", expand=False,
                      title_style="bold red")
        for column in ("Port", "Kind", "What it means"):
            table.add_column(column)
        for c in conflicts:
            table.add_row(str(c.port), Text(c.kind.value, style="bold red"),
                          f"{c.detail}\n({EXPLAIN.get(c.kind, '')})")
        parts.append(table)
    else:
        parts.append(Text("no conflicts: ssot.json, the containers and the listening sockets agree",
                          style="green"))
    return Group(*parts)
