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
        """`record`'s progress, or nothing (hidden) when it has none."""
        event = record.progress if record is not None and record.running else None
        self.display = event is not None
        if record is None or event is None:
            return
        # Text, not markup: "[shop/production]" and image names are shown as they are.
        self.query_one("#progress-what", Static).update(
            Text(f"[{record.project}/{record.environment}] {event.step}"))
        self.query_one(ProgressBar).update(progress=round(max(0.0, min(1.0, event.fraction)) * 100))
        self.query_one("#progress-figures", Static).update(Text(event.label()))
