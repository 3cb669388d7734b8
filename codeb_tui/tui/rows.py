"""The console's view model: `Engine.status()` rows (one per slot) grouped into one row per
project+environment, with the words and colours the slot table shows. No Textual here beyond
Rich `Text`, so it is cheap to build and easy to test."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from rich.text import Text

ENV_SHORT = {"production": "prod", "staging": "stag", "preview": "prev"}
ENV_ORDER = {"production": 0, "staging": 1, "preview": 2}
STATE_STYLE = {
    "active": "bold green",
    "deployed": "bold cyan",
    "grace": "bold yellow",
    "empty": "dim",
}
STATE_MARK = {"active": "●", "deployed": "◆", "grace": "◐", "empty": "○"}
SORT_KEYS = ("project", "environment", "health", "state")
ENV_FILTERS = (None, "production", "staging", "preview")


@dataclass(frozen=True)
class SlotView:
    name: str
    state: str
    port: int
    image: str | None
    health: str  # healthy | unhealthy | unknown | none
    health_detail: str | None
    latency_ms: float | None
    container_status: str | None
    url: str | None
    grace_expires_at: datetime | None
    container: str | None = None

    @property
    def tag(self) -> str:
        if not self.image:
            return "-"
        last = self.image.rsplit("/", 1)[-1]
        return last.split(":", 1)[1] if ":" in last else "latest"

    def health_text(self) -> Text:
        if self.state == "empty":
            return Text("-", style="dim")
        if self.health == "healthy":
            ms = f"{self.latency_ms:.0f}ms" if self.latency_ms is not None else "ok"
            return Text(f"✓{ms}", style="green")
        if self.health == "unhealthy":
            return Text(f"✗{_short_detail(self.health_detail)}", style="bold red")
        return Text("?", style="dim")

    def cell(self, wide: bool = False) -> Text:
        """state word (coloured, readable without colour), port, tag, health."""
        text = Text()
        text.append(f"{STATE_MARK.get(self.state, '?')} {self.state:<8}", style=STATE_STYLE.get(self.state, ""))
        text.append(f" {self.port}")
        if self.state != "empty":
            tag = self.tag if wide or len(self.tag) <= 8 else self.tag[:7] + "…"
            text.append(f" {tag}", style="italic")
            text.append(" ")
            text.append_text(self.health_text())
        return text


@dataclass(frozen=True)
class ProjectRow:
    project: str
    environment: str
    blue: SlotView
    green: SlotView
    production_url: str | None
    version: int
    locked_by: str | None = None
    running: str | None = None  # an operation this console runs on it right now
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> str:
        return f"{self.project}/{self.environment}"

    def slots(self) -> tuple[SlotView, SlotView]:
        return (self.blue, self.green)

    def in_state(self, state: str) -> SlotView | None:
        return next((s for s in self.slots() if s.state == state), None)

    @property
    def active(self) -> SlotView | None:
        return self.in_state("active")

    @property
    def grace(self) -> SlotView | None:
        return self.in_state("grace")

    @property
    def deployed(self) -> SlotView | None:
        return self.in_state("deployed")

    def deploy_target(self) -> SlotView:
        """Mirrors ProjectSlots.deploy_target: the slot that is not active (blue when new)."""
        active = self.active
        if active is None:
            return self.deployed or self.blue
        return self.green if active.name == "blue" else self.blue

    @property
    def preview_urls(self) -> list[str]:
        return [s.url for s in self.slots() if s.url and s.state in ("deployed", "grace")]

    @property
    def unhealthy(self) -> bool:
        return any(s.health == "unhealthy" for s in self.slots() if s.state != "empty")

    def grace_left(self, now: datetime) -> str:
        grace = self.grace
        if grace is None or grace.grace_expires_at is None:
            return "-"
        return format_left(grace.grace_expires_at - now)


def format_left(delta) -> str:
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "expired"
    if seconds >= 3600:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    return f"{seconds / 60:.0f}m ago"


def _short_detail(detail: str | None) -> str:
    if not detail:
        return "down"
    if detail.startswith("HTTP "):
        return detail[5:]
    return {"connection refused": "refused", "timed out": "timeout"}.get(detail, detail[:8])


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def group_rows(status: list[dict[str, Any]]) -> list[ProjectRow]:
    """Engine.status() rows (one per slot) -> one row per project+environment."""
    by_key: dict[tuple[str, str], dict[str, dict]] = {}
    for row in status:
        by_key.setdefault((row["project"], row["environment"]), {})[row["slot"]] = row
    out = []
    for (project, environment), slots in by_key.items():
        if set(slots) != {"blue", "green"}:
            continue
        views = {name: SlotView(
            name=name, state=r["state"], port=r["port"], image=r.get("image"),
            health=r.get("health") or "unknown", health_detail=r.get("health_detail"),
            latency_ms=r.get("latency_ms"), container_status=r.get("container_status"),
            url=r.get("url"), grace_expires_at=_parse_time(r.get("grace_expires_at")),
            container=r.get("container"),
        ) for name, r in slots.items()}
        active = next((v for v in views.values() if v.state == "active"), None)
        out.append(ProjectRow(project, environment, views["blue"], views["green"],
                              production_url=active.url if active else None,
                              version=slots["blue"].get("version", 0)))
    return out


def merge_health(fresh: list[dict[str, Any]], previous: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Registry-only rows (live=False) with the last live health kept for slots that did not
    change (same state, port and image); a changed slot shows unknown until the next poll."""
    keep = ("health", "health_detail", "latency_ms", "container_status")
    before = {(r["project"], r["environment"], r["slot"]): r for r in previous}
    merged = []
    for row in fresh:
        old = before.get((row["project"], row["environment"], row["slot"]))
        if old is not None and all(old.get(k) == row.get(k) for k in ("state", "port", "image")):
            row = {**row, **{k: old.get(k) for k in keep}}
        merged.append(row)
    return merged


def select_rows(rows: list[ProjectRow], text: str, environment: str | None, sort: str) -> list[ProjectRow]:
    needle = text.strip().lower()
    chosen = [
        r for r in rows
        if (environment is None or r.environment == environment)
        and (not needle or needle in r.project
             or any(needle in (s.image or "").lower() for s in r.slots())
             or needle in r.environment)
    ]
    base = lambda r: (r.project, ENV_ORDER.get(r.environment, 9))  # noqa: E731
    if sort == "environment":
        chosen.sort(key=lambda r: (ENV_ORDER.get(r.environment, 9), r.project))
    elif sort == "health":
        chosen.sort(key=lambda r: (not r.unhealthy, base(r)))
    elif sort == "state":
        order = {"deployed": 0, "grace": 1, "active": 2, "empty": 3}
        chosen.sort(key=lambda r: (min(order.get(s.state, 9) for s in r.slots()), base(r)))
    else:
        chosen.sort(key=base)
    return chosen
