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
from textual.widgets import DataTable, Input, Log, Static

from codeb_tui.domain.model import Environment, SlotState
from codeb_tui.tui import actions
from codeb_tui.tui.messages import MainScreenResumed, RefreshRequested
from codeb_tui.tui.operations import OperationRecord
from codeb_tui.tui.rows import (
    ENV_FILTERS,
    HOST_MARK,
    SORT_KEYS,
    ProjectRow,
    format_age,
    select_rows,
    slot_cell,
)
from codeb_tui.tui.screens.base import ConsoleScreen
from codeb_tui.tui.session import ConsoleSession
from codeb_tui.tui.widgets.drift_badge import DriftBadge
from codeb_tui.tui.widgets.footer import KeyFooter
from codeb_tui.tui.widgets.operation_progress import OperationProgress
from codeb_tui.tui.widgets.slot_table import SlotTable

WIDE_AT = 150
"""Terminal width from which the table shows every column (URLs, active slot, check age)."""


def _dot(ok: bool | None, name: str) -> Text:
    if ok is None:
        return Text(f"{name} ?", style="dim")
    return Text(f"{name} {'up' if ok else 'DOWN'}", style="green" if ok else "bold red reverse")


RUNNING_EVERY = 1.0
"""Seconds between reads of the running operations (anyone's) for the top bar."""


def _running_line(running: list, now) -> Text:
    """`promote shop (production) by ssh:alice at 'switch proxy' 3s ago`, for each operation
    holding a project lock (at most three, then how many more)."""
    line = Text()
    for op in running[:3]:
        age = f" {format_age((now - op.since).total_seconds())}" if op.since else ""
        step = f" at '{op.step}'" if op.step else ""
        line.append(f"  {op.what} by {op.actor}{step}{age}", style="bold magenta")
    if len(running) > 3:
        line.append(f"  +{len(running) - 3} more", style="bold magenta")
    return line


def _update(widget: Static, text: Text) -> None:
    """Static.update, skipped when nothing changed and without a layout of the screen when the
    number of lines stays: a layout draws every widget again (the slot table's rows too), and
    the top bar and detail change every second while live."""
    before = getattr(widget, "_codeb_shown", None)
    if before is not None and before == text:
        return
    same_height = before is not None and before.plain.count("\n") == text.plain.count("\n")
    widget._codeb_shown = text
    widget.update(text, layout=not same_height)


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
        Binding("h", "host", "Host", id="host",
                tooltip="Narrow to the projects of one host (offered when there are hosts)"),
        Binding("ctrl+r", "refresh", "Refresh", id="refresh", show=False, tooltip="Poll now"),
        Binding("escape", "clear_filter", "Clear filter", id="clear-filter", show=False),
    ]

    AUTO_FOCUS = "#slots"
    """Focused once composed, so the first frame draws it focused (focus() in on_mount lands
    after that frame: every row on screen was drawn twice)."""

    filter_text: reactive[str] = reactive("", init=False)
    """Substring of project, environment or image the rows must contain."""
    environment: reactive[Environment | None] = reactive(None, init=False)
    """Only this environment's rows (None: all)."""
    sort: reactive[str] = reactive("project", init=False)
    """One of SORT_KEYS."""
    host: reactive[str | None] = reactive(None, init=False)
    """Only the rows of projects on this host (None: all)."""
    wide: reactive[bool] = reactive(False, init=False)
    """Room for every column (set from the terminal width)."""
    filtering: reactive[bool] = reactive(False, init=False)
    """The filter input is open."""

    def __init__(self, session: ConsoleSession) -> None:
        super().__init__(session)
        self.rows: list[ProjectRow] = []
        self.shown: list[ProjectRow] = []
        self._table: SlotTable | None = None
        """Kept at mount: the poller asks for the rows on screen four times a second."""
        self._index: dict[str, int] = {}
        """Row key -> its place in `shown`."""
        self._offered_for: Environment | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="topbar"):
            yield Static(id="topbar-text")
            yield DriftBadge(id="drift-badge")
        yield Input(placeholder="filter: project, environment or image (Enter keeps it, Esc clears)",
                    id="filter")
        yield SlotTable(id="slots")
        yield Static(id="detail")
        yield OperationProgress(id="op-progress")
        log = Log(id="oplog", max_lines=2000)
        log.border_title = "operations"
        yield log
        yield KeyFooter()

    def on_mount(self) -> None:
        self._table = self.query_one(SlotTable)
        self.wide = self.app.size.width >= WIDE_AT
        self.query_one(SlotTable).set_layout(self.wide)
        self.refresh_rows()
        for record in self.session.operations:
            for line in record.lines:
                self.query_one(Log).write_line(f"[{record.project}/{record.environment}] {line}")
        if self.session.live:  # who runs what, at which step: read from the lock files
            self.set_interval(RUNNING_EVERY, self.refresh_services)

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

    def watch_host(self) -> None:
        self.refresh_rows()

    # drawing -------------------------------------------------------------------------------------
    @property
    def drawable(self) -> bool:
        """Mounted with its widgets: not yet composed, or already being torn down at exit, a
        poll that finishes then has nothing to draw on. (The table kept at mount: a query of
        the screen costs milliseconds, and this is asked on every redraw.)"""
        table = self._table
        return self.is_mounted and table is not None and table.is_attached

    def refresh_rows(self) -> None:
        if not self.drawable:
            return
        session = self.session
        engine = session.engine
        decorated = []
        # who holds a lock is asked only of the locks held (one listing of the lock folder),
        # not of every row's lock file: 600 of them before the first frame
        held = {(op.project, op.environment) for op in engine.running_operations()}
        for row in session.rows():
            running = session.running_operation(row.project, row.environment)
            locked = (engine.lock_holder(row.project, row.environment)
                      if (row.project, row.environment) in held else None)
            if running or locked:
                row = replace(row, running=running.title if running else None, locked_by=locked)
            decorated.append(row)
        self.rows = decorated
        self.shown = select_rows(decorated, self.filter_text, self.environment, self.sort,
                                 self.host)
        self._index = {r.key: i for i, r in enumerate(self.shown)}
        self._table.show(self.shown, session.now(), self._mono())
        self.refresh_services()
        self.refresh_detail()

    def _mono(self) -> float | None:
        """Now for check ages; None when the console is not live (no ages shown)."""
        return time.monotonic() if self.session.live else None

    def update_rows(self, keys: set[tuple[str, Environment]]) -> None:
        """Live checks changed these project+environments' records: only their rows are
        replaced, and of those only the ones on screen are drawn. Nothing else is redrawn
        (the top bar, the other rows), unless the health order has to change."""
        if not self.drawable:
            return
        session, table = self.session, self._table
        on_screen = set(table.visible_keys())
        replaced = []
        for project, environment in keys:
            index = self._index.get(f"{project}/{environment}")
            fresh = session.row(project, environment)
            if index is None or fresh is None:
                continue
            old = self.shown[index]
            if self.sort == "health" and fresh.unhealthy != old.unhealthy:
                self.refresh_rows()  # the row moves
                return
            running = session.running_operation(project, environment)
            # a lock is asked of the kernel for rows on screen; lock files tell of the others
            locked = (session.engine.lock_holder(project, environment) if old.key in on_screen
                      else old.locked_by)
            self.shown[index] = row = replace(fresh, running=running.title if running else None,
                                              locked_by=locked)
            replaced.append(row)
        table.update_rows(replaced, session.now(), self._mono())
        selected = table.selected_key
        if any(row.key == selected for row in replaced):
            self.refresh_detail()

    def rows_to_check_first(self) -> list[tuple[str, Environment]]:
        """The selected row, then the rows on screen, top to bottom."""
        if not self.drawable:
            return []
        table = self._table
        keys = [table.selected_key, *table.visible_keys()]
        found, seen = [], set()
        for key in keys:
            index = self._index.get(key) if key else None
            if index is not None and key not in seen:
                seen.add(key)
                row = self.shown[index]
                found.append((row.project, row.environment))
        return found

    def refresh_services(self) -> None:
        if not self.drawable:
            return
        session = self.session
        bar = Text()
        bar.append(" codeb ", style="bold reverse")
        if session.live:  # anyone's (other consoles, SSH sessions, CI), from the lock files:
            # first, since a narrow terminal cuts the bar at its right end
            running_anywhere = session.engine.running_operations()
            if running_anywhere:
                bar.append_text(_running_line(running_anywhere, session.now()))
                bar.append(" ")
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
        if session.multi_host:  # each host's last probe; nothing of it with the local one only
            bar.append("  hosts ")
            bar.append_text(Text(" ").join(_dot(h.reachable, h.name) for h in session.hosts)
                            if session.hosts else Text("…", style="dim"))
        env = self.environment or "all"
        bar.append(f"  {len(self.shown)}/{len(self.rows)} rows  env:{env}  sort:{self.sort}")
        if self.host:
            bar.append(f"  host:{self.host}", style="bold")
        if self.filter_text:
            bar.append(f"  filter:{self.filter_text}", style="bold")
        running = sum(1 for r in session.operations if r.running)
        if running:
            bar.append(f"  {running} op(s) running", style="bold magenta")
        if session.status_error:
            bar.append(f"  {session.status_error}", style="bold red")
        _update(self.query_one("#topbar-text", Static), bar)

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
                for host in slot.hosts:
                    text.append(f"\n         {host.host:<10} ")
                    text.append_text(Text(host.health, style=HOST_MARK[host.health][1]))
                    text.append(f"  {host.detail or ''}", style="dim")
                if slot.url and slot.state is not SlotState.ACTIVE:
                    text.append(f"  {slot.url}", style="dim")
        if self.session.live:
            text.append(f"\n checked {format_age(row.check_age(self._mono()))}", style="dim")
        _update(detail, text)

    def selected_row(self) -> ProjectRow | None:
        key = self._table.selected_key if self._table is not None else None
        return next((r for r in self.shown if r.key == key), None)

    def operation_line(self, record: OperationRecord, line: str) -> None:
        self.query_one(Log).write_line(f"[{record.project}/{record.environment}] {line}")
        if not record.running or line.endswith(record.title):
            self.refresh_rows()

    def operation_progress(self, record: OperationRecord) -> None:
        if not self.drawable:
            return
        if record.progress is None or not record.running:  # another may still report
            record = next((r for r in reversed(self.session.operations)
                           if r.running and r.progress is not None), record)
        self.query_one(OperationProgress).show(record)

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

    def action_host(self) -> None:
        """All hosts, then each host in turn."""
        choices = [None, *self.session.engine.host_names()]
        self.host = choices[(choices.index(self.host) + 1) % len(choices)] \
            if self.host in choices else None

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
