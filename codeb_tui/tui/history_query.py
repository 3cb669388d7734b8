"""The history screen's search line: `project:shop action:promote team:ops since:2h`.

Pure parsing (no Textual): a query becomes the keyword arguments of `Engine.history`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

KEYS = ("project", "action", "team", "since", "until", "limit")
SYNTAX = ("project:NAME  action:deploy|promote|rollback|cleanup|...  team:NAME  "
          "since:30m|2h|3d|1w|2026-01-15[T10:00]  until:(same)  limit:N  "
          "(a bare word is a project; times are UTC)")
DEFAULT_LIMIT = 200
MAX_LIMIT = 5000
_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class QueryError(ValueError):
    """The query cannot be understood; the message says which word and why."""


@dataclass(frozen=True)
class HistoryQuery:
    project: str | None = None
    action: str | None = None
    team: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = DEFAULT_LIMIT

    def filters(self) -> dict:
        """Keyword arguments for Engine.history."""
        return {"project": self.project, "action": self.action, "team": self.team,
                "since": self.since, "until": self.until, "limit": self.limit}

    def describe(self) -> str:
        parts = [f"{k}:{v}" for k, v in (("project", self.project), ("action", self.action),
                                        ("team", self.team)) if v]
        if self.since:
            parts.append(f"since {self.since:%Y-%m-%d %H:%M}Z")
        if self.until:
            parts.append(f"until {self.until:%Y-%m-%d %H:%M}Z")
        return " ".join(parts) or "everything"


def parse_time(text: str, now: datetime) -> datetime:
    """`2h` (ago), or an ISO date / date-time (UTC unless it names a zone)."""
    m = _RELATIVE.match(text)
    if m:
        return now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise QueryError(f"{text!r} is not a time: use 30m, 2h, 3d, 1w or 2026-01-15[T10:00]") from None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def parse_query(text: str, now: datetime) -> HistoryQuery:
    """Parse the search line; QueryError names the first word that does not fit."""
    values: dict = {}
    for word in text.split():
        key, sep, value = word.partition(":")
        if not sep:
            key, value = "project", word
        key = key.lower()
        if key not in KEYS:
            raise QueryError(f"unknown key {key!r} in {word!r}: use {', '.join(KEYS)}")
        if not value:
            raise QueryError(f"{word!r}: a value is missing after the colon")
        if key in values:
            raise QueryError(f"{key} is given twice")
        if key in ("since", "until"):
            values[key] = parse_time(value, now)
        elif key == "limit":
            if not value.isdigit() or not 0 < int(value) <= MAX_LIMIT:
                raise QueryError(f"limit: expected a number from 1 to {MAX_LIMIT}")
            values[key] = int(value)
        else:
            values[key] = value
    query = HistoryQuery(**values)
    if query.since and query.until and query.since >= query.until:
        raise QueryError("since must be before until")
    return query
