"""App-wide messages: results of the poller, the registry watcher and operation workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message

from codeb_tui.domain import events


@dataclass
class StatusRefreshed(Message):
    """New slot rows (live poll or registry change). Only the newest one matters."""

    rows: list[dict[str, Any]]
    checked_at: float | None  # monotonic time of the live poll the health comes from
    poll_period: float | None = None

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, StatusRefreshed)


@dataclass
class ServicesChecked(Message):
    """Reachability of Docker, Caddy and the database (None: not checked)."""

    docker: bool | None
    caddy: bool | None
    database: bool | None

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ServicesChecked)


@dataclass
class OperationUpdated(Message):
    """An event of one of this session's operations (streamed as it happens)."""

    operation_id: int
    event: events.Event | None  # None: the worker ended without an event (error, cancel)


@dataclass
class DriftChecked(Message):
    """The cheap periodic reconcile (files vs database, plus the poller's missing containers).
    `count` is None when it could not be told (database unreachable)."""

    count: int | None
    by_kind: dict[str, int]
    error: str | None = None

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, DriftChecked)
