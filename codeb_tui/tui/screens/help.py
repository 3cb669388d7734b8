"""Every key, what it does and its binding id (the id the config's console.keymap remaps)."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from codeb_tui.tui.screens.base import ConsoleScreen
from codeb_tui.tui.session import ConsoleSession
from codeb_tui.tui.widgets.footer import KeyFooter


class HelpScreen(ConsoleScreen):
    BINDINGS = [Binding("escape,q", "app.pop_screen", "Back", id="help-back")]

    def __init__(self, session: ConsoleSession, bindings: list[tuple[str, Binding]]) -> None:
        """`bindings`: (where, binding) for every screen, as the App knows them."""
        super().__init__(session)
        self.bindings = bindings

    def compose(self) -> ComposeResult:
        keymap = self.session.config.console.keymap
        table = Table(title="codeb console keys", expand=False, show_edge=False)
        table.add_column("Where")
        table.add_column("Keys", style="bold")
        table.add_column("Action")
        table.add_column("Binding id", style="dim")
        for where, binding in self.bindings:
            if binding.action == "host" and not self.session.multi_host:
                continue  # no host to choose from: the local machine only
            keys = keymap.get(binding.id or "", binding.key)
            table.add_row(where, keys, binding.tooltip or binding.description or binding.action,
                          binding.id or "")
        text = ("\nRemap any key in the config: console: {keymap: {deploy: ctrl+d}}.\n"
                "Ctrl+P opens the command palette: /we:deploy, /we:promote, /we:rollback, "
                "/we:cleanup, /we:logs by project name; /we:reconcile, /we:history, /we:deploy-new.\n"
                "Slot states: ● active (serves production)  ◆ deployed (preview only)  "
                "◐ grace (rollback target)  ○ empty.  Health: ✓ answer time, ✗ failure.")
        with VerticalScroll(id="help"):
            yield Static(table)
            yield Static(text)
        yield KeyFooter()
