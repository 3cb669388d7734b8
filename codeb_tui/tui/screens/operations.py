"""This session's operations: pick one to read its log again (kept after it ends)."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Log, OptionList, Static
from textual.widgets.option_list import Option

from codeb_tui.tui.operations import OperationRecord
from codeb_tui.tui.screens.base import ConsoleScreen
from codeb_tui.tui.session import ConsoleSession
from codeb_tui.tui.widgets.footer import KeyFooter
from codeb_tui.tui.widgets.operation_progress import OperationProgress

STATE_STYLE = {"running": "bold magenta", "succeeded": "green", "failed": "bold red",
               "refused": "yellow", "cancelled": "dim"}


class OperationsScreen(ConsoleScreen):
    BINDINGS = [Binding("escape,q", "app.pop_screen", "Back", id="operations-back")]

    def __init__(self, session: ConsoleSession) -> None:
        super().__init__(session)
        self.current: int | None = None

    def compose(self) -> ComposeResult:
        yield Static(" operations of this session (newest first)", id="ops-title")
        with Horizontal(id="ops"):
            yield OptionList(id="ops-list")
            yield Log(id="ops-log", max_lines=5000)
        yield OperationProgress(id="op-progress")
        yield KeyFooter()

    def on_mount(self) -> None:
        self._fill()
        records = self.session.operations
        if records:
            self._show(records[-1])
        else:
            self.query_one(Log).write_line("no operations yet in this session")
        self.query_one(OptionList).focus()

    def _label(self, record: OperationRecord) -> Text:
        text = Text(f"#{record.id} ")
        text.append(f"{record.state:<9}", style=STATE_STYLE.get(record.state, ""))
        text.append(f" {record.title}")
        return text

    def _fill(self) -> None:
        options = self.query_one(OptionList)
        highlighted = options.highlighted
        options.clear_options()
        options.add_options([Option(self._label(r), id=str(r.id))
                             for r in reversed(self.session.operations)])
        if highlighted is not None and highlighted < options.option_count:
            options.highlighted = highlighted

    def _show(self, record: OperationRecord) -> None:
        self.current = record.id
        log = self.query_one(Log)
        log.clear()
        log.write_lines(record.lines)
        self.query_one(OperationProgress).show(record)

    @on(OptionList.OptionHighlighted)
    @on(OptionList.OptionSelected)
    def _picked(self, event) -> None:
        record = self.session.operation(int(event.option.id))
        if record is not None and record.id != self.current:
            self._show(record)

    def operation_line(self, record: OperationRecord, line: str) -> None:
        if record.id == self.current:
            self.query_one(Log).write_line(line)
        self._fill()

    def operation_progress(self, record: OperationRecord) -> None:
        if record.id == self.current:
            self.query_one(OperationProgress).show(record)
