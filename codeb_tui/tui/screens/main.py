"""The main view: every project+environment's slots, live, with actions on the selected row."""

from __future__ import annotations

import time
from dataclasses import replace

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.reactive import reactive
from textual.widgets import DataTable, Footer, Input, Log, Static

from codeb_tui.domain.model import Environment, SlotState
from codeb_tui.tui import actions
from codeb_tui.tui.messages import MainScreenResumed, RefreshRequested
from codeb_tui.tui.operations import OperationRecord
from codeb_tui.tui.rows import (
    ENV_FILTERS,
    SORT_KEYS,
    ProjectRow,
    format_age,
    select_rows,
    slot_cell,
)
from codeb_tui.tui.screens.base import ConsoleScreen
from codeb_tui.tui.session import ConsoleSession
from codeb_tui.tui.widgets.drift_badge import DriftBadge
from codeb_tui.tui.widgets.slot_table import SlotTable

WIDE_AT = 150
"""Terminal width from which the table shows every column (URLs, active slot, check age)."""


def _dot(ok: bool | None, name: str) -> Text:
    if ok is None:
        return Text(f"{name} ?", style="dim")
    return Text(f"{name} {'up' if ok else 'DOWN'}", style="green" if ok else "bold red reverse")


class MainScreen(ConsoleScreen):
    BINDINGS = [
        Binding("d", "deploy", "Deploy", id="deploy", tooltip="Deploy an image into the idle slot"),
        Binding("n", "deploy_new", "New", id="deploy-new",
                tooltip="Deploy a project (new, or into another environment): name, environment, image"),
        Binding("p", "promote", "Promote", id="promote", tooltip="Send production traffic to the deployed slot"),
        Binding("r", "rollback", "Rollback", id="rollback", tooltip="Send production traffic back to the grace slot"),
        Binding("c", "cleanup", "Cleanup", id="cleanup", tooltip="Empty the grace (or deployed) slot"),
        Binding("l", "logs", "Logs", id="logs", tooltip="Follow the container's output"),
        Binding("slash", "filter", "Filter", id="filter", tooltip="Filter by project or image"),
        Binding("s", "sort", "Sort", id="sort", tooltip="Cycle the sort order"),
        Binding("e", "environment", "Env", id="environment", tooltip="Narrow to one environment"),
        Binding("ctrl+r", "refresh", "Refresh", id="refresh", show=False, tooltip="Poll now"),
        Binding("escape", "clear_filter", "Clear filter", id="clear-filter", show=False),
    ]

    filter_text: reactive[str] = reactive("", init=False)
    """Substring of project, environment or image the rows must contain."""
    environment: reactive[Environment | None] = reactive(None, init=False)
    """Only this environment's rows (None: all)."""
    sort: reactive[str] = reactive("project", init=False)
    """One of SORT_KEYS."""
    wide: reactive[bool] = reactive(False, init=False)
    """Room for every column (set from the terminal width)."""
    filtering: reactive[bool] = reactive(False, init=False)
    """The filter input is open."""

    def __init__(self, session: ConsoleSession) -> None:
        super().__init__(session)
        self.rows: list[ProjectRow] = []
        self.shown: list[ProjectRow] = []
        self._age: float | None = None
        self._offered_for: Environment | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="topbar"):
            yield Static(id="topbar-text")
            yield DriftBadge(id="drift-badge")
        yield Input(placeholder="filter: project, environment or image (Enter keeps it, Esc clears)",
                    id="filter")
        yield SlotTable(id="slots")
        yield Static(id="detail")
        log = Log(id="oplog", max_lines=2000)
        log.border_title = "operations"
        yield log
        yield Footer()

    def on_mount(self) -> None:
        self.wide = self.app.size.width >= WIDE_AT
        self.query_one(SlotTable).set_layout(self.wide)
        self.query_one(SlotTable).focus()
        self.refresh_rows()
        for record in self.session.operations:
            for line in record.lines:
                self.query_one(Log).write_line(f"[{record.project}/{record.environment}] {line}")

    def on_resize(self) -> None:
        self.wide = self.app.size.width >= WIDE_AT

    def on_screen_resume(self) -> None:
        self.refresh_rows()
        self.refresh_services()
        self.refresh_drift()
        self.post_message(MainScreenResumed())

    # reactive watchers ---------------------------------------------------------------------------
    def watch_wide(self, wide: bool) -> None:
        self.set_class(wide, "-wide")
        self.query_one(SlotTable).set_layout(wide)
        self.refresh_rows()

    def watch_filtering(self, filtering: bool) -> None:
        self.set_class(filtering or bool(self.filter_text), "-filtering")

    def watch_filter_text(self) -> None:
        self.set_class(self.filtering or bool(self.filter_text), "-filtering")
        self.refresh_rows()

    def watch_environment(self) -> None:
        self.refresh_rows()

    def watch_sort(self) -> None:
        self.refresh_rows()

    # drawing -------------------------------------------------------------------------------------
    @property
    def drawable(self) -> bool:
        """Mounted with its widgets: not yet composed, or already being torn down at exit, a
        poll that finishes then has nothing to draw on."""
        return self.is_mounted and bool(self.query(SlotTable))

    def refresh_rows(self) -> None:
        if not self.drawable:
            return
        session = self.session
        engine = session.engine
        decorated = []
        for row in session.rows():
            running = session.running_operation(row.project, row.environment)
            locked = engine.lock_holder(row.project, row.environment)
            if running or locked:
                row = replace(row, running=running.title if running else None, locked_by=locked)
            decorated.append(row)
        self.rows = decorated
        self.shown = select_rows(decorated, self.filter_text, self.environment, self.sort)
        checked_at = session.checked_at
        age = None if checked_at is None or not session.live else time.monotonic() - checked_at
        self.query_one(SlotTable).show(self.shown, session.now(), age)
        self._age = age
        self.refresh_services()
        self.refresh_detail()

    def refresh_services(self) -> None:
        if not self.drawable:
            return
        session = self.session
        bar = Text()
        bar.append(" codeb ", style="bold reverse")
        bar.append(" ")
        if session.live:
            up = session.services  # None until the first check
            dots = (("docker", up and up.docker), ("caddy", up and up.caddy), ("db", up and up.database))
            bar.append_text(Text("  ").join(_dot(ok, name) for name, ok in dots))
            if up is not None and up.proxy_empty:
                # Caddy came back without codeb's routes: nothing is served until a repair.
                bar.append("  caddy has no routes: R repairs", style="bold red")
            period = session.poll_period
            bar.append(f"  poll {period:.1f}s" if period else "  poll …", style="dim")
        else:
            bar.append("live off", style="dim")
        env = self.environment or "all"
        bar.append(f"  {len(self.shown)}/{len(self.rows)} rows  env:{env}  sort:{self.sort}")
        if self.filter_text:
            bar.append(f"  filter:{self.filter_text}", style="bold")
        running = sum(1 for r in session.operations if r.running)
        if running:
            bar.append(f"  {running} op(s) running", style="bold magenta")
        if session.status_error:
            bar.append(f"  {session.status_error}", style="bold red")
        self.query_one("#topbar-text", Static).update(bar)

    def refresh_drift(self) -> None:
        if self.drawable:
            drift = self.session.drift
            self.query_one(DriftBadge).show(drift.count, drift.by_kind)

    def refresh_detail(self) -> None:
        row = self.selected_row()
        self._offer_for(row.environment if row else None)
        detail = self.query_one("#detail", Static)
        if row is None:
            detail.update(Text("no slots yet: deploy a project (d) or run `codeb deploy`", style="dim")
                          if not self.rows else Text("no row matches the filter", style="dim"))
            return
        text = Text()
        text.append(f"{row.project} ({row.environment})", style="bold")
        active = row.active
        text.append(f"  active: {active.slot if active else 'none'}")
        text.append(f"  grace left: {row.grace_left(self.session.now())}")
        if row.running:
            text.append(f"  running: {row.running}", style="bold magenta")
        elif row.locked_by:
            text.append(f"  locked: {row.locked_by}", style="bold red")
        text.append(f"\n prod    {row.production_url or '-'}")
        for slot in row.slots():
            text.append(f"\n {slot.slot:<6}  ")
            text.append_text(slot_cell(slot, wide=True))
            if slot.state is not SlotState.EMPTY:
                text.append(f"  {slot.health_detail or slot.health}", style="dim")
                if slot.container_status:
                    text.append(f"  container {slot.container_status}", style="dim")
                if slot.url and slot.state is not SlotState.ACTIVE:
                    text.append(f"  {slot.url}", style="dim")
        if self.session.live:
            text.append(f"\n checked {format_age(self._age)}", style="dim")
        detail.update(text)

    def selected_row(self) -> ProjectRow | None:
        key = self.query_one(SlotTable).selected_key
        return next((r for r in self.shown if r.key == key), None)

    def operation_line(self, record: OperationRecord, line: str) -> None:
        self.query_one(Log).write_line(f"[{record.project}/{record.environment}] {line}")
        if not record.running or line.endswith(record.title):
            self.refresh_rows()

    @on(DataTable.RowHighlighted)
    def _row_highlighted(self) -> None:
        self.refresh_detail()

    # filter, sort, environment -------------------------------------------------------------------
    def action_filter(self) -> None:
        self.filtering = True
        self.query_one("#filter", Input).focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self) -> None:
        self.filtering = False
        self.query_one(SlotTable).focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        self.filter_text = ""
        self.filtering = False
        self.query_one(SlotTable).focus()

    def action_sort(self) -> None:
        self.sort = SORT_KEYS[(SORT_KEYS.index(self.sort) + 1) % len(SORT_KEYS)]

    def action_environment(self) -> None:
        self.environment = ENV_FILTERS[(ENV_FILTERS.index(self.environment) + 1) % len(ENV_FILTERS)]

    def action_refresh(self) -> None:
        self.post_message(RefreshRequested())

    # operations ----------------------------------------------------------------------------------
    def offer_environment(self) -> Environment | None:
        return self._offered_for

    def _offer_for(self, environment: Environment | None) -> None:
        """Row actions are offered for the selected row's environment: the footer follows it
        (redrawn only when what is offered changes)."""
        before = self.session.offered(self._offered_for)
        self._offered_for = environment
        if self.session.offered(environment) != before:
            self.refresh_bindings()

    def _need_row(self) -> ProjectRow | None:
        row = self.selected_row()
        if row is None:
            self.notify("Select a row first", severity="warning")
        return row

    def _on_row(self, action: str) -> None:
        if (row := self._need_row()) is not None:
            actions.on_row(self, self.session, action, row)

    def action_deploy(self) -> None:
        self._on_row("deploy")

    def action_promote(self) -> None:
        self._on_row("promote")

    def action_rollback(self) -> None:
        self._on_row("rollback")

    def action_cleanup(self) -> None:
        self._on_row("cleanup")

    def action_logs(self) -> None:
        self._on_row("logs")

    def action_deploy_new(self) -> None:
        actions.deploy_new(self, self.session, self.environment)
