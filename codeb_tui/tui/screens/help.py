"""Every key, what it does and its binding id (the id the config's console.keymap remaps)."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static


def all_bindings() -> list[tuple[str, Binding]]:
    from codeb_tui.tui.app import CodebApp
    from codeb_tui.tui.screens.confirm import ConfirmModal
    from codeb_tui.tui.screens.deploy import DeployModal
    from codeb_tui.tui.screens.history import HistoryScreen
    from codeb_tui.tui.screens.logs import LogsScreen
    from codeb_tui.tui.screens.main import MainScreen
    from codeb_tui.tui.screens.operations import OperationsScreen
    from codeb_tui.tui.screens.ports import PortsScreen
    from codeb_tui.tui.screens.reconcile import ReconcileScreen

    out = []
    for where, cls in (("everywhere", CodebApp), ("main", MainScreen), ("ports", PortsScreen),
                       ("operations", OperationsScreen), ("logs", LogsScreen),
                       ("reconcile", ReconcileScreen), ("history", HistoryScreen),
                       ("deploy", DeployModal), ("confirm", ConfirmModal), ("help", HelpScreen)):
        for binding in cls.BINDINGS:
            if isinstance(binding, Binding):
                out.append((where, binding))
    return out


class HelpScreen(Screen):
    BINDINGS = [Binding("escape,q", "app.pop_screen", "Back", id="help-back")]

    def compose(self) -> ComposeResult:
        keymap = self.app.config.console.keymap  # type: ignore[attr-defined]
        table = Table(title="codeb console keys", expand=False, show_edge=False)
        table.add_column("Where")
        table.add_column("Keys", style="bold")
        table.add_column("Action")
        table.add_column("Binding id", style="dim")
        for where, binding in all_bindings():
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
        yield Footer()
