"""App-wide messages. The App posts the results of its poller, registry watcher, drift check and
operation workers to itself; screens post what the operator asked for, and the App acts on it.
Screens never call the App: these messages are the whole of what flows upwards."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from codeb_tui.domain import events
from codeb_tui.domain.model import Environment
from codeb_tui.domain.status import SlotStatus
from codeb_tui.engine.facade import ServicesState
from codeb_tui.tui.session import DriftCount

# --- what the App learnt ------------------------------------------------------------------------


@dataclass
class StatusRefreshed(Message):
    """New slot records (live poll or registry change). Only the newest one matters."""

    rows: list[SlotStatus]
    checked_at: float | None  # monotonic time of the live poll the health comes from
    poll_period: float | None = None

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, StatusRefreshed)


class SlotsChecked(Message):
    """Live checks changed some slot records (the App keeps which rows until it redraws)."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, SlotsChecked)


@dataclass
class ServicesChecked(Message):
    """Reachability of Docker, Caddy and the database (None: could not be asked)."""

    services: ServicesState | None

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ServicesChecked)


@dataclass
class OperationUpdated(Message):
    """An event of one of this session's operations (streamed as it happens)."""

    operation_id: int
    event: events.Event | None  # None: the worker ended without an event (error, cancel)


@dataclass
class DriftChecked(Message):
    """The cheap periodic reconcile (files vs database, plus the poller's missing containers)."""

    drift: DriftCount

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, DriftChecked)


# --- what the operator asked for ------------------------------------------------------------------


@dataclass
class OperationRequested(Message):
    """Run an engine operation on a project+environment (the operator confirmed what was
    needed); its events stream into the log panes."""

    operation: str  # deploy | promote | rollback | cleanup
    project: str
    environment: Environment
    image: str | None = None
    confirm_grace: bool = False
    force: bool = False
    slot: str | None = None


@dataclass
class ReconcileApplied(Message):
    """A repair or a prune changed the database, the proxy or the containers."""


@dataclass
class RefreshRequested(Message):
    """Poll now instead of at the end of the period."""


@dataclass
class MainScreenResumed(Message):
    """The main view is on top again: a drift check held back while it was covered may run."""
