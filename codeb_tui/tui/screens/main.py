"""The main view: every project+environment's slots, live, with actions on the selected row."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.reactive import reactive
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Log, Static

from codeb_tui.tui.rows import (
    ENV_FILTERS,
    SORT_KEYS,
    ProjectRow,
    format_age,
    group_rows,
    select_rows,
)
from codeb_tui.tui.widgets.drift_badge import DriftBadge
from codeb_tui.tui.widgets.slot_table import SlotTable

if TYPE_CHECKING:
    from codeb_tui.tui.app import CodebApp
    from codeb_tui.tui.operations import OperationRecord

WIDE_AT = 150
"""Terminal width from which the table shows every column (URLs, active slot, check age)."""


def _dot(ok: bool | None, name: str) -> Text:
    if ok is None:
        return Text(f"{name} ?", style="dim")
    return Text(f"{name} {'up' if ok else 'DOWN'}", style="green" if ok else "bold red reverse")


class MainScreen(Screen):
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
    environment: reactive[str | None] = reactive(None, init=False)
    """Only this environment's rows (None: all)."""
    sort: reactive[str] = reactive("project", init=False)
    """One of SORT_KEYS."""
    wide: reactive[bool] = reactive(False, init=False)
    """Room for every column (set from the terminal width)."""
    filtering: reactive[bool] = reactive(False, init=False)
    """The filter input is open."""

    app: CodebApp  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[ProjectRow] = []
        self.shown: list[ProjectRow] = []

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
        for record in self.app.operations:
            for line in record.lines:
                self.query_one(Log).write_line(f"[{record.project}/{record.environment}] {line}")

    def on_resize(self) -> None:
        self.wide = self.app.size.width >= WIDE_AT

    def on_screen_resume(self) -> None:
        self.refresh_rows()
        self.refresh_services()
        self.refresh_drift()
        self.app.check_drift_if_pending()

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
    def refresh_rows(self) -> None:
        if not self.is_mounted:
            return
        app = self.app
        registry = app.engine.registry
        rows = group_rows(app.status_rows)
        decorated = []
        for row in rows:
            running = app.running_operation(row.project, row.environment)
            locked = None
            lock = registry.lock_path(f"{row.project}-{_suffix(row.environment)}")
            try:
                if lock.stat().st_size > 0:  # a holder record is written while it is held
                    from codeb_tui.registry.locks import describe_holder, is_locked

                    if is_locked(lock):
                        locked = describe_holder(lock)
            except OSError:
                pass
            if running or locked:
                from dataclasses import replace

                row = replace(row, running=running.title if running else None, locked_by=locked)
            decorated.append(row)
        self.rows = decorated
        self.shown = select_rows(decorated, self.filter_text, self.environment, self.sort)
        age = None if app.checked_at is None or not app.live else time.monotonic() - app.checked_at
        self.query_one(SlotTable).show(self.shown, app.now(), age)
        self._age = age
        self.refresh_services()
        self.refresh_detail()

    def refresh_services(self) -> None:
        if not self.is_mounted:
            return
        app = self.app
        services = app.services
        bar = Text()
        bar.append(" codeb ", style="bold reverse")
        bar.append(" ")
        if app.live:
            bar.append_text(_dot(services.docker, "docker"))
            bar.append("  ")
            bar.append_text(_dot(services.caddy, "caddy"))
            bar.append("  ")
            bar.append_text(_dot(services.database, "db"))
            period = app.poll_period
            bar.append(f"  poll {period:.1f}s" if period else "  poll …", style="dim")
        else:
            bar.append("live off", style="dim")
        env = self.environment or "all"
        bar.append(f"  {len(self.shown)}/{len(self.rows)} rows  env:{env}  sort:{self.sort}")
        if self.filter_text:
            bar.append(f"  filter:{self.filter_text}", style="bold")
        running = sum(1 for r in app.operations if r.running)
        if running:
            bar.append(f"  {running} op(s) running", style="bold magenta")
        if app.status_error:
            bar.append(f"  {app.status_error}", style="bold red")
        self.query_one("#topbar-text", Static).update(bar)

    def refresh_drift(self) -> None:
        if self.is_mounted:
            drift = self.app.drift
            self.query_one(DriftBadge).show(drift.count, drift.by_kind)

    def refresh_detail(self) -> None:
        row = self.selected_row()
        detail = self.query_one("#detail", Static)
        if row is None:
            detail.update(Text("no slots yet: deploy a project (d) or run `codeb deploy`", style="dim")
                          if not self.rows else Text("no row matches the filter", style="dim"))
            return
        text = Text()
        text.append(f"{row.project} ({row.environment})", style="bold")
        active = row.active
        text.append(f"  active: {active.name if active else 'none'}")
        text.append(f"  grace left: {row.grace_left(self.app.now())}")
        if row.running:
            text.append(f"  running: {row.running}", style="bold magenta")
        elif row.locked_by:
            text.append(f"  locked: {row.locked_by}", style="bold red")
        text.append(f"\n prod    {row.production_url or '-'}")
        for slot in row.slots():
            text.append(f"\n {slot.name:<6}  ")
            text.append_text(slot.cell(wide=True))
            if slot.state != "empty":
                text.append(f"  {slot.health_detail or slot.health}", style="dim")
                if slot.container_status:
                    text.append(f"  container {slot.container_status}", style="dim")
                if slot.url and slot.state != "active":
                    text.append(f"  {slot.url}", style="dim")
        if self.app.live:
            text.append(f"\n checked {format_age(getattr(self, '_age', None))}", style="dim")
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
        self.app.poll_now()

    # operations ----------------------------------------------------------------------------------
    def _need_row(self) -> ProjectRow | None:
        row = self.selected_row()
        if row is None:
            self.notify("Select a row first", severity="warning")
        return row

    def action_deploy(self) -> None:
        if (row := self._need_row()) is not None:
            from codeb_tui.tui.actions import deploy

            deploy(self.app, row)

    def action_promote(self) -> None:
        if (row := self._need_row()) is not None:
            from codeb_tui.tui.actions import promote

            promote(self.app, row)

    def action_rollback(self) -> None:
        if (row := self._need_row()) is not None:
            from codeb_tui.tui.actions import rollback

            rollback(self.app, row)

    def action_cleanup(self) -> None:
        if (row := self._need_row()) is not None:
            from codeb_tui.tui.actions import cleanup

            cleanup(self.app, row)

    def action_deploy_new(self) -> None:
        from codeb_tui.tui.actions import deploy_new

        deploy_new(self.app, self.environment)

    def action_logs(self) -> None:
        if (row := self._need_row()) is not None:
            from codeb_tui.tui.actions import logs

            logs(self.app, row)


def _suffix(environment: str) -> str:
    from codeb_tui.domain.model import Environment

    return Environment(environment).suffix
