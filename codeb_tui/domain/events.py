"""Typed events that operations yield. The CLI prints them, the console streams them.

An operation's stream always ends with exactly one `Finished` or `Failed`: a failure is an
event, not an exception escaping the generator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True, kw_only=True)
class Event:
    kind: ClassVar[str] = "event"
    operation: str
    project: str
    environment: str
    operation_id: str
    ts: datetime = field(default_factory=_now)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ts"] = self.ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {"event": self.kind, **data}

    def line(self) -> str:
        """The event as one human-readable line (CLI and log pane)."""
        return self.kind


@dataclass(frozen=True, kw_only=True)
class Started(Event):
    kind: ClassVar[str] = "started"
    detail: str = ""

    def line(self) -> str:
        return f"{self.operation} {self.project} ({self.environment}) {self.detail}".rstrip()


@dataclass(frozen=True, kw_only=True)
class StepStarted(Event):
    kind: ClassVar[str] = "step_started"
    step: str

    def line(self) -> str:
        return f"-> {self.step}"


@dataclass(frozen=True, kw_only=True)
class Log(Event):
    kind: ClassVar[str] = "log"
    message: str
    level: str = "info"  # info | warning | error

    def line(self) -> str:
        prefix = {"warning": "warning: ", "error": "error: "}.get(self.level, "")
        return f"   {prefix}{self.message}"


@dataclass(frozen=True, kw_only=True)
class StepFinished(Event):
    kind: ClassVar[str] = "step_finished"
    step: str
    ok: bool
    duration_ms: float

    def line(self) -> str:
        mark = "ok" if self.ok else "FAILED"
        return f"<- {self.step} {mark} ({self.duration_ms:.0f} ms)"


@dataclass(frozen=True, kw_only=True)
class Finished(Event):
    kind: ClassVar[str] = "finished"
    summary: str
    duration_ms: float
    result: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    exit_code: int = 0

    def line(self) -> str:
        return f"done: {self.summary}"


@dataclass(frozen=True, kw_only=True)
class Failed(Event):
    kind: ClassVar[str] = "failed"
    error: str
    error_type: str
    exit_code: int
    duration_ms: float
    step: str | None = None
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        return f"failed: {self.error}"


Terminal = Finished | Failed
