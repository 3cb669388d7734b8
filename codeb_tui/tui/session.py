"""What one console session knows: the engine and who asks, the last slot status, the services,
the drift count and this session's operations. The App writes it; screens get it when they are
built and read it, so no screen needs the App. No Textual here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

from codeb_tui.domain.access import Principal
from codeb_tui.domain.config import Config
from codeb_tui.domain.model import Environment, SlotName, SlotState
from codeb_tui.domain.status import HostState, SlotStatus
from codeb_tui.engine.facade import Engine, ServicesState
from codeb_tui.tui.operations import OperationRecord
from codeb_tui.tui.rows import LIVE_FIELDS, ProjectRow, group_rows

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
        self._status: list[SlotStatus] = []
        self._where: dict[tuple[str, Environment, SlotName], int] = {}
        self.checkable: list[int] = []
        self.checked_at: float | None = None
        """time.monotonic() of the newest live check (each slot has its own `checked_at`)."""
        self.poll_period: float | None = None
        self.status_error: str | None = None
        self.services: ServicesState | None = None
        self.hosts: list[HostState] = []
        """Each host's last probe (the top bar), when the config has remote hosts."""
        self.drift = DriftCount()

    def now(self) -> datetime:
        return self.clock()

    # the slot records ----------------------------------------------------------------------------
    @property
    def status(self) -> list[SlotStatus]:
        """Every slot: the registry's word, with the health of its last live check."""
        return self._status

    @status.setter
    def status(self, records: list[SlotStatus]) -> None:
        self._status = records
        self._where = {(s.project, s.environment, s.slot): i for i, s in enumerate(records)}
        self.checkable = [i for i, s in enumerate(records) if s.state is not SlotState.EMPTY]
        """Places in `status` of the slots with something to check (not empty)."""

    def rows(self) -> list[ProjectRow]:
        return group_rows(self.status)

    def row(self, project: str, environment: Environment) -> ProjectRow | None:
        """One project+environment's row as the records have it now."""
        where = self._where
        blue = where.get((project, environment, SlotName.BLUE))
        green = where.get((project, environment, SlotName.GREEN))
        if blue is None or green is None:
            return None
        return ProjectRow(project, environment, self._status[blue], self._status[green])

    def apply_checks(self, checked: list[SlotStatus]) -> set[tuple[str, Environment]]:
        """Take the live part of checked records whose slot is still as the registry had it
        when the check started (an operation may have changed it meanwhile: its next check
        tells). Returns the project+environments whose records changed."""
        changed = set()
        records = self._status
        for fresh in checked:
            index = self._where.get((fresh.project, fresh.environment, fresh.slot))
            if index is None:
                continue
            current = records[index]
            if (current.state, current.port, current.image) != (fresh.state, fresh.port, fresh.image):
                continue
            if current.version == fresh.version:  # the same file's word: take the record whole
                records[index] = fresh
            else:
                records[index] = replace(current, **{name: getattr(fresh, name)
                                                     for name in LIVE_FIELDS})
            changed.add(fresh.key)
        return changed

    @property
    def multi_host(self) -> bool:
        """Whether the config has remote hosts (then the top bar shows each host's state, and
        rows can be narrowed to one host)."""
        return len(self.engine.host_names()) > 1

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
        if action == "host":  # the host filter: only where there are hosts to choose from
            return self.multi_host
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
