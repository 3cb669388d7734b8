"""What one console session knows: the engine and who asks, the last slot status, the services,
the drift count and this session's operations. The App writes it; screens get it when they are
built and read it, so no screen needs the App. No Textual here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from codeb_tui.domain.access import Principal
from codeb_tui.domain.config import Config
from codeb_tui.domain.model import Environment
from codeb_tui.domain.status import SlotStatus
from codeb_tui.engine.facade import Engine, ServicesState
from codeb_tui.tui.operations import OperationRecord
from codeb_tui.tui.rows import ProjectRow, group_rows

ACTION_RIGHTS = {
    "deploy": "deploy",
    "deploy_new": "deploy",
    "promote": "promote",
    "rollback": "rollback",
    "cleanup": "cleanup",
    "logs": "status",
    "ports": "ports",
    "reconcile": "reconcile",
    "repair": "reconcile.repair",
    "prune": "reconcile.prune",
    "history": "history",
}
"""The console's actions (Textual action names) that need a right of the access matrix."""


@dataclass(frozen=True)
class DriftCount:
    """The last cheap drift check: items by kind; `count` None when it could not tell."""

    count: int | None = None
    by_kind: dict[str, int] = field(default_factory=dict)
    error: str | None = None


class ConsoleSession:
    def __init__(self, config: Config, engine: Engine, principal: Principal, *, live: bool,
                 clock: Callable[[], datetime]) -> None:
        self.config = config
        self.engine = engine
        self.principal = principal
        self.live = live
        """Live polling of health and services; off in snapshot tests (no clocks, no latencies)."""
        self.clock = clock
        self.operations: list[OperationRecord] = []
        self.status: list[SlotStatus] = []
        self.checked_at: float | None = None
        """time.monotonic() of the live poll the shown health comes from."""
        self.poll_period: float | None = None
        self.status_error: str | None = None
        self.services: ServicesState | None = None
        self.drift = DriftCount()

    def now(self) -> datetime:
        return self.clock()

    def rows(self) -> list[ProjectRow]:
        return group_rows(self.status)

    # this session's operations -----------------------------------------------------------------
    def running_operation(self, project: str, environment: str) -> OperationRecord | None:
        return next((r for r in self.operations
                     if r.running and r.key == (project, environment)), None)

    def operation(self, operation_id: int) -> OperationRecord | None:
        return next((r for r in self.operations if r.id == operation_id), None)

    # what the principal may do -----------------------------------------------------------------
    def offers(self, action: str, environment: Environment | None = None) -> bool:
        """Whether to offer `action` (in `environment`; None: in any one). The engine checks
        every call anyway; this only keeps keys and commands that would be refused out of
        sight."""
        right = ACTION_RIGHTS.get(action)
        if right is None:
            return True
        where = [environment] if environment is not None else list(Environment)
        return any(self.principal.may(right, env.value) for env in where)

    def offered(self, environment: Environment | None = None) -> frozenset[str]:
        """The guarded actions offered in `environment`."""
        return frozenset(a for a in ACTION_RIGHTS if self.offers(a, environment))

    def refused(self, notify: Callable[..., object], action: str,
                environment: Environment | None = None) -> bool:
        """True, after saying why through `notify`, when the principal may not `action`."""
        if self.offers(action, environment):
            return False
        principal = self.principal
        where = f" in {environment}" if environment is not None else ""
        notify(f"Access Denied: {principal.actor} (role {principal.role}, team "
               f"{principal.team or '-'}) may not {ACTION_RIGHTS[action]}{where}",
               title="Access Denied", severity="error", timeout=8)
        return True
