"""The operations console: `codeb` with no subcommand.

The app owns what outlives a screen: the engine facade and the principal it asks for, the live
poller, the registry watcher, the drift check and this session's operations (workers that stream
the engine's events). It keeps what they found in the session, which screens read; screens ask
for things with messages (messages.py) and never call back into the app.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timezone

from textual import on, work
from textual.app import App
from textual.binding import Binding
from textual.screen import ModalScreen, Screen
from textual.worker import Worker, WorkerState

from codeb_tui.domain import events
from codeb_tui.domain.access import Principal
from codeb_tui.domain.config import Config
from codeb_tui.domain.errors import CodebError, ConfigError
from codeb_tui.domain.model import Environment, SlotState
from codeb_tui.domain.status import ContainerState, SlotStatus
from codeb_tui.engine.facade import Engine, local_principal
from codeb_tui.engine.reconcile import DriftKind
from codeb_tui.tui.commands import OperationCommands
from codeb_tui.tui.messages import (
    DriftChecked,
    MainScreenResumed,
    OperationRequested,
    OperationUpdated,
    ReconcileApplied,
    RefreshRequested,
    ServicesChecked,
    StatusRefreshed,
)
from codeb_tui.tui.operations import OperationRecord
from codeb_tui.tui.rows import merge_health
from codeb_tui.tui.screens.base import ConsoleScreen
from codeb_tui.tui.screens.confirm import ConfirmModal
from codeb_tui.tui.screens.deploy import DeployModal
from codeb_tui.tui.screens.help import HelpScreen
from codeb_tui.tui.screens.history import HistoryScreen
from codeb_tui.tui.screens.logs import LogsScreen
from codeb_tui.tui.screens.main import MainScreen
from codeb_tui.tui.screens.operations import OperationsScreen
from codeb_tui.tui.screens.ports import PortsScreen
from codeb_tui.tui.screens.reconcile import ReconcileScreen
from codeb_tui.tui.session import ConsoleSession, DriftCount
from codeb_tui.tui.themes import builtin_themes

CPU_BUDGET = 0.10
"""Share of one core the live poller may use: a poll that costs more CPU stretches its period."""
LIVE_AFTER_FIRST_FRAME = 0.5
"""Seconds from the first registry rows to the first live poll: time for the slot table to
size its columns (it does so when idle) and draw."""
SERVICES_EVERY = 3.0
"""Seconds between Docker / Caddy / database reachability checks."""
DRIFT_EVERY = 30.0
"""Seconds between the cheap drift checks behind the top bar's badge (and after each operation)."""
NOT_RUNNING = (None, ContainerState.RUNNING, ContainerState.UNKNOWN)
"""Container states that do not count as a missing container (UNKNOWN: Docker was not reachable)."""


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class CodebApp(App[int]):
    CSS_PATH = ["app.tcss"]
    TITLE = "codeb"
    ENABLE_COMMAND_PALETTE = True
    COMMANDS = App.COMMANDS | {OperationCommands}

    BINDINGS = [
        Binding("q", "quit", "Quit", id="quit", tooltip="Leave the console; running operations are cancelled"),
        Binding("question_mark,f1", "help", "Help", id="help", tooltip="Keys and their binding ids"),
        Binding("f2", "cycle_theme", "Theme", id="theme", tooltip="Next theme"),
        Binding("o", "operations", "Ops", id="operations", tooltip="This session's operations and their logs"),
        Binding("t", "ports", "Ports", id="ports", tooltip="Port ranges and conflicts"),
        Binding("R", "reconcile", "Reconcile", id="reconcile",
                tooltip="Slot files vs database vs containers, proxy and ports; repair, prune"),
        Binding("H", "history", "History", id="history",
                tooltip="The audit trail from the database: search, read each operation's log"),
    ]

    def __init__(self, config: Config, engine: Engine | None = None,
                 principal: Principal | None = None, *, live: bool = True,
                 clock: Callable[[], datetime] | None = None) -> None:
        super().__init__()
        self.config = config
        self.engine = engine or Engine(config)
        self._owns_engine = engine is None
        self.session = ConsoleSession(config, self.engine, principal or local_principal(),
                                      live=live, clock=clock or _utcnow)
        self._drift_pending = False
        self._live_started = False
        self._wake = asyncio.Event()
        self._registry_signature: tuple | None = None
        self._themes = builtin_themes()
        for theme in self._themes:
            self.register_theme(theme)
        validate_console_config(config, {t.name for t in self._themes} | set(self.available_themes))
        self.theme = config.console.theme
        if config.console.keymap:
            self.set_keymap(dict(config.console.keymap))

    @property
    def operations(self) -> list[OperationRecord]:
        """This session's operations, oldest first."""
        return self.session.operations

    # start-up --------------------------------------------------------------------------------
    def get_default_screen(self) -> Screen:
        return MainScreen(self.session)

    async def on_mount(self) -> None:
        self._load_registry()
        if self.session.live:
            self.set_interval(self.config.console.registry_watch_interval, self._watch_registry)

    async def on_unmount(self) -> None:
        if self._owns_engine:
            await self.engine.aclose()

    # the live poller ---------------------------------------------------------------------------
    @work(exclusive=True, group="poller", exit_on_error=False, description="live status poller")
    async def _poll_loop(self) -> None:
        """Poll the live status (health checked concurrently by the engine), then wait
        poll_interval, or longer when the poll cost more than CPU_BUDGET of a core."""
        session = self.session
        interval = self.config.console.poll_interval
        services_due = 0.0
        while True:
            self._wake.clear()  # a wake-up asked for during this poll means one more poll
            cpu = time.process_time()
            if time.monotonic() >= services_due:
                services_due = time.monotonic() + SERVICES_EVERY
                self._check_services()
            try:
                rows = await self._live_status()
                session.status_error = None
            except CodebError as exc:  # a corrupt slot file, a refusal: shown, polling goes on
                rows, session.status_error = session.status, str(exc)
            except Exception as exc:  # a surprise below the engine: shown, polling goes on
                session.status_error = f"live status failed: {str(exc).splitlines()[0][:120]}"
                try:
                    rows = merge_health(await self._registry_status(), session.status)
                except Exception:
                    rows = session.status
            cost = time.process_time() - cpu
            session.poll_period = max(interval, cost / CPU_BUDGET)
            self._publish(rows, time.monotonic())
            try:
                await asyncio.wait_for(self._wake.wait(), session.poll_period)
            except TimeoutError:
                pass

    async def _registry_status(self) -> list[SlotStatus]:
        return await self.engine.status(self.session.principal, live=False)

    async def _live_status(self) -> list[SlotStatus]:
        """The live status. The registry may have changed while the checks ran (an operation
        finished): keep the files' word, with the health of slots that did not change."""
        rows = await self.engine.status(self.session.principal, live=True)
        return merge_health(await self._registry_status(), rows)

    @work(exclusive=True, group="services", exit_on_error=False)
    async def _check_services(self) -> None:
        try:
            services = await self.engine.services(self.session.principal)
        except CodebError:  # not allowed to look: the top bar says "?"
            services = None
        self.session.services = services
        self.post_message(ServicesChecked(services))

    @on(RefreshRequested)
    def poll_now(self) -> None:
        self._wake.set()

    # the drift badge ---------------------------------------------------------------------------
    def check_drift(self) -> None:
        """Start the cheap drift check, unless a modal is open or an operation of this console
        runs (its database write lags its file write); then it runs when the main view is back."""
        if not self.session.live or not self.screen_stack:  # shutting down: no screen left
            return
        if isinstance(self.screen, ModalScreen) or any(r.running for r in self.session.operations):
            self._drift_pending = True
            return
        self._drift_pending = False
        self._check_drift()

    @on(MainScreenResumed)
    def _main_screen_resumed(self) -> None:
        if self._drift_pending:
            self.check_drift()

    @work(exclusive=True, group="drift", exit_on_error=False, description="drift check")
    async def _check_drift(self) -> None:
        """reconcile(live=False): the slot files (read in a thread) against one database query;
        plus the containers the poller already found missing. Nothing new is asked of Docker."""
        try:
            report = await self.engine.reconcile(self.session.principal, live=False)
        except Exception as exc:  # a registry that cannot be read: the top bar says so already
            self._drift_found(DriftCount(None, {}, str(exc)))
            return
        if report.of_kind(DriftKind.DATABASE_UNREACHABLE):
            self._drift_found(DriftCount(None, {}, "database unreachable"))
            return
        by_kind: dict[str, int] = {}
        for d in report.remaining:
            if not self._busy(d.project, d.environment):  # mid-operation: file written, row next
                by_kind[d.kind.value] = by_kind.get(d.kind.value, 0) + 1
        missing = sum(1 for s in self.session.status
                      if s.state is not SlotState.EMPTY and s.container_status not in NOT_RUNNING
                      and not self._busy(s.project, s.environment))
        if missing:
            by_kind[DriftKind.MISSING_CONTAINER.value] = missing
        self._drift_found(DriftCount(sum(by_kind.values()), by_kind))

    def _busy(self, project: str | None, environment: str | None) -> bool:
        """An operation (of anyone) holds the project+environment lock right now."""
        if project is None or environment is None:
            return False
        try:
            env = Environment(environment)
        except ValueError:
            return False
        return self.engine.lock_holder(project, env) is not None

    def _drift_found(self, drift: DriftCount) -> None:
        self.session.drift = drift
        self.post_message(DriftChecked(drift))

    @on(DriftChecked)
    def _drift_checked(self) -> None:
        if (target := self._redraw_target()) is not None:
            target.refresh_drift()

    # the registry watcher ----------------------------------------------------------------------
    def _watch_registry(self) -> None:
        signature = self.engine.registry_signature()
        if signature != self._registry_signature:
            first = self._registry_signature is None
            self._registry_signature = signature
            if not first:
                self._load_registry()

    @work(exclusive=True, group="registry", exit_on_error=False)
    async def _load_registry(self) -> None:
        """Registry only (no Docker, no health): fast, for changes made by anyone."""
        session = self.session
        try:
            rows = await self._registry_status()
            session.status_error = None
        except CodebError as exc:
            session.status_error = str(exc)
            self._publish(session.status, session.checked_at)
            return
        if session.live:
            rows = merge_health(rows, session.status)
        self._publish(rows, session.checked_at)

    def _publish(self, rows: list[SlotStatus], checked_at: float | None) -> None:
        session = self.session
        session.status = rows
        session.checked_at = checked_at
        self.post_message(StatusRefreshed(rows, checked_at, session.poll_period))

    def _redraw_target(self) -> MainScreen | None:
        """The main screen when it is on top (else it redraws when it comes back)."""
        screen = self.screen if self.screen_stack else None  # no screen: shutting down
        return screen if isinstance(screen, MainScreen) else None

    @on(StatusRefreshed)
    def _status_refreshed(self) -> None:
        if (target := self._redraw_target()) is not None:
            target.refresh_rows()
        if self.session.live and not self._live_started:
            self._live_started = True
            self.set_timer(LIVE_AFTER_FIRST_FRAME, self._start_live)

    def _start_live(self) -> None:
        """The first frame comes from the registry alone; polling and the drift check start
        once it is drawn, so that a thousand health checks and a scan of every file do not
        hold it back."""
        self._poll_loop()
        self.set_timer(0.4, self.check_drift)
        self.set_interval(DRIFT_EVERY, self.check_drift)

    @on(ServicesChecked)
    def _services_checked(self) -> None:
        if (target := self._redraw_target()) is not None:
            target.refresh_services()

    # operations --------------------------------------------------------------------------------
    @on(OperationRequested)
    def _operation_requested(self, request: OperationRequested) -> None:
        self.start_operation(request.operation, request.project, request.environment,
                             image=request.image, confirm_grace=request.confirm_grace,
                             force=request.force, slot=request.slot)

    def start_operation(self, operation: str, project: str, environment: str, *,
                        image: str | None = None, confirm_grace: bool = False,
                        force: bool = False, slot: str | None = None) -> OperationRecord | None:
        """Run an engine operation as a worker; its events stream into the log panes."""
        session = self.session
        busy = session.running_operation(project, environment)
        if busy is not None:
            self.notify(f"{busy.title} is still running", title="Busy", severity="warning")
            return None
        principal, detail = session.principal, ""
        if operation == "deploy":
            assert image is not None, "deploy needs an image"
            stream = self.engine.deploy(principal, project, image, environment,
                                        confirm_grace=confirm_grace)
            detail = image
        elif operation == "promote":
            stream = self.engine.promote(principal, project, environment)
        elif operation == "rollback":
            stream = self.engine.rollback(principal, project, environment)
        elif operation == "cleanup":
            stream = self.engine.cleanup(principal, project, environment, force=force, slot=slot)
            detail = slot or ""
        else:
            raise ValueError(operation)
        record = OperationRecord(operation, project, environment, detail)
        session.operations.append(record)
        self.run_worker(self._operate(record, stream), name=f"op:{record.id}",
                        group=f"op-{project}-{environment}", exclusive=True, exit_on_error=False,
                        description=record.title)
        self._operation_changed(record, record.title)
        return record

    async def _operate(self, record: OperationRecord, stream) -> None:
        async for event in stream:
            record.add(event)
            self.post_message(OperationUpdated(record.id, event))

    @on(OperationUpdated)
    def _operation_updated(self, message: OperationUpdated) -> None:
        record = self.session.operation(message.operation_id)
        if record is None or message.event is None:
            return
        event = message.event
        self._operation_changed(record, f"{event.ts:%H:%M:%S} {event.line()}")
        if isinstance(event, events.Finished):
            self.notify(event.summary, title=f"{record.operation} done", timeout=6)
            self._changed_things()
        elif isinstance(event, events.Failed):
            title = "Locked" if event.error_type == "LockHeld" else f"{record.operation} {record.state}"
            self.notify(event.error, title=title, severity="error", timeout=15)
            self._load_registry()
            self.check_drift()

    def _operation_changed(self, record: OperationRecord, line: str) -> None:
        for screen in self.screen_stack:
            if isinstance(screen, ConsoleScreen):
                screen.operation_line(record, line)

    @on(ReconcileApplied)
    def _changed_things(self) -> None:
        """An operation or a repair changed things: reload the registry view, poll, and
        check the drift again."""
        self._load_registry()
        self.poll_now()
        self.check_drift()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place worker failures surface: never swallowed."""
        worker = event.worker
        if event.state not in (WorkerState.ERROR, WorkerState.CANCELLED):
            return
        if worker.name.startswith("op:"):
            record = self.session.operation(int(worker.name[3:]))
            if record is not None and record.running:
                if event.state is WorkerState.ERROR:
                    line = record.fail(f"{type(worker.error).__name__}: {worker.error}")
                    self.notify(str(worker.error), title=f"{record.operation} failed", severity="error", timeout=15)
                else:
                    line = record.fail("cancelled", state="cancelled")
                self._operation_changed(record, line)
        elif event.state is WorkerState.ERROR:
            self.notify(f"{worker.description or worker.name}: {worker.error}", title="Console error",
                        severity="error", timeout=15)
            if worker.group == "poller" and self.session.live:  # keep polling after a surprise
                self.set_timer(self.config.console.poll_interval, self._poll_loop)

    # actions -----------------------------------------------------------------------------------
    def _push_once(self, action: str, screen_type: type[ConsoleScreen], *args) -> None:
        """Open a screen unless it is already on top (pressing its key again stacks no second
        one) or the principal may not (then say why)."""
        if self.session.refused(self.notify, action) or isinstance(self.screen, screen_type):
            return
        self.push_screen(screen_type(self.session, *args))

    def action_help(self) -> None:
        self._push_once("help", HelpScreen, all_bindings())

    def action_operations(self) -> None:
        self._push_once("operations", OperationsScreen)

    def action_ports(self) -> None:
        self._push_once("ports", PortsScreen)

    def action_reconcile(self) -> None:
        self._push_once("reconcile", ReconcileScreen)

    def action_history(self) -> None:
        self._push_once("history", HistoryScreen)

    def action_cycle_theme(self) -> None:
        names = [t.name for t in self._themes]
        index = names.index(self.theme) if self.theme in names else -1
        self.theme = names[(index + 1) % len(names)]
        self.notify(f"theme {self.theme}", timeout=2)


KEYED_SCREENS: tuple[tuple[str, type], ...] = (
    ("everywhere", CodebApp), ("main", MainScreen), ("ports", PortsScreen),
    ("operations", OperationsScreen), ("logs", LogsScreen), ("reconcile", ReconcileScreen),
    ("history", HistoryScreen), ("deploy", DeployModal), ("confirm", ConfirmModal),
    ("help", HelpScreen))
"""Where each binding works, in the help screen's order."""


def all_bindings() -> list[tuple[str, Binding]]:
    return [(where, binding) for where, cls in KEYED_SCREENS
            for binding in cls.BINDINGS if isinstance(binding, Binding)]


def binding_ids() -> set[str]:
    """Every binding id the keymap may remap."""
    return {binding.id for _, binding in all_bindings() if binding.id}


def validate_console_config(config: Config, themes: set[str]) -> None:
    console = config.console
    if console.theme not in themes:
        raise ConfigError(f"console.theme: unknown theme {console.theme!r} "
                          f"(known: {', '.join(sorted(t for t in themes if t.startswith('codeb')))})")
    known = binding_ids()
    for binding_id, keys in console.keymap.items():
        if binding_id not in known:
            raise ConfigError(f"console.keymap.{binding_id}: unknown binding id "
                              f"(known: {', '.join(sorted(known))})")
        if not keys.strip():
            raise ConfigError(f"console.keymap.{binding_id}: expected keys such as ctrl+d")


def run_console(config: Config, principal: Principal | None = None) -> int:
    """Entry point of `codeb` without a subcommand."""
    app = CodebApp(config, principal=principal)
    result = app.run()
    return result if isinstance(result, int) else 0
