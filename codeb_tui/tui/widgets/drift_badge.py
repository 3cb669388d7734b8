"""The top bar's drift badge: `drift 3` while the slot files and the database (or containers)
disagree; hidden at 0. Colours come from app.tcss (DriftBadge.-drift)."""

from __future__ import annotations

from textual.reactive import reactive
from textual.widgets import Static


class DriftBadge(Static):
    count: reactive[int | None] = reactive(None, init=False)
    """Drift items found by the last cheap check (None: not checked, or could not tell)."""

    def watch_count(self, count: int | None) -> None:
        self.set_class(bool(count), "-drift")
        self.update(f" drift {count} " if count else "")

    def show(self, count: int | None, by_kind: dict[str, int]) -> None:
        self.count = count
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(by_kind.items()))
        self.tooltip = (f"{kinds}\n" if kinds else "") + \
            "Slot files vs database, and missing containers; R for the full reconcile"
