"""The operations console: `codeb` with no subcommand.

The app owns what outlives a screen: the engine facade and the principal it asks for, the live
poller, the registry watcher, the drift check and this session's operations (workers that stream
the engine's events). It keeps what they found in the session, which screens read; screens ask
for things with messages (messages.py) and never call back into the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import signal
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
    SlotsChecked,
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

CHECK_TICK = 0.25
"""Seconds between the poller's rounds: each checks the slots on screen that are due, then a
slice of the others."""
SWEEP_EVERY = 4.0
"""Seconds within which the sweep reaches every slot (the rows on screen: every poll_interval).
A slice each round, never one long burst: a thousand checks at once stall the event loop."""
RESCAN_ABOVE = 32
"""More slot files changed in one batch than this: the registry is read whole (one thread hop)
rather than file by file."""
FIRST_ROWS_WAIT = 1.0
"""Seconds the start waits for the registry's rows before anything is drawn, so that the first
frame has them: empty frames drawn meanwhile slowed the read down, and the table's first
drawing with rows then came a pass later. A registry slower than that shows its rows when
they come."""
LIVE_AFTER_FIRST_FRAME = 0.5
"""Seconds from the first registry rows to the first live poll: time for the first frame to
be drawn (Textual draws a new screen in a few passes)."""
SERVICES_EVERY = 3.0
"""Seconds between Docker / Caddy / database reachability checks."""
DRIFT_EVERY = 30.0
"""Seconds between the cheap drift checks behind the top bar's badge (and after each operation),
when slot files changed or the database came or went since the last; else DRIFT_IDLE_EVERY."""
DRIFT_IDLE_EVERY = 300.0
"""Seconds between drift checks while nothing changed: a check reads every slot file."""
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
                 clock: Callable[[], datetime] | None = None, served: bool = False) -> None:
        super().__init__()
        self.served = served
        """Run by `codeb ssh-serve` for one SSH session: SIGHUP means the client is gone, and
        the session's end is audited."""
        self._ended_because = "the operator quit"
        self.config = config
        self.engine = engine or Engine(config)
        self._owns_engine = engine is None
        self.session = ConsoleSession(config, self.engine, principal or local_principal(),
                                      live=live, clock=clock or _utcnow)
        self._drift_pending = False
        self._drift_stale = True
        """Slot files changed, or the database came or went, since the last drift check."""
        self._drift_at = 0.0
        self._live_started = False
        self._wake = asyncio.Event()
        self._first_rows = asyncio.Event()
        self._changed_rows: set[tuple[str, Environment]] = set()
        """Rows whose records live checks changed since the main screen last drew them."""
        self._reload_all = False
        self._reload_keys: set[tuple[str, Environment]] = set()
        """Slot files to read again (`_reload_all`: every one) by the registry worker."""
        self._reloading = False
        self._check_error: str | None = None
        """The last failure of live checks shown in the top bar (cleared by the next success)."""
        self.registry_watcher = None
        """The engine's RegistryWatcher while the console is live (its `mode` says how)."""
        self._themes = builtin_themes()
        for theme in self._themes:
            self.register_theme(theme)
        validate_console_config(config, {t.name for t in self._themes} | set(self.available_themes))
        self.theme = config.console.theme
        if config.console.keymap:
            self.set_keymap(dict(config.console.keymap))
        self._collector_paused = False
        """The cyclic garbage collector is off from on_load to the first frame."""

    @property
    def operations(self) -> list[OperationRecord]:
        """This session's operations, oldest first."""
        return self.session.operations

    # start-up --------------------------------------------------------------------------------
    def get_default_screen(self) -> Screen:
        return MainScreen(self.session)

    def on_load(self) -> None:
        """The start builds long-lived things (widgets, styles, rows): the cyclic collector's
        passes over them find little and took ~0.1 s before the first frame. Paused until it
        is drawn (_start_live; without live checks, after the first rows)."""
        self._collector_paused = gc.isenabled()
        gc.disable()

    async def on_mount(self) -> None:
        if self.served:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.hang_up)
        self._load_registry()
        with contextlib.suppress(TimeoutError):  # else the rows come when they are read
            await asyncio.wait_for(self._first_rows.wait(), FIRST_ROWS_WAIT)

    async def on_unmount(self) -> None:
        self._resume_collector()  # quit before the first frame
        if self.served:
            await self._audit_session_end()
        if self._owns_engine:
            await self.engine.aclose()

    # an SSH session's end -----------------------------------------------------------------------
    def hang_up(self) -> None:
        """The SSH client left or idled out: let this session's running operations end (an
        operation is never cut mid-switch), then exit; the audit row says the session ended."""
        self._ended_because = "the SSH session ended (client gone or idle)"
        self.run_worker(self._end_after_operations(), group="hang-up", exclusive=True,
                        exit_on_error=False, description="end of the SSH session")

    async def _end_after_operations(self) -> None:
        for worker in [w for w in self.workers if w.name.startswith("op:") and w.is_running]:
            with contextlib.suppress(Exception):
                await worker.wait()
        self.exit(0)

    async def _audit_session_end(self) -> None:
        principal = self.session.principal
        operations = [{"operation": r.title, "result": r.state} for r in self.session.operations]
        warning = await self.engine.audit_event(
            principal.actor, principal.team, "ssh.session", "ended",
            {"event": "session ended", "reason": self._ended_because, "operations": operations})
        if warning:
            self.log.warning(warning)

    # the live poller ---------------------------------------------------------------------------
    @work(exclusive=True, group="poller", exit_on_error=False, description="live status poller")
    async def _poll_loop(self) -> None:
        """Every CHECK_TICK a round: the slots of the selected row and the rows on screen not
        checked for poll_interval, then a slice of the sweep over all the others, checked by
        the engine in that order (the registry is not read: file events bring its changes).
        The results go to the session; only the rows they changed are drawn."""
        session = self.session
        interval = self.config.console.poll_interval
        session.poll_period = interval
        services_due = sweep_at = 0
        while True:
            started = time.monotonic()
            everything_on_screen = self._wake.is_set()  # ctrl+r, an operation ended
            self._wake.clear()
            if started >= services_due:
                services_due = started + SERVICES_EVERY
                self._check_services()
            first = self._slots_on_screen(started - interval + CHECK_TICK, everything_on_screen)
            on_screen = {(s.project, s.environment, s.slot) for s in first}
            swept, sweep_at = self._sweep_slice(sweep_at, on_screen)
            if first or swept:
                await self._check(first + swept)
            elapsed = time.monotonic() - started
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, CHECK_TICK - elapsed))
            except TimeoutError:
                pass

    async def _check(self, slots: list[SlotStatus]) -> None:
        session = self.session
        try:
            checked = await self.engine.check_slots(session.principal, slots)
        except CodebError as exc:  # a refusal: shown, polling goes on
            session.status_error = self._check_error = str(exc)
            return
        except Exception as exc:  # a surprise below the engine: shown, polling goes on
            session.status_error = self._check_error = \
                f"live status failed: {str(exc).splitlines()[0][:120]}"
            return
        if session.status_error is not None and session.status_error == self._check_error:
            session.status_error = None
        session.checked_at = time.monotonic()
        self._changed_rows |= session.apply_checks(checked)
        self.post_message(SlotsChecked())

    def _slots_on_screen(self, due_before: float, everything: bool) -> list[SlotStatus]:
        """The slots of the selected row and the rows on screen, last checked before
        `due_before` (all of them when `everything`)."""
        main = next((s for s in self.screen_stack if isinstance(s, MainScreen)), None)
        if main is None or not self.session.checkable:
            return []
        found = []
        for project, environment in main.rows_to_check_first():
            row = self.session.row(project, environment)
            for slot in row.slots() if row is not None else ():
                if slot.state is not SlotState.EMPTY and (
                        everything or slot.checked_at is None or slot.checked_at < due_before):
                    found.append(slot)
        return found

    def _sweep_slice(self, at: int, skip: set) -> tuple[list[SlotStatus], int]:
        """The next slots of the sweep, from place `at` among the session's checkable slots:
        as many as reach every slot within SWEEP_EVERY. Returns them and the next place."""
        records, checkable = self.session.status, self.session.checkable
        size = math.ceil(len(checkable) * CHECK_TICK / SWEEP_EVERY)
        picked: list[SlotStatus] = []
        for _ in range(len(checkable)):
            if len(picked) >= size:
                break
            at %= len(checkable)
            slot = records[checkable[at]]
            at += 1
            if (slot.project, slot.environment, slot.slot) not in skip:
                picked.append(slot)
        return picked, at

    @on(SlotsChecked)
    def _slots_checked(self) -> None:
        changed, self._changed_rows = self._changed_rows, set()
        if (target := self._redraw_target()) is not None:
            target.update_rows(changed)  # else it redraws in full when it comes back

    async def _registry_status(self) -> list[SlotStatus]:
        return await self.engine.status(self.session.principal, live=False)

    @work(exclusive=True, group="services", exit_on_error=False)
    async def _check_services(self) -> None:
        try:
            services = await self.engine.services(self.session.principal)
            if self.session.multi_host:  # each within its timeout; a host known down at once
                self.session.hosts = await self.engine.host_states(self.session.principal)
        except CodebError:  # not allowed to look: the top bar says "?"
            services = None
        before = self.session.services
        if before is not None and before.database != (services and services.database):
            self._drift_stale = True  # the database came or went: what it holds may differ
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
        self._drift_stale, self._drift_at = False, time.monotonic()
        self._check_drift()

    def _periodic_drift(self) -> None:
        if self._drift_stale or time.monotonic() - self._drift_at >= DRIFT_IDLE_EVERY:
            self.check_drift()

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
    @work(exclusive=True, group="registry-watch", exit_on_error=False, description="registry watcher")
    async def _watch_registry(self) -> None:
        """Slot files and locks changed by anyone, told by file-system events: the changed
        files are read again; a lock taken or released redraws the rows (who holds what).
        Started after the first frame (watchfiles loads then): every file is read once more
        as soon as the watcher watches (its first step), for what changed before."""
        self.registry_watcher = watcher = self.engine.watch_registry()
        batches = aiter(watcher)
        first = asyncio.ensure_future(anext(batches))
        await asyncio.sleep(0)  # its first step, which sets up the watches
        self._load_registry()
        changes = await first
        while True:
            self._drift_stale = self._drift_stale or bool(changes.slot_files) or changes.rescan
            if changes.rescan or len(changes.slot_files) > RESCAN_ABOVE:
                self._load_registry()
            elif changes.slot_files:
                self._load_registry(changes.slot_files)
            elif changes.locks and (target := self._redraw_target()) is not None:
                target.refresh_rows()
            changes = await anext(batches)

    def _load_registry(self, keys: set[tuple[str, Environment]] | frozenset | None = None) -> None:
        """Read the slot files of `keys` (project, environment) again, or every one (None):
        registry only (no Docker, no health), fast, for changes made by anyone. Asks made
        while a read runs are gathered for the next read, never lost."""
        if keys is None:
            self._reload_all = True
        else:
            self._reload_keys |= set(keys)
        if not self._reloading:
            self._reloading = True
            self._reload_registry()

    @work(group="registry", exit_on_error=False, description="registry reader")
    async def _reload_registry(self) -> None:
        session = self.session
        try:
            while self._reload_all or self._reload_keys:
                everything, keys = self._reload_all, self._reload_keys
                self._reload_all, self._reload_keys = False, set()
                try:
                    if everything:
                        rows = await self._registry_status()
                    else:
                        rows = [s for s in session.status if s.key not in keys]
                        for project, environment in sorted(keys):
                            rows += await self.engine.status(session.principal, project,
                                                             environment.value, live=False)
                    session.status_error = None
                except CodebError as exc:
                    session.status_error = str(exc)
                    self._publish(session.status, session.checked_at)
                    continue
                if session.live:
                    rows = merge_health(rows, session.status)
                self._publish(rows, session.checked_at)
        finally:
            self._reloading = False

    def _publish(self, rows: list[SlotStatus], checked_at: float | None) -> None:
        session = self.session
        session.status = rows
        session.checked_at = checked_at
        self._first_rows.set()
        self.post_message(StatusRefreshed(rows, checked_at, session.poll_period))

    def _redraw_target(self) -> MainScreen | None:
        """The main screen when it is on top (else it redraws when it comes back)."""
        screen = self.screen if self.screen_stack else None  # no screen: shutting down
        return screen if isinstance(screen, MainScreen) else None

    @on(StatusRefreshed)
    def _status_refreshed(self) -> None:
        if (target := self._redraw_target()) is not None:
            target.refresh_rows()
        if not self.session.live:
            self.call_after_refresh(self._resume_collector)
        elif not self._live_started:
            self._live_started = True
            self.set_timer(LIVE_AFTER_FIRST_FRAME, self._start_live)

    def _resume_collector(self) -> None:
        if self._collector_paused:
            self._collector_paused = False
            gc.enable()

    def _start_live(self) -> None:
        """The first frame comes from the registry alone; polling, the registry watcher and
        the drift check start once it is drawn, so that a thousand health checks and a scan of
        every file do not hold it back. What the start built (Textual's widgets, styles and
        caches, the rows) lives as long as the console: frozen out of the garbage collector's
        full passes, which otherwise walk it all now and then and stall the event loop (the
        start's garbage is collected first, once, so none of it is kept), then the collector
        runs again."""
        gc.collect()
        gc.freeze()
        self._resume_collector()
        self._watch_registry()
        self._poll_loop()
        self.set_timer(0.4, self.check_drift)
        self.set_interval(DRIFT_EVERY, self._periodic_drift)

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
        if isinstance(event, events.Progress):  # drawn in place, in no log
            self._operation_changed(record, None)
            return
        self._operation_changed(record, f"{event.ts:%H:%M:%S} {event.line()}")
        if isinstance(event, events.Finished):
            self.notify(event.summary, title=f"{record.operation} done", timeout=6)
            self._changed_things()
        elif isinstance(event, events.Failed):
            title = "Locked" if event.error_type == "LockHeld" else f"{record.operation} {record.state}"
            self.notify(event.error, title=title, severity="error", timeout=15)
            self._load_registry()
            self.check_drift()

    def _operation_changed(self, record: OperationRecord, line: str | None) -> None:
        """A new line of `record` (None: only its progress changed) to every screen."""
        for screen in self.screen_stack:
            if isinstance(screen, ConsoleScreen):
                if line is not None:
                    screen.operation_line(record, line)
                screen.operation_progress(record)

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


def run_console(config: Config, principal: Principal | None = None, served: bool = False) -> int:
    """Entry point of `codeb` without a subcommand (and of each `codeb ssh-serve` session)."""
    app = CodebApp(config, principal=principal, served=served)
    result = app.run()
    return result if isinstance(result, int) else 0
