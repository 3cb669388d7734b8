"""The running operation's progress in one line: what it is doing, a bar, and the figures (a
pull's layers and megabytes, a health wait's seconds out of the timeout). Hidden while no
running operation reports any; layout and colours come from app.tcss."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import ProgressBar, Static

from codeb_tui.tui.operations import OperationRecord


class OperationProgress(Horizontal):
    def compose(self) -> ComposeResult:
        yield Static(id="progress-what")
        yield ProgressBar(total=100, show_eta=False, id="progress-bar")
        yield Static(id="progress-figures")

    def show(self, record: OperationRecord | None) -> None:
        """`record`'s progress (several hosts at work share the line), or nothing (hidden)
        when it has none."""
        summary = record.progress_board.summary() if record is not None and record.running else None
        self.display = summary is not None
        if record is None or summary is None:
            return
        what, fraction, figures = summary
        # Text, not markup: "[shop/production]" and image names are shown as they are.
        self.query_one("#progress-what", Static).update(
            Text(f"[{record.project}/{record.environment}] {what}"))
        self.query_one(ProgressBar).update(progress=round(fraction * 100))
        self.query_one("#progress-figures", Static).update(Text(figures))
