"""The slot table: one row per project+environment, updated in place (only cells that changed)."""

from __future__ import annotations

from datetime import datetime

from rich.text import Text
from textual.widgets import DataTable

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
        self._cells: dict[str, tuple] = {}
        self._order: list[str] = []

    def set_layout(self, wide: bool) -> None:
        columns = WIDE if wide else COMPACT
        if columns == self._columns_shown:
            return
        selected = self.selected_key
        self.clear(columns=True)
        self._cells.clear()
        self._order = []
        self._columns_shown = columns
        for key in columns:
            self.add_column(LABELS[key], key=key)
        self._restore = selected

    @property
    def selected_key(self) -> str | None:
        if not self._order or self.cursor_row < 0 or self.cursor_row >= len(self._order):
            return None
        return self._order[self.cursor_row]

    def show(self, rows: list[ProjectRow], now: datetime, age: float | None) -> None:
        """Show `rows` in this order; rebuild only when the set or order of rows changed."""
        wide = self._columns_shown == WIDE
        order = [r.key for r in rows]
        cells = {r.key: self._row_cells(r, now, age, wide) for r in rows}
        if order != self._order:
            selected = getattr(self, "_restore", None) or self.selected_key
            self._restore = None
            self.clear()
            for key in order:
                self.add_row(*cells[key], key=key)
            self._order = order
            if selected in order:
                self.move_cursor(row=order.index(selected), animate=False)
        else:
            for key in order:
                old = self._cells.get(key)
                new = cells[key]
                if old == new:
                    continue
                for column, (before, after) in zip(self._columns_shown, zip(old or (None,) * len(new), new)):
                    if before != after:
                        # Asking DataTable to update the width re-measures the whole column
                        # (every row, per cell): at 600 rows a poll cost seconds of CPU. Only
                        # a cell wider than its column needs it; columns shrink on a rebuild.
                        width = after.cell_len if isinstance(after, Text) else len(str(after))
                        wider = width > self.columns[column].content_width
                        self.update_cell(key, column, after, update_width=wider)
        self._cells = cells

    def _row_cells(self, row: ProjectRow, now: datetime, age: float | None, wide: bool) -> tuple:
        name = Text(row.project, style="bold")
        if row.running:
            name.append(" ⟳", style="bold magenta")
        elif row.locked_by:
            name.append(" ⚿", style="bold red")
        env = row.environment.value if wide else ENV_SHORT[row.environment]
        grace = row.grace_left(now)
        cells = [name, env, slot_cell(row.blue, wide), slot_cell(row.green, wide)]
        if wide:
            active = row.active
            cells.append(Text(active.slot.value, style="bold green") if active else Text("none", style="dim"))
        cells.append(Text(grace, style="yellow" if grace != "-" else "dim"))
        if wide:
            cells.append(format_age(age))
            cells.append(row.production_url or "-")
            cells.append(" ".join(row.preview_urls) or "-")
        return tuple(cells)
