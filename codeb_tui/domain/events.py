"""Typed events that operations yield. The CLI prints them, the console streams them.

An operation's stream always ends with exactly one `Finished` or `Failed`: a failure is an
event, not an exception escaping the generator. `Progress` events (a pull, a health wait) are
transient: each replaces the one before, so they are drawn in place and kept in no log.
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
    transient: ClassVar[bool] = False
    """Replaced by the next event of its kind: drawn in place, kept in no log nor history."""
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


@dataclass(frozen=True, kw_only=True)
class Progress(Event):
    """How far long work inside a step is, as it happens (about ten a second at most)."""
    kind: ClassVar[str] = "progress"
    transient: ClassVar[bool] = True
    step: str
    fraction: float
    """0..1, for a progress bar."""

    def label(self) -> str:
        """The progress in words, without the bar."""
        return f"{self.fraction:.0%}"

    def line(self) -> str:
        return f"   {self.step}: {self.label()}"


def _mb(count: int) -> str:
    return f"{count / 1e6:.1f}"


@dataclass(frozen=True, kw_only=True)
class PullProgress(Progress):
    """An image pull: the daemon's per-layer reports added up."""
    kind: ClassVar[str] = "pull_progress"
    image: str
    layers: int
    layers_done: int
    downloaded: int
    """Bytes, of `total`."""
    extracted: int
    total: int
    """Bytes of the layers whose size is known so far (a waiting layer's is not)."""

    def label(self) -> str:
        text = f"{self.layers_done}/{self.layers} layers, {_mb(self.downloaded)}/{_mb(self.total)} MB"
        if self.downloaded >= self.total and self.extracted < self.total:
            text += f", {_mb(self.extracted)} MB extracted"
        return text


@dataclass(frozen=True, kw_only=True)
class HealthWait(Progress):
    """The health gate still waiting for a new container."""
    kind: ClassVar[str] = "health_wait"
    elapsed_s: float
    timeout_s: float
    detail: str
    """The last answer (or its absence)."""

    def label(self) -> str:
        return f"{self.elapsed_s:.1f} s of {self.timeout_s:g} s ({self.detail})"


Terminal = Finished | Failed


class ProgressBoard:
    """The progress of an operation's running steps: one, or one per host of a project on
    several ("web1: pull image", "web2: pull image"), each until its step ends. The console's
    progress line and the CLI's both draw `summary()`."""

    def __init__(self) -> None:
        self._by_step: dict[str, Progress] = {}

    def update(self, event: Event) -> bool:
        """Take any event of the operation; True when the progress shown changed."""
        if isinstance(event, Progress):
            self._by_step.pop(event.step, None)  # the latest last
            self._by_step[event.step] = event
            return True
        if isinstance(event, (Finished, Failed)):
            ended = list(self._by_step)
        elif isinstance(event, StepFinished):
            # A step run on every host ("pull image") ends the hosts' parts of it too.
            ended = [s for s in self._by_step if s == event.step or s.endswith(": " + event.step)]
        else:
            return False
        for step in ended:
            del self._by_step[step]
        return bool(ended)

    @property
    def latest(self) -> Progress | None:
        return next(reversed(self._by_step.values()), None)

    def summary(self) -> tuple[str, float, str] | None:
        """(what, fraction, figures), None when no step reports: several hosts at work on one
        step share it, the fraction is the slowest one's (the step waits for it) and the
        figures say each host's share."""
        running = sorted(self._by_step.values(), key=lambda event: event.step)
        if not running:
            return None
        fraction = max(0.0, min(1.0, min(event.fraction for event in running)))
        if len(running) == 1:
            return running[0].step, fraction, running[0].label()
        hosts_steps = [event.step.partition(": ") for event in running]
        steps = ", ".join(dict.fromkeys(step for _, _, step in hosts_steps))
        figures = ", ".join(f"{host} {event.fraction:.0%}"
                            for (host, _, _), event in zip(hosts_steps, running))
        return f"{steps} on {len(running)} hosts", fraction, figures

BY_KIND: dict[str, type[Event]] = {kind.kind: kind for kind in (
    Started, StepStarted, Log, StepFinished, Progress, PullProgress, HealthWait, Finished, Failed)}
"""Every event type by the `event` field of its JSON (`codeb --json`, the API's NDJSON)."""
