"""The slot table: one row per project+environment, updated in place (only cells that changed)."""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey, RowKey

from codeb_tui.tui.rows import ENV_SHORT, ProjectRow, format_age, slot_cell

COMPACT = ("project", "env", "blue", "green", "grace")
WIDE = ("project", "env", "blue", "green", "active", "grace", "checked", "production", "preview")
LABELS = {"project": "Project", "env": "Env", "blue": "Blue", "green": "Green", "active": "Active",
          "grace": "Grace", "checked": "Checked", "production": "Production URL",
          "preview": "Preview URL"}


class SlotTable(DataTable):
    DEFAULT_CSS = """
    SlotTable { height: 1fr; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self._columns_shown: tuple[str, ...] = ()
        self._order: list[str] = []
        self._rows: dict[str, ProjectRow] = {}
        """The newest row of each key; drawn when on screen."""
        self._cells: dict[str, tuple] = {}
        """The cells drawn of each key (a row off screen may be newer than its cells)."""
        self._now: datetime | None = None
        self._mono: float | None = None
        self._restore: str | None = None

    def set_layout(self, wide: bool) -> None:
        columns = WIDE if wide else COMPACT
        if columns == self._columns_shown:
            return
        selected = self.selected_key
        self.clear(columns=True)
        self._cells.clear()
        self._order = []  # rows added again by the next show()
        self._columns_shown = columns
        for key in columns:
            self.add_column(LABELS[key], key=key)
        self._restore = selected

    @property
    def selected_key(self) -> str | None:
        if not self._order or self.cursor_row < 0 or self.cursor_row >= len(self._order):
            return None
        return self._order[self.cursor_row]

    def visible_keys(self) -> list[str]:
        """The rows on screen, top to bottom (none before the first layout)."""
        header = self.header_height if self.show_header else 0
        height = max(0, self.scrollable_content_region.height - header)
        first = max(0, int(self.scroll_y))
        return self._order[first:first + height]

    def show(self, rows: list[ProjectRow], now: datetime, mono: float | None) -> None:
        """Show `rows` in this order: rebuilt when the set or order of rows changed, else only
        the changed cells of the rows on screen are drawn (the others when scrolled to).
        `mono`: time.monotonic() for the check ages, None when the console is not live."""
        self._now, self._mono = now, mono
        self._rows = {r.key: r for r in rows}
        order = list(self._rows)
        if order != self._order:
            wide = self._columns_shown == WIDE
            selected = self._restore or self.selected_key
            self._restore = None
            self.clear()
            self._cells = {}
            for row in rows:
                self._cells[row.key] = cells = self._row_cells(row, now, mono, wide)
                self.add_row(*cells, key=row.key)
            self._order = order
            self._size_rows()
            if selected in self._rows:
                self.move_cursor(row=order.index(selected), animate=False)
        else:
            self._draw(self.visible_keys())

    def update_rows(self, rows: list[ProjectRow], now: datetime, mono: float | None) -> None:
        """Newer versions of some rows (same keys, same order): drawn if on screen. Any cell
        update makes DataTable render every row on screen again, so nothing else is touched
        (the check ages of the other rows move on when they are checked again)."""
        self._now, self._mono = now, mono
        changed = set()
        for row in rows:
            if row.key in self._rows:
                self._rows[row.key] = row
                changed.add(row.key)
        self._draw([key for key in self.visible_keys() if key in changed])

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if round(old_value) != round(new_value):
            self._draw(self.visible_keys())

    def _size_rows(self) -> None:
        """Column widths and scrollable size for the rows just added, at once: DataTable
        leaves them for when it is idle, so the first frame with rows was drawn with every
        column as wide as its label (cells cut short), and then once more."""
        if self._require_update_dimensions:
            self._require_update_dimensions = False
            new_rows = self._new_rows.copy()
            self._new_rows.clear()
            self._update_dimensions(new_rows)

    def _update_dimensions(self, new_rows) -> None:
        """DataTable's, with the column widths of new rows taken from the cells' own lengths
        (one line each, Text or plain words) instead of measuring every cell through Rich:
        0.2 s of the first frame at 600 rows. Rows whose cells are not known go the long way."""
        unknown = []
        columns = self.ordered_columns
        for row_key in new_rows:
            cells = self._cells.get(row_key.value)
            if cells is None or len(cells) != len(columns):
                unknown.append(row_key)
                continue
            for column, cell in zip(columns, cells):
                width = cell.cell_len if isinstance(cell, Text) else len(str(cell))
                column.content_width = max(column.content_width, width)
        super()._update_dimensions(unknown)

    def _draw(self, keys: list[str]) -> None:
        if self._now is None:
            return
        wide = self._columns_shown == WIDE
        changed: list[tuple[str, str, object]] = []
        wider = False
        for key in keys:
            new = self._row_cells(self._rows[key], self._now, self._mono, wide)
            old = self._cells.get(key)
            if old == new:
                continue
            for column, before, after in zip(self._columns_shown, old or (None,) * len(new), new):
                if before != after:
                    # Asking DataTable to update the width re-measures the whole column
                    # (every row, per cell): at 600 rows a poll cost seconds of CPU. Only
                    # a cell wider than its column needs it; columns shrink on a rebuild.
                    width = after.cell_len if isinstance(after, Text) else len(str(after))
                    wider = wider or width > self.columns[column].content_width
                    changed.append((key, column, after))
            self._cells[key] = new
        if not changed:
            return
        if wider or not self._patchable():
            for key, column, value in changed:
                self.update_cell(key, column, value, update_width=wider)
        else:
            self._patch_cells(changed)

    _CACHES = ("_data", "_row_locations", "_cell_render_cache", "_row_render_cache",
               "_row_renderable_cache", "_line_cache", "_get_offsets")

    def _patchable(self) -> bool:
        return all(hasattr(self, name) for name in self._CACHES)

    def _patch_cells(self, changed: list[tuple[str, str, object]]) -> None:
        """update_cell without its price. DataTable keys every cached render on one update
        count, so one changed cell renders every cell on screen again (~0.16 ms of CPU each,
        250 on a wide screen: a stall each poll). Here the cells are set and only their own
        cached renders are dropped, with the rows' and lines' that hold them (cell and row
        caches are keyed by row key first, then column key or line; row renderables by
        (count, row index); lines by y). tests/test_tui_live.py checks what is drawn."""
        cells: set[tuple[RowKey, ColumnKey]] = set()
        for key, column, value in changed:
            row_key, column_key = RowKey(key), ColumnKey(column)
            self._data[row_key][column_key] = value
            cells.add((row_key, column_key))
        rows = {row_key for row_key, _ in cells}
        for cached in [k for k in self._cell_render_cache.keys()
                       if k[0] in rows and (k[0], k[1]) in cells]:
            self._cell_render_cache.discard(cached)
        for cached in [k for k in self._row_render_cache.keys() if k[0] in rows]:
            self._row_render_cache.discard(cached)
        indexes = {self._row_locations.get(row_key) for row_key in rows}
        for cached in [k for k in self._row_renderable_cache.keys() if k[1] in indexes]:
            self._row_renderable_cache.discard(cached)
        lines = set()
        for y in {cached[0] for cached in self._line_cache.keys()}:
            try:
                if self._get_offsets(y)[0] in rows:
                    lines.add(y)
            except LookupError:
                continue
        for cached in [k for k in self._line_cache.keys() if k[0] in lines]:
            self._line_cache.discard(cached)
        for index in indexes:
            if index is not None:
                self.refresh_row(index)

    def _row_cells(self, row: ProjectRow, now: datetime, mono: float | None, wide: bool) -> tuple:
        name = Text(row.project, style="bold")
        if row.running:
            name.append(" ⟳", style="bold magenta")
        elif row.locked_by:
            name.append(" ⚿", style="bold red")
        env = row.environment.value if wide else ENV_SHORT[row.environment]
        grace = row.grace_left(now)
        cells = [name, env, slot_cell(row.blue, wide, exact=False),
                 slot_cell(row.green, wide, exact=False)]
        if wide:
            active = row.active
            cells.append(Text(active.slot.value, style="bold green") if active else Text("none", style="dim"))
        cells.append(Text(grace, style="yellow" if grace != "-" else "dim"))
        if wide:
            cells.append(format_age(row.check_age(mono)))
            cells.append(row.production_url or "-")
            cells.append(" ".join(row.preview_urls) or "-")
        return tuple(cells)
