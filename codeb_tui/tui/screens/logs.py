"""A container's output, followed (docker logs -f through the engine's host)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Log, Static

from codeb_tui.domain.model import Environment, SlotName, container_name

if TYPE_CHECKING:
    from codeb_tui.tui.rows import ProjectRow


class LogsScreen(Screen):
    BINDINGS = [
        Binding("escape,q", "app.pop_screen", "Back", id="logs-back"),
        Binding("b", "other_slot", "Other slot", id="logs-other-slot"),
    ]

    def __init__(self, row: ProjectRow, slot: str) -> None:
        super().__init__()
        self.row = row
        self.slot = slot

    def compose(self) -> ComposeResult:
        yield Static(id="logs-title")
        yield Log(id="container-log", max_lines=5000)
        yield Footer()

    def on_mount(self) -> None:
        self._start()

    def _start(self) -> None:
        row = self.row
        view = next(s for s in row.slots() if s.name == self.slot)
        name = view.container or container_name(row.project, Environment(row.environment), SlotName(self.slot))
        self.query_one("#logs-title", Static).update(
            f" logs {name}  ({view.state}, {view.image or '-'})  following…")
        self.query_one(Log).clear()
        self._follow(name)

    @work(exclusive=True, group="logs", exit_on_error=False)
    async def _follow(self, name: str) -> None:
        log = self.query_one(Log)
        docker = self.app.engine.host.docker  # type: ignore[attr-defined]
        try:
            async for line in docker.stream_logs(name):
                log.write_line(line)
        except Exception as exc:  # container gone, Docker down
            log.write_line(f"-- cannot follow {name}: {exc}")
            return
        log.write_line(f"-- {name} stopped")

    def action_other_slot(self) -> None:
        self.slot = "green" if self.slot == "blue" else "blue"
        self._start()
