"""What every full screen of the console shares: the session it reads, and keys offered only
when the principal may use them."""

from __future__ import annotations

from textual.binding import ActiveBinding
from textual.screen import Screen

from codeb_tui.domain.model import Environment
from codeb_tui.tui.operations import OperationRecord
from codeb_tui.tui.session import ConsoleSession


class ConsoleScreen(Screen):
    def __init__(self, session: ConsoleSession) -> None:
        super().__init__()
        self.session = session

    def offer_environment(self) -> Environment | None:
        """The environment this screen's actions would touch now (None: not one in particular)."""
        return None

    @property
    def active_bindings(self) -> dict[str, ActiveBinding]:
        """Textual's, less the actions the principal may not do: the footer leaves them out.
        Their keys still reach the actions, which say why they refuse (a binding disabled
        through check_action would swallow the key silently)."""
        environment = self.offer_environment()
        return {key: active for key, active in super().active_bindings.items()
                if self.session.offers(active.binding.action, environment)}

    def operation_line(self, record: OperationRecord, line: str) -> None:
        """A line of one of this session's operations (the App hands each to every screen)."""

    def operation_progress(self, record: OperationRecord) -> None:
        """`record.progress` changed (a progress event, the end of its step or operation)."""
