"""The operations console: `codeb` with no subcommand.

The app owns what outlives a screen: the engine, the live poller, the registry watcher and this
session's operations (workers that stream the engine's events). Screens only draw and ask.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from textual import on, work
from textual.app import App
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import ModalScreen
from textual.worker import Worker, WorkerState

from codeb_tui.domain.config import Config
from codeb_tui.domain import events
from codeb_tui.engine.facade import Engine
from codeb_tui.domain.errors import CodebError, ConfigError
from codeb_tui.infra.image_registry import ImageRegistry
from codeb_tui.tui.commands import OperationCommands
from codeb_tui.tui.messages import DriftChecked, OperationUpdated, ServicesChecked, StatusRefreshed
from codeb_tui.tui.operations import OperationRecord
from codeb_tui.tui.rows import merge_health
from codeb_tui.tui.themes import builtin_themes

CPU_BUDGET = 0.10
"""Share of one core the live poller may use: a poll that costs more CPU stretches its period."""
"""Health checks in flight at once (below the engine's health client pool of 64)."""
SERVICES_EVERY = 3.0
"""Seconds between Docker / Caddy / database reachability checks."""
DRIFT_EVERY = 30.0
"""Seconds between the cheap drift checks behind the top bar's badge (and after each operation)."""


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

    live: reactive[bool] = reactive(True, init=False)
    """Live polling of health and services; off in snapshot tests (no clocks, no latencies)."""

    def __init__(self, config: Config, engine: Engine | None = None, *, live: bool = True,
                 clock: Callable[[], datetime] | None = None,
                 image_registry: ImageRegistry | None = None) -> None:
        super().__init__()
        self.config = config
        self.engine = engine or Engine(config)
        self._owns_engine = engine is None
        self.set_reactive(CodebApp.live, live)
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        url = config.docker.registry_url
        self.image_registry = image_registry or (ImageRegistry(url) if url else None)
        self.operations: list[OperationRecord] = []
        self.status_rows: list[dict[str, Any]] = []
        self.checked_at: float | None = None
        self.poll_period: float | None = None
        self.services: ServicesChecked = ServicesChecked(None, None, None)
        self.status_error: str | None = None
        self.drift: DriftChecked = DriftChecked(None, {})
        self._drift_pending = False
        self._wake = asyncio.Event()
        self._registry_signature: tuple | None = None
        self._themes = builtin_themes()
        for theme in self._themes:
            self.register_theme(theme)
        validate_console_config(config, {t.name for t in self._themes} | set(self.available_themes))
        self.theme = config.console.theme
        if config.console.keymap:
            self.set_keymap(dict(config.console.keymap))

    # start-up --------------------------------------------------------------------------------
    def get_default_screen(self):
        from codeb_tui.tui.screens.main import MainScreen

        return MainScreen()

    async def on_mount(self) -> None:
        self._load_registry()
        if self.live:
            # The first frame comes from the registry alone; live polling starts right after.
            self.call_after_refresh(self.set_timer, 0.1, self._poll_loop)
            self.set_interval(self.config.console.registry_watch_interval, self._watch_registry)
            self.set_timer(0.5, self.check_drift)
            self.set_interval(DRIFT_EVERY, self.check_drift)

    async def on_unmount(self) -> None:
        if self._owns_engine:
            await self.engine.aclose()

    # the live poller ---------------------------------------------------------------------------
    @work(exclusive=True, group="poller", exit_on_error=False, description="live status poller")
    async def _poll_loop(self) -> None:
        """Poll engine.status(live=True) (health checked concurrently by the engine), then wait
        poll_interval, or longer when the poll cost more than CPU_BUDGET of a core."""
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
                self.status_error = None
            except CodebError as exc:  # a corrupt slot file: shown, polling goes on
                rows, self.status_error = self.status_rows, str(exc)
            except Exception as exc:  # Docker unreachable escapes the engine as DockerException
                self.status_error = f"live status failed: {str(exc).splitlines()[0][:120]}"
                try:
                    rows = merge_health(await self.engine.status(live=False), self.status_rows)
                except Exception:
                    rows = self.status_rows
            cost = time.process_time() - cpu
            self.poll_period = max(interval, cost / CPU_BUDGET)
            self._publish(rows, time.monotonic())
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_period)
            except TimeoutError:
                pass

    async def _live_status(self) -> list[dict[str, Any]]:
        """engine.status(live=True) (health checked concurrently, bounded). The registry may have
        changed while the checks ran (an operation finished): keep the files' word, with the
        health of slots that did not change."""
        rows = await self.engine.status(live=True)
        return merge_health(await self.engine.status(live=False), rows)

    @work(exclusive=True, group="services", exit_on_error=False)
    async def _check_services(self) -> None:
        host = self.engine.host

        async def database() -> bool:
            try:
                store = await self.engine.store()
                await store.schema_version()
                return True
            except Exception:
                return False

        docker, caddy, db = await asyncio.gather(host.docker.ping(), host.caddy.ping(), database())
        self.services = ServicesChecked(docker, caddy, db)
        self.post_message(ServicesChecked(docker, caddy, db))

    def poll_now(self) -> None:
        self._wake.set()

    # the drift badge ---------------------------------------------------------------------------
    def check_drift(self) -> None:
        """Start the cheap drift check, unless a modal is open or an operation of this console
        runs (its database write lags its file write); then it runs when the main view is back."""
        if not self.live or not self.screen_stack:  # shutting down: no screen left
            return
        if isinstance(self.screen, ModalScreen) or any(r.running for r in self.operations):
            self._drift_pending = True
            return
        self._drift_pending = False
        self._check_drift()

    def check_drift_if_pending(self) -> None:
        if self._drift_pending:
            self.check_drift()

    @work(exclusive=True, group="drift", exit_on_error=False, description="drift check")
    async def _check_drift(self) -> None:
        """reconcile(live=False): the slot files (read in a thread) against one database query;
        plus the containers the poller already found missing. Nothing new is asked of Docker."""
        from codeb_tui.engine.reconcile import DriftKind, reconcile
        from codeb_tui.registry.locks import is_locked

        try:
            report = await reconcile(self.engine, live=False)
        except Exception as exc:  # a registry that cannot be read: the top bar says so already
            self.drift = DriftChecked(None, {}, str(exc))
            self.post_message(self.drift)
            return
        registry = self.engine.registry

        def busy(project: str | None, environment: str | None) -> bool:
            if project is None or environment is None:
                return False
            from codeb_tui.domain.model import Environment

            try:
                suffix = Environment(environment).suffix
            except ValueError:
                return False
            return is_locked(registry.lock_path(f"{project}-{suffix}"))

        if report.of_kind(DriftKind.DATABASE_UNREACHABLE):
            self.drift = DriftChecked(None, {}, "database unreachable")
        else:
            by_kind: dict[str, int] = {}
            for d in report.remaining:
                if not busy(d.project, d.environment):  # mid-operation: file written, row next
                    by_kind[d.kind.value] = by_kind.get(d.kind.value, 0) + 1
            missing = sum(1 for r in self.status_rows
                          if r.get("state") != "empty" and r.get("container_status") not in (None, "running")
                          and not busy(r.get("project"), r.get("environment")))
            if missing:
                by_kind[DriftKind.MISSING_CONTAINER.value] = missing
            self.drift = DriftChecked(sum(by_kind.values()), by_kind)
        self.post_message(self.drift)

    @on(DriftChecked)
    def _drift_checked(self, message: DriftChecked) -> None:
        target = self._redraw_target()
        if target is not None:
            target.refresh_drift()

    # the registry watcher ----------------------------------------------------------------------
    def _signature(self) -> tuple:
        """mtimes and sizes of slot files and lock files: a cheap stat per file."""
        sig = []
        for folder in (self.engine.registry.slots_dir, self.engine.registry.root / "locks"):
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        st = entry.stat()
                        sig.append((entry.name, st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                continue
        return tuple(sorted(sig))

    def _watch_registry(self) -> None:
        signature = self._signature()
        if signature != self._registry_signature:
            first = self._registry_signature is None
            self._registry_signature = signature
            if not first:
                self._load_registry()

    @work(exclusive=True, group="registry", exit_on_error=False)
    async def _load_registry(self) -> None:
        """Registry only (no Docker, no health): fast, for changes made by anyone."""
        try:
            rows = await self.engine.status(live=False)
            self.status_error = None
        except CodebError as exc:
            self.status_error = str(exc)
            self._publish(self.status_rows, self.checked_at)
            return
        if self.live:
            rows = merge_health(rows, self.status_rows)
        self._publish(rows, self.checked_at)

    def _publish(self, rows: list[dict[str, Any]], checked_at: float | None) -> None:
        self.status_rows = rows
        self.checked_at = checked_at
        self.post_message(StatusRefreshed(rows, checked_at, self.poll_period))

    def _redraw_target(self):
        """The main screen, unless a modal is on top (then it redraws when it comes back)."""
        from codeb_tui.tui.screens.main import MainScreen

        if not self.screen_stack or isinstance(self.screen, ModalScreen):
            return None  # no screen: the app is shutting down
        screen = self.screen
        return screen if isinstance(screen, MainScreen) else None

    @on(StatusRefreshed)
    def _status_refreshed(self, message: StatusRefreshed) -> None:
        target = self._redraw_target()
        if target is not None:
            target.refresh_rows()

    @on(ServicesChecked)
    def _services_checked(self, message: ServicesChecked) -> None:
        target = self._redraw_target()
        if target is not None:
            target.refresh_services()

    # operations --------------------------------------------------------------------------------
    def running_operation(self, project: str, environment: str) -> OperationRecord | None:
        return next((r for r in self.operations if r.running and r.key == (project, environment)), None)

    def start_operation(self, operation: str, project: str, environment: str, **kwargs: Any) -> OperationRecord | None:
        """Run an engine operation as a worker; its events stream into the log pane."""
        busy = self.running_operation(project, environment)
        if busy is not None:
            self.notify(f"{busy.title} is still running", title="Busy", severity="warning")
            return None
        if operation == "deploy":
            stream = self.engine.deploy(project, kwargs["image"], environment,
                                        confirm_grace=kwargs.get("confirm_grace", False))
            detail = kwargs["image"]
        elif operation == "promote":
            stream, detail = self.engine.promote(project, environment), ""
        elif operation == "rollback":
            stream, detail = self.engine.rollback(project, environment), ""
        elif operation == "cleanup":
            stream = self.engine.cleanup(project, environment, force=kwargs.get("force", False),
                                         slot=kwargs.get("slot"))
            detail = kwargs.get("slot") or ""
        else:
            raise ValueError(operation)
        record = OperationRecord(operation, project, environment, detail)
        self.operations.append(record)
        self.run_worker(self._operate(record, stream), name=f"op:{record.id}",
                        group=f"op-{project}-{environment}", exclusive=True, exit_on_error=False,
                        description=record.title)
        self._operation_changed(record, None, record.title)
        return record

    async def _operate(self, record: OperationRecord, stream) -> None:
        async for event in stream:
            record.add(event)
            self.post_message(OperationUpdated(record.id, event))

    def operation(self, operation_id: int) -> OperationRecord | None:
        return next((r for r in self.operations if r.id == operation_id), None)

    @on(OperationUpdated)
    def _operation_updated(self, message: OperationUpdated) -> None:
        record = self.operation(message.operation_id)
        if record is None or message.event is None:
            return
        event = message.event
        self._operation_changed(record, event, f"{event.ts:%H:%M:%S} {event.line()}")
        if isinstance(event, events.Finished):
            self.notify(event.summary, title=f"{record.operation} done", timeout=6)
            self._load_registry()
            self.poll_now()
            self.check_drift()
        elif isinstance(event, events.Failed):
            title = "Locked" if event.error_type == "LockHeld" else f"{record.operation} {record.state}"
            self.notify(event.error, title=title, severity="error", timeout=15)
            self._load_registry()
            self.check_drift()

    def _operation_changed(self, record: OperationRecord, event: events.Event | None, line: str) -> None:
        for screen in self.screen_stack:
            handler = getattr(screen, "operation_line", None)
            if handler is not None:
                handler(record, line)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place worker failures surface: never swallowed."""
        worker = event.worker
        if event.state not in (WorkerState.ERROR, WorkerState.CANCELLED):
            return
        if worker.name.startswith("op:"):
            record = self.operation(int(worker.name[3:]))
            if record is not None and record.running:
                if event.state is WorkerState.ERROR:
                    line = record.fail(f"{type(worker.error).__name__}: {worker.error}")
                    self.notify(str(worker.error), title=f"{record.operation} failed", severity="error", timeout=15)
                else:
                    line = record.fail("cancelled", state="cancelled")
                self._operation_changed(record, None, line)
        elif event.state is WorkerState.ERROR:
            self.notify(f"{worker.description or worker.name}: {worker.error}", title="Console error",
                        severity="error", timeout=15)
            if worker.group == "poller" and self.live:  # keep polling after a surprise
                self.set_timer(self.config.console.poll_interval, self._poll_loop)

    # actions -----------------------------------------------------------------------------------
    def _push_once(self, screen_type: type) -> None:
        """Open a screen unless it is already on top: pressing its key again stacks no second one."""
        if not isinstance(self.screen, screen_type):
            self.push_screen(screen_type())

    def action_help(self) -> None:
        from codeb_tui.tui.screens.help import HelpScreen

        self._push_once(HelpScreen)

    def action_operations(self) -> None:
        from codeb_tui.tui.screens.operations import OperationsScreen

        self._push_once(OperationsScreen)

    def action_ports(self) -> None:
        from codeb_tui.tui.screens.ports import PortsScreen

        self._push_once(PortsScreen)

    def action_reconcile(self) -> None:
        from codeb_tui.tui.screens.reconcile import ReconcileScreen

        self._push_once(ReconcileScreen)

    def action_history(self) -> None:
        from codeb_tui.tui.screens.history import HistoryScreen

        self._push_once(HistoryScreen)

    def after_reconcile(self) -> None:
        """A repair or prune changed things: reload the registry view and the badge."""
        self._load_registry()
        self.poll_now()
        self.check_drift()

    def action_cycle_theme(self) -> None:
        names = [t.name for t in self._themes]
        index = names.index(self.theme) if self.theme in names else -1
        self.theme = names[(index + 1) % len(names)]
        self.notify(f"theme {self.theme}", timeout=2)

    def now(self) -> datetime:
        return self.clock()


def binding_ids() -> set[str]:
    """Every binding id the keymap may remap."""
    from codeb_tui.tui.screens.help import all_bindings

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


def run_console(config: Config) -> int:
    """Entry point of `codeb` without a subcommand."""
    app = CodebApp(config)
    result = app.run()
    return result if isinstance(result, int) else 0
