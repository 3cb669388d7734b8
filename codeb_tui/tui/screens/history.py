"""The audit trail, from the database: every operation by anyone (console, CLI, CI), searchable
by project, action, team and time; the selected one's full log below. A database that is down
is said plainly here; the rest of the console goes on."""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.reactive import reactive
from textual.widgets import DataTable, Input, Log, Static

from codeb_tui.domain.errors import AccessDenied
from codeb_tui.engine.facade import AuditRecord
from codeb_tui.tui.history_query import SYNTAX, HistoryQuery, QueryError, parse_query
from codeb_tui.tui.operations import OperationRecord
from codeb_tui.tui.screens.base import ConsoleScreen
from codeb_tui.tui.session import ConsoleSession
from codeb_tui.tui.widgets.footer import KeyFooter

RESULT_STYLE = {"succeeded": "green", "failed": "bold red", "refused": "yellow", "denied": "bold magenta"}
COLUMNS = ("Time (UTC)", "Action", "Project", "Env", "Result", "By", "Took", "Change")


def _took(ms: float) -> str:
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def _by(record: AuditRecord) -> str:
    return f"{record.actor} ({record.team})" if record.team else record.actor


class HistoryScreen(ConsoleScreen):
    BINDINGS = [
        Binding("escape,q", "app.pop_screen", "Back", id="history-back"),
        Binding("slash", "search", "Search", id="history-search", tooltip="Edit the search line"),
        Binding("r", "reload", "Reload", id="history-reload", tooltip="Ask the database again"),
    ]

    error: reactive[str | None] = reactive(None, init=False)
    """Why the last query gave nothing (database down, a query that does not parse)."""

    def __init__(self, session: ConsoleSession, query: str = "") -> None:
        super().__init__(session)
        self.query_text = query
        self.records: list[AuditRecord] = []
        self.shown_id: str | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="history-title")
        yield Input(value=self.query_text, id="history-query",
                    placeholder="search, e.g. project:shop action:promote team:ops since:2h  (Enter)")
        yield Static(SYNTAX, id="history-syntax")
        table = DataTable(id="history-table", cursor_type="row", zebra_stripes=True)
        for column in COLUMNS:
            table.add_column(column)
        yield table
        log = Log(id="history-log", max_lines=20000)
        log.border_title = "log"
        yield log
        yield KeyFooter()

    def on_mount(self) -> None:
        # Opened to search: what the operator types goes to the search line; ↓ or Enter moves
        # on to the rows.
        self.query_one("#history-query", Input).focus()
        self.action_reload()

    def key_down(self) -> None:
        if self.focused is self.query_one("#history-query", Input):
            self.query_one(DataTable).focus()

    def watch_error(self, error: str | None) -> None:
        self.set_class(error is not None, "-error")

    # querying ------------------------------------------------------------------------------------
    def action_search(self) -> None:
        self.query_one("#history-query", Input).focus()

    def action_reload(self) -> None:
        self._submit(self.query_one("#history-query", Input).value)

    @on(Input.Submitted, "#history-query")
    def _submitted(self, event: Input.Submitted) -> None:
        self._submit(event.value)
        self.query_one(DataTable).focus()

    def _submit(self, text: str) -> None:
        self.query_text = text
        try:
            query = parse_query(text, self.session.now())
        except QueryError as exc:
            self.error = f"search: {exc}"
            self._title(None)
            return
        self._fetch(query)

    @work(exclusive=True, group="history", exit_on_error=False, description="audit query")
    async def _fetch(self, query: HistoryQuery) -> None:
        self._title(query, "asking the database…")
        session = self.session
        try:
            records = await session.engine.history(session.principal, **query.filters())
            self.error = None
        except AccessDenied as denied:
            records, self.error = [], str(denied)
        except Exception as exc:  # StoreError, or a driver error that escaped it: shown, no crash
            records = []
            self.error = (f"the database is unreachable: {exc}. The history lives in the database; "
                          "operations still work (the slot files are the truth)")
        self.records = records
        self._fill()
        self._title(query)

    # drawing -------------------------------------------------------------------------------------
    def _title(self, query: HistoryQuery | None, doing: str | None = None) -> None:
        text = Text(" history ", style="bold reverse")
        kind = (self.session.config.database.dsn and "postgresql") or "sqlite"
        text.append(f" audit trail from the database ({kind})")
        if query is not None:
            text.append(f"  {query.describe()}", style="bold")
        if doing:
            text.append(f"  {doing}", style="bold magenta")
        elif self.error is None and query is not None:
            more = "+" if len(self.records) >= query.limit else ""
            text.append(f"  {len(self.records)}{more} operation(s)")
        if self.error:
            text.append(f"\n {self.error}", style="bold red")
        self.query_one("#history-title", Static).update(text)

    def _fill(self) -> None:
        table = self.query_one(DataTable)
        table.clear()
        for index, r in enumerate(self.records):
            change = f"{r.from_state or '-'} → {r.to_state or '-'}" if (r.from_state or r.to_state) else "-"
            table.add_row(f"{r.created_at:%Y-%m-%d %H:%M:%S}", r.action, r.project or "*",
                          r.environment or "*", Text(r.result, style=RESULT_STYLE.get(r.result, "")),
                          _by(r), _took(r.duration_ms), change, key=str(index))
        self.shown_id = None
        self._show_log()

    def _show_log(self) -> None:
        log = self.query_one(Log)
        table = self.query_one(DataTable)
        row = table.cursor_row
        record = self.records[row] if self.records and 0 <= row < len(self.records) else None
        if record is not None and record.operation_id == self.shown_id:
            return
        log.clear()
        self.shown_id = record.operation_id if record else None
        if record is None:
            # the error's first words: "the database is unreachable", "Access Denied"
            log.write_line(self.error.split(":", 1)[0] if self.error else "no operation matches")
            return
        detail = {k: v for k, v in (record.detail or {}).items() if v not in (None, "")}
        head = (f"{record.action} {record.project or '*'} ({record.environment or '*'}) {record.result} "
                f"by {_by(record)} at {record.created_at:%Y-%m-%d %H:%M:%S}Z, operation {record.operation_id}")
        log.write_line(head)
        for key, value in detail.items():
            log.write_line(f"  {key}: {value}")
        log.write_lines((record.log or "(no log recorded)").splitlines())
        log.scroll_home(animate=False)

    @on(DataTable.RowHighlighted, "#history-table")
    @on(DataTable.RowSelected, "#history-table")
    def _picked(self) -> None:
        self._show_log()

    def operation_line(self, record: OperationRecord, line: str) -> None:
        """An operation of this console ended: its audit row is in the database now."""
        if not record.running:
            self.action_reload()
