"""This session's operations: each keeps its log after it ends, to go back to."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

from codeb_tui.domain import events

_ids = itertools.count(1)


@dataclass
class OperationRecord:
    operation: str
    project: str
    environment: str
    detail: str = ""
    id: int = field(default_factory=lambda: next(_ids))
    state: str = "running"  # running | succeeded | failed | refused | cancelled
    lines: list[str] = field(default_factory=list)
    error: str | None = None
    summary: str | None = None
    started: float = field(default_factory=time.monotonic)
    duration_ms: float | None = None
    progress_board: events.ProgressBoard = field(default_factory=events.ProgressBoard)
    """How far each running step is (a pull, a health wait), until that step ends."""

    @property
    def progress(self) -> events.Progress | None:
        """The latest progress event of a step still running."""
        return self.progress_board.latest

    @property
    def key(self) -> tuple[str, str]:
        return (self.project, self.environment)

    @property
    def title(self) -> str:
        what = f"{self.operation} {self.project} ({self.environment})"
        return f"{what} {self.detail}".rstrip()

    @property
    def running(self) -> bool:
        return self.state == "running"

    def add(self, event: events.Event) -> str:
        """Record one event; return the line shown for it (a progress event's is kept in no
        log: the next one replaces it)."""
        line = f"{event.ts:%H:%M:%S} {event.line()}"
        self.progress_board.update(event)
        if isinstance(event, events.Progress):
            return line
        self.lines.append(line)
        if isinstance(event, events.Finished):
            self.state, self.summary, self.duration_ms = "succeeded", event.summary, event.duration_ms
        elif isinstance(event, events.Failed):
            self.state = "refused" if event.exit_code == 2 else "failed"
            self.error, self.duration_ms = event.error, event.duration_ms
        return line

    def fail(self, error: str, state: str = "failed") -> str:
        self.state, self.error = state, error
        line = f"{time.strftime('%H:%M:%S')} {state}: {error}"
        self.lines.append(line)
        return line
