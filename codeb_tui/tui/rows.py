"""The console's view model: the engine's `SlotStatus` records (one per slot) grouped into one row
per project+environment. Enums stay enums until a cell is drawn; no Textual here beyond Rich
`Text`, so it is cheap to build and easy to test."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from rich.text import Text

from codeb_tui.domain.model import LOCAL_HOST, Environment, ProjectSlots, Slot, SlotName, SlotState
from codeb_tui.domain.status import Health, SlotStatus

ENV_SHORT = {Environment.PRODUCTION: "prod", Environment.STAGING: "stag", Environment.PREVIEW: "prev"}
ENV_ORDER = {env: index for index, env in enumerate(Environment)}
STATE_STYLE = {
    SlotState.ACTIVE: "bold green",
    SlotState.DEPLOYED: "bold cyan",
    SlotState.GRACE: "bold yellow",
    SlotState.EMPTY: "dim",
}
STATE_MARK = {SlotState.ACTIVE: "●", SlotState.DEPLOYED: "◆", SlotState.GRACE: "◐",
              SlotState.EMPTY: "○"}
STATE_ORDER = {SlotState.DEPLOYED: 0, SlotState.GRACE: 1, SlotState.ACTIVE: 2, SlotState.EMPTY: 3}
"""Sort by state: rows waiting for a decision first."""
SORT_KEYS = ("project", "environment", "health", "state")
ENV_FILTERS: tuple[Environment | None, ...] = (None, *Environment)
LIVE_FIELDS = ("health", "health_detail", "latency_ms", "container_status", "checked_at", "hosts")
"""What a live poll adds to the registry's word about a slot."""


# --- one slot ------------------------------------------------------------------------------------


def image_tag(slot: SlotStatus) -> str:
    if not slot.image:
        return "-"
    last = slot.image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


SLOW_MS = 10.0
"""Answer times from which the slot table shows them: below, loopback jitter (0 ms, 1 ms, ...)
would redraw every row on screen each second for nothing (the detail pane shows them all)."""


def latency_label(ms: float | None, exact: bool = True) -> str:
    """"7ms" (exact), else "" below SLOW_MS and two significant figures above: "12ms",
    "120ms", "1.2s"."""
    if ms is None:
        return "ok"
    if exact:
        return f"{ms:.0f}ms"
    if ms < SLOW_MS:
        return ""
    if ms < 100:
        return f"{ms:.0f}ms"
    if ms < 1000:
        return f"{round(ms, -1):.0f}ms"
    return f"{ms / 1000:.1f}s"


def health_text(slot: SlotStatus, exact: bool = True) -> Text:
    if slot.state is SlotState.EMPTY:
        return Text("-", style="dim")
    if slot.health is Health.HEALTHY:
        return Text(f"✓{latency_label(slot.latency_ms, exact)}", style="green")
    if slot.health is Health.UNHEALTHY:
        return Text(f"✗{_short_detail(slot.health_detail)}", style="bold red")
    return Text("?", style="dim")


HOST_MARK = {Health.HEALTHY: ("✓", "green"), Health.UNHEALTHY: ("✗", "bold red"),
             Health.UNKNOWN: ("?", "dim"), Health.NONE: ("-", "dim")}


def hosts_text(slot: SlotStatus, wide: bool) -> Text:
    """Per-host health of a slot on remote or several hosts: each host with its mark (wide),
    or how many of them are healthy."""
    text = Text()
    if wide:
        for host in slot.hosts:
            mark, style = HOST_MARK[host.health] if host.reachable else ("✗", "bold red")
            text.append(f" {host.host}")
            text.append(mark if host.reachable else "⊘", style=style)
        return text
    healthy = sum(h.health is Health.HEALTHY for h in slot.hosts)
    text.append(f" {healthy}/{len(slot.hosts)}h",
                style="green" if healthy == len(slot.hosts) else "bold red")
    return text


def slot_cell(slot: SlotStatus, wide: bool = False, exact: bool = True) -> Text:
    """state word (coloured, readable without colour), port, tag, health (and per host, for a
    project on remote or several hosts). `exact`: every answer time (else only slow ones)."""
    text = Text()
    text.append(f"{STATE_MARK[slot.state]} {slot.state:<8}", style=STATE_STYLE[slot.state])
    text.append(f" {slot.port}")
    if slot.state is not SlotState.EMPTY:
        tag = image_tag(slot)
        tag = tag if wide or len(tag) <= 8 else tag[:7] + "…"
        text.append(f" {tag}", style="italic")
        text.append(" ")
        text.append_text(health_text(slot, exact))
        if slot.hosts:
            text.append_text(hosts_text(slot, wide))
    return text


def describe_slot(slot: SlotStatus) -> str:
    """One line for a confirmation: name, port, image, state and health."""
    health = slot.health_detail or slot.health
    if slot.latency_ms is not None and slot.health is Health.HEALTHY:
        health = f"{health} in {slot.latency_ms:.0f} ms"
    return f"{slot.slot} (port {slot.port}) {slot.image or '-'}  [{slot.state}, {health}]"


# --- one project+environment -----------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectRow:
    project: str
    environment: Environment
    blue: SlotStatus
    green: SlotStatus
    locked_by: str | None = None
    running: str | None = None  # an operation this console runs on it right now

    @property
    def key(self) -> str:
        return f"{self.project}/{self.environment}"

    def slots(self) -> tuple[SlotStatus, SlotStatus]:
        return (self.blue, self.green)

    def slot(self, name: SlotName) -> SlotStatus:
        return self.blue if name is SlotName.BLUE else self.green

    def in_state(self, state: SlotState) -> SlotStatus | None:
        return next((s for s in self.slots() if s.state is state), None)

    @property
    def active(self) -> SlotStatus | None:
        return self.in_state(SlotState.ACTIVE)

    @property
    def grace(self) -> SlotStatus | None:
        return self.in_state(SlotState.GRACE)

    @property
    def deployed(self) -> SlotStatus | None:
        return self.in_state(SlotState.DEPLOYED)

    def deploy_target(self) -> SlotStatus:
        """The slot a deploy goes into, by the domain's own rule."""
        pair = ProjectSlots(self.project, self.environment,
                            *(Slot(s.slot, s.port, s.state) for s in self.slots()))
        return self.slot(pair.deploy_target().name)

    @property
    def production_url(self) -> str | None:
        active = self.active
        return active.url if active else None

    @property
    def preview_urls(self) -> list[str]:
        return [s.url for s in self.slots()
                if s.url and s.state in (SlotState.DEPLOYED, SlotState.GRACE)]

    @property
    def hosts(self) -> tuple[str, ...]:
        """Where the project runs (`local` unless its slot file names hosts)."""
        return tuple(h.host for h in self.blue.hosts) or (LOCAL_HOST,)

    @property
    def unhealthy(self) -> bool:
        return any(s.health is Health.UNHEALTHY for s in self.slots()
                   if s.state is not SlotState.EMPTY)

    def check_age(self, mono: float | None) -> float | None:
        """Seconds since the older health check of its slots at time.monotonic() `mono`; None
        when not live or a slot was never checked."""
        times = [s.checked_at for s in self.slots() if s.state is not SlotState.EMPTY]
        if mono is None or not times or None in times:
            return None
        return mono - min(times)

    def grace_left(self, now: datetime) -> str:
        grace = self.grace
        if grace is None or grace.grace_expires_at is None:
            return "-"
        return format_left(grace.grace_expires_at - now)


def group_rows(status: list[SlotStatus]) -> list[ProjectRow]:
    """One row per project+environment that has both its slots."""
    by_key: dict[tuple[str, Environment], dict[SlotName, SlotStatus]] = {}
    for slot in status:
        by_key.setdefault(slot.key, {})[slot.slot] = slot
    return [ProjectRow(project, environment, slots[SlotName.BLUE], slots[SlotName.GREEN])
            for (project, environment), slots in by_key.items() if len(slots) == 2]


def merge_health(fresh: list[SlotStatus], previous: list[SlotStatus]) -> list[SlotStatus]:
    """Registry-only records (live=False) with the last live health kept for slots that did not
    change (same state, port and image); a changed slot shows unknown until the next poll."""
    before = {(s.project, s.environment, s.slot): s for s in previous}
    merged = []
    for slot in fresh:
        old = before.get((slot.project, slot.environment, slot.slot))
        if old is not None and (old.state, old.port, old.image) == (slot.state, slot.port, slot.image):
            slot = replace(slot, **{name: getattr(old, name) for name in LIVE_FIELDS})
        merged.append(slot)
    return merged


def select_rows(rows: list[ProjectRow], text: str, environment: Environment | None,
                sort: str, host: str | None = None) -> list[ProjectRow]:
    needle = text.strip().lower()
    chosen = [
        r for r in rows
        if (environment is None or r.environment is environment)
        and (host is None or host in r.hosts)
        and (not needle or needle in r.project
             or any(needle in (s.image or "").lower() for s in r.slots())
             or needle in r.environment)
    ]
    base = lambda r: (r.project, ENV_ORDER[r.environment])  # noqa: E731
    if sort == "environment":
        chosen.sort(key=lambda r: (ENV_ORDER[r.environment], r.project))
    elif sort == "health":
        chosen.sort(key=lambda r: (not r.unhealthy, base(r)))
    elif sort == "state":
        chosen.sort(key=lambda r: (min(STATE_ORDER[s.state] for s in r.slots()), base(r)))
    else:
        chosen.sort(key=base)
    return chosen


# --- words -----------------------------------------------------------------------------------------


def format_left(delta: timedelta) -> str:
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
