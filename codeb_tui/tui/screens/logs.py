"""A container's output, followed (docker logs -f, through the engine)."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Log, Static

from codeb_tui.domain.model import SlotName, container_name
from codeb_tui.tui.rows import ProjectRow
from codeb_tui.tui.screens.base import ConsoleScreen
from codeb_tui.tui.session import ConsoleSession
from codeb_tui.tui.widgets.footer import KeyFooter


class LogsScreen(ConsoleScreen):
    BINDINGS = [
        Binding("escape,q", "app.pop_screen", "Back", id="logs-back"),
        Binding("b", "other_slot", "Other slot", id="logs-other-slot"),
    ]

    def __init__(self, session: ConsoleSession, row: ProjectRow, slot: SlotName) -> None:
        super().__init__(session)
        self.row = row
        self.slot = slot

    def compose(self) -> ComposeResult:
        yield Static(id="logs-title")
        yield Log(id="container-log", max_lines=5000)
        yield KeyFooter()

    def on_mount(self) -> None:
        self._start()

    def _start(self) -> None:
        row = self.row
        view = row.slot(self.slot)
        name = container_name(row.project, row.environment, self.slot)  # what the engine follows
        self.query_one("#logs-title", Static).update(
            f" logs {name}  ({view.state}, {view.image or '-'})  following…")
        self.query_one(Log).clear()
        self._follow(name)

    @work(exclusive=True, group="logs", exit_on_error=False)
    async def _follow(self, name: str) -> None:
        log = self.query_one(Log)
        session = self.session
        try:
            async for line in session.engine.container_logs(
                    session.principal, self.row.project, self.row.environment, self.slot):
                log.write_line(line)
        except Exception as exc:  # container gone, Docker down, access denied
            log.write_line(f"-- cannot follow {name}: {exc}")
            return
        log.write_line(f"-- {name} stopped")

    def action_other_slot(self) -> None:
        self.slot = self.slot.other
        self._start()
