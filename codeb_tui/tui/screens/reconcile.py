"""Reconcile: the slot files (the truth) against the database and against reality (containers,
Caddy's live routes, listening ports), as one table. Scanning only reads; repair (database rows
and the proxy) and prune (orphan containers) each go through a confirmation first."""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.reactive import reactive
from textual.widgets import DataTable, Static

from codeb_tui.domain.errors import AccessDenied
from codeb_tui.engine.reconcile import Drift, DriftKind, ReconcileReport
from codeb_tui.tui.messages import ReconcileApplied
from codeb_tui.tui.screens.base import ConsoleScreen
from codeb_tui.tui.screens.confirm import ConfirmModal
from codeb_tui.tui.session import ConsoleSession
from codeb_tui.tui.widgets.footer import KeyFooter

DATABASE_KINDS = (DriftKind.MISSING_ROW, DriftKind.STALE_ROW, DriftKind.FIELD_MISMATCH)
STATUS_STYLE = {"fixed": "green", "fixable": "yellow", "fixable (P)": "yellow",
                "cannot fix": "bold red"}
COLUMNS = ("Kind", "Project", "Env", "Slot", "Status", "Detail")


def status_of(drift: Drift) -> str:
    if drift.fixed:
        return "fixed"
    if not drift.fixable:
        return "cannot fix"
    return "fixable (P)" if drift.kind is DriftKind.ORPHAN_CONTAINER else "fixable"


def repair_plan(report: ReconcileReport, live: bool) -> list[str]:
    """What `repair` would change, from the last scan (the repair itself scans again first)."""
    todo = report.remaining
    rows = [d for d in todo if d.kind in DATABASE_KINDS]
    keys = {(d.project, d.environment, d.slot) for d in rows}
    missing = {(d.project, d.environment, d.slot) for d in rows if d.kind is DriftKind.MISSING_ROW}
    stale = {(d.project, d.environment, d.slot) for d in rows if d.kind is DriftKind.STALE_ROW}
    differing = keys - missing - stale
    database = (report.database or "the database").split(" ", 1)[0]
    lines = [f"Database ({database}): {len(keys)} row(s) to fix"]
    if keys:
        lines.append(f"  {len(missing)} missing (inserted from the files), {len(differing)} with "
                     f"differing fields (rewritten from the files), {len(stale)} stale (deleted)")
    proxy = [d for d in todo if d.kind is DriftKind.PROXY_DRIFT]
    if not live:
        lines.append("Proxy: not checked (live checks off); repair re-applies it only when it drifts")
    elif proxy:
        lines.append(f"Proxy: {len(proxy)} route(s) differ; the config generated from the files "
                     "is re-applied (one reload, switch markers set)")
    else:
        lines.append("Proxy: matches the files; not touched")
    stopped = [d for d in todo if d.kind is DriftKind.STOPPED_CONTAINER]
    if stopped:
        lines.append(f"Stopped slot containers ({len(stopped)}): started again under their names "
                     "(waiting for their health)")
    leaked = [d for d in todo if d.kind is DriftKind.LEAKED_PORTS]
    if leaked:
        lines.append(f"Leaked port pairs ({len(leaked)}): given back in ssot.json")
    journal = [d for d in todo if d.kind is DriftKind.HISTORY_NOT_REPLAYED]
    if journal:
        lines.append("History journal: replayed into the database")
    orphans = report.of_kind(DriftKind.ORPHAN_CONTAINER)
    lines.append(f"Orphan containers ({len(orphans)}): not touched; they are only removed with "
                 "the separate prune key P (asks again)")
    unfixable = [d for d in todo if not d.fixable]
    if unfixable:
        lines.append(f"Cannot fix ({len(unfixable)}): left as they are; the table says what to do")
    lines.append("The slot files are never changed by a repair.")
    return lines


def prune_plan(report: ReconcileReport) -> list[str]:
    orphans = [d for d in report.of_kind(DriftKind.ORPHAN_CONTAINER) if not d.fixed]
    lines = [f"Remove {len(orphans)} orphan container(s) (codeb labels, no slot references them):"]
    for d in orphans[:12]:
        lines.append(f"  {d.container}  ({d.project or '?'} {d.environment or '?'} {d.slot or '?'})")
    if len(orphans) > 12:
        lines.append(f"  … and {len(orphans) - 12} more")
    lines.append("Each is removed under its project's lock, and only if no slot file references it "
                 "by then. Database rows and the proxy are not touched (that is repair: Enter).")
    return lines


class ReconcileScreen(ConsoleScreen):
    BINDINGS = [
        Binding("escape,q", "app.pop_screen", "Back", id="reconcile-back"),
        Binding("f,enter", "repair", "Repair", id="reconcile-repair", key_display="f/⏎",
                tooltip="Fix the database rows and re-apply the proxy (asks first)"),
        Binding("P", "prune", "Prune orphans", id="reconcile-prune",
                tooltip="Remove containers no slot references (asks first)"),
        Binding("r", "rescan", "Scan again", id="reconcile-rescan", tooltip="Compare again (read only)"),
    ]

    running: reactive[str | None] = reactive(None, init=False)
    """What the worker is doing (scanning, repairing, pruning), None when idle."""

    def __init__(self, session: ConsoleSession) -> None:
        super().__init__(session)
        self.report: ReconcileReport | None = None
        self.shown: list[Drift] = []

    def compose(self) -> ComposeResult:
        yield Static(id="reconcile-summary")
        table = DataTable(id="reconcile-table", cursor_type="row", zebra_stripes=True)
        for column in COLUMNS:
            table.add_column(column, key=column.lower())
        yield table
        yield Static(id="reconcile-detail")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()
        self._run()

    def watch_running(self, running: str | None) -> None:
        self.set_class(running is not None, "-running")
        self._summarise()

    # the worker ----------------------------------------------------------------------------------
    @work(exclusive=True, group="reconcile", exit_on_error=False, description="reconcile")
    async def _run(self, repair: bool = False, prune: bool = False) -> None:
        session = self.session
        self.running = "repairing" if repair else "pruning" if prune else "scanning"
        try:
            report = await session.engine.reconcile(session.principal, repair=repair, prune=prune,
                                                    live=session.live)
        except Exception as exc:  # noqa: BLE001 - shown on the screen, never a crash
            self.running = None
            denied = isinstance(exc, AccessDenied)  # one line, no alarm: the key said why already
            self.query_one("#reconcile-detail", Static).update(
                Text(str(exc) if denied else f"reconcile failed: {exc}", style="bold red"))
            if not denied:
                self.notify(str(exc), title="Reconcile failed", severity="error", timeout=15)
            return
        self.report = report
        self.running = None
        self._fill()
        if repair or prune:
            summary = report.summary()
            self.notify(f"{summary['fixed']} fixed, {summary['remaining']} remaining"
                        + (f"; {len(report.errors)} error(s)" if report.errors else ""),
                        title="Repaired" if repair else "Pruned",
                        severity="error" if report.errors else "information", timeout=8)
            self.post_message(ReconcileApplied())

    # drawing -------------------------------------------------------------------------------------
    def _summarise(self) -> None:
        if not self.is_mounted:
            return
        report, live = self.report, self.session.live
        text = Text(" reconcile ", style="bold reverse")
        sources = "files vs database vs containers, proxy, ports" if live else \
            "files vs database (live checks off)"
        text.append(f" {sources}")
        if self.running:
            text.append(f"  {self.running}…", style="bold magenta")
        elif report is not None:
            summary = report.summary()
            if report.in_sync:
                text.append("  in sync", style="bold green")
            else:
                fixable = sum(d.fixable for d in report.remaining)
                text.append(f"  {summary['remaining']} drift: ", style="bold")
                text.append(f"{fixable} fixable", style="yellow")
                text.append(", ")
                text.append(f"{summary['unfixable']} cannot fix", style="red" if summary["unfixable"] else "")
            if summary["fixed"]:
                text.append(f", {summary['fixed']} fixed", style="green")
            if live:
                text.append(f"  ({report.elapsed_ms:.0f} ms)", style="dim")
            if report.busy:
                text.append(f"\n skipped (operation running): {', '.join(report.busy)}", style="dim")
            for error in report.errors:
                text.append(f"\n {error}", style="bold red")
        self.query_one("#reconcile-summary", Static).update(text)

    def _fill(self) -> None:
        table = self.query_one(DataTable)
        cursor = table.cursor_row
        table.clear()
        report = self.report
        self.shown = list(report.drift) if report else []
        cells = [(d.kind.value, d.project or "-", d.environment or "-", d.slot or "-", status_of(d))
                 for d in self.shown]
        # the detail gets what the other columns leave (2 cells of padding each, the borders,
        # the scroll bar); the whole of it is shown under the table
        used = sum(max([len(c) for c in column] + [len(h)]) + 2
                   for h, column in zip(COLUMNS, zip(*cells) if cells else [()] * 5))
        width = max(24, self.size.width - used - 6)
        for index, (d, (kind, project, env, slot, status)) in enumerate(zip(self.shown, cells)):
            detail = d.detail if len(d.detail) <= width else d.detail[: width - 1] + "…"
            table.add_row(kind, project, env, slot, Text(status, style=STATUS_STYLE.get(status, "")),
                          detail, key=str(index))
        if self.shown:
            table.move_cursor(row=min(max(cursor, 0), len(self.shown) - 1), animate=False)
        self._summarise()
        self._show_detail()

    def _show_detail(self) -> None:
        target = self.query_one("#reconcile-detail", Static)
        table = self.query_one(DataTable)
        if self.report is None:
            target.update(Text("comparing…", style="dim"))
            return
        if not self.shown:
            target.update(Text("no drift: the database and reality agree with the slot files",
                               style="green"))
            return
        row = table.cursor_row
        d = self.shown[row] if 0 <= row < len(self.shown) else None
        if d is None:
            target.update("")
            return
        text = Text(f"{d.kind.value}", style="bold")
        text.append(f"  {status_of(d)}", style=STATUS_STYLE.get(status_of(d), ""))
        text.append(f"\n{d.detail}")
        target.update(text)

    @on(DataTable.RowHighlighted, "#reconcile-table")
    def _highlighted(self) -> None:
        self._show_detail()

    @on(DataTable.RowSelected, "#reconcile-table")
    def _selected(self) -> None:
        self.action_repair()

    def on_resize(self) -> None:
        if self.report is not None:
            self._fill()

    # actions -------------------------------------------------------------------------------------
    def _ready(self) -> ReconcileReport | None:
        if self.running:
            self.notify(f"still {self.running}", severity="warning")
            return None
        if self.report is None:
            self.notify("no scan yet", severity="warning")
        return self.report

    def action_rescan(self) -> None:
        if not self.running:
            self._run()

    def action_repair(self) -> None:
        if self.session.refused(self.notify, "repair") or (report := self._ready()) is None:
            return
        fixable = [d for d in report.remaining
                   if d.fixable and d.kind is not DriftKind.ORPHAN_CONTAINER]
        if not fixable:
            orphans = bool(report.of_kind(DriftKind.ORPHAN_CONTAINER))
            self.notify("Nothing to repair" + (": orphan containers go with P (prune)" if orphans else ""),
                        severity="warning")
            return

        def answered(ok: bool | None) -> None:
            if ok:
                self._run(repair=True)

        self.app.push_screen(ConfirmModal("Repair?", repair_plan(report, self.session.live),
                                          confirm_label="Repair"), answered)

    def action_prune(self) -> None:
        if self.session.refused(self.notify, "prune") or (report := self._ready()) is None:
            return
        if not [d for d in report.of_kind(DriftKind.ORPHAN_CONTAINER) if not d.fixed]:
            self.notify("No orphan containers" + ("" if self.session.live else " (live checks off: not looked for)"),
                        severity="warning")
            return

        def answered(ok: bool | None) -> None:
            if ok:
                self._run(prune=True)

        self.app.push_screen(ConfirmModal("Prune orphan containers?", prune_plan(report),
                                          confirm_label="Prune"), answered)
