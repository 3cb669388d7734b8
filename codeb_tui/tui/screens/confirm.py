"""A confirmation that shows what will change; production also asks for the project name."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


class ConfirmModal(ModalScreen[bool]):
    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="confirm-cancel"),
    ]

    def __init__(self, title: str, lines: list[str], confirm_label: str = "Confirm",
                 require_text: str | None = None) -> None:
        super().__init__()
        self.title_text = title
        self.lines = lines
        self.confirm_label = confirm_label
        self.require_text = require_text

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.title_text, id="dialog-title")
            yield Static("\n".join(self.lines), id="dialog-body")
            if self.require_text:
                yield Label(f"This is production. Type {self.require_text!r} to confirm:")
                yield Input(placeholder=self.require_text, id="confirm-text")
            with Horizontal(id="dialog-buttons"):
                yield Button(self.confirm_label, id="confirm", variant="warning",
                             disabled=bool(self.require_text))
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        if self.require_text:
            self.query_one("#confirm-text", Input).focus()
        else:
            self.query_one("#cancel", Button).focus()

    @on(Input.Changed, "#confirm-text")
    def _typed(self, event: Input.Changed) -> None:
        self.query_one("#confirm", Button).disabled = event.value.strip() != self.require_text

    @on(Input.Submitted, "#confirm-text")
    def _submitted(self, event: Input.Submitted) -> None:
        if event.value.strip() == self.require_text:
            self.dismiss(True)
        else:
            self.notify(f"Type {self.require_text!r} exactly", severity="warning")

    @on(Button.Pressed, "#confirm")
    def _confirm(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(False)
