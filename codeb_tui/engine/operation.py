"""The machinery every operation shares: an event stream, timed steps, warnings, and the
terminal event that always closes the stream.

An operation body is a coroutine that receives an `OperationRun`, reports through it and returns
`(summary, result)`; `run_operation` turns it into an async generator of events. Errors raised
by the body become a `Failed` event with the error's exit code.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from codeb_tui.domain import events
from codeb_tui.domain.errors import CodebError

Body = Callable[["OperationRun"], Awaitable[tuple[str, dict[str, Any]]]]
Epilogue = Callable[["OperationRun", events.Event], Awaitable[None]]


@dataclass
class OperationRun:
    operation: str
    project: str
    environment: str
    actor: str
    operation_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    warnings: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    current_step: str | None = None
    # Filled in by the body for the audit trail.
    slot: str | None = None
    image: str | None = None
    from_state: str | None = None
    to_state: str | None = None
    team: str | None = None
    touched: bool = False
    """Whether the body got past validation (a refused bad input leaves no trace anywhere)."""
    written: list[Any] = field(default_factory=list)
    """The slot files (ProjectSlots) the body wrote, for the database rows after it."""
    hosts: tuple[str, ...] = ("local",)
    """The hosts the operation works on (the project's, from its slot file or its first deploy)."""
    on_step: Callable[[str], None] | None = None
    """Told each step's name as it starts: the facade writes it into the project lock's holder
    record, where every other console reads who is doing what."""
    _t0: float = field(default_factory=time.perf_counter)

    def _common(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "project": self.project,
            "environment": self.environment,
            "operation_id": self.operation_id,
        }

    def emit(self, event: events.Event) -> None:
        if not event.transient:
            self.lines.append(f"{event.ts:%H:%M:%S} {event.line()}")
        self.queue.put_nowait(event)

    def progress(self, kind: type[events.Progress], **fields: Any) -> None:
        """How far a step is (a transient event: in no log nor history)."""
        self.emit(kind(**fields, **self._common()))

    def log(self, message: str, level: str = "info") -> None:
        self.emit(events.Log(message=message, level=level, **self._common()))

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.log(message, level="warning")

    @property
    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self._t0) * 1000

    @asynccontextmanager
    async def step(self, name: str):
        self.current_step = name
        if self.on_step is not None:
            self.on_step(name)
        self.emit(events.StepStarted(step=name, **self._common()))
        started = time.perf_counter()
        ok = False
        try:
            yield
            ok = True
        finally:
            self.emit(events.StepFinished(
                step=name, ok=ok, duration_ms=(time.perf_counter() - started) * 1000, **self._common()
            ))
            if ok:
                self.current_step = None


async def run_operation(
    run: OperationRun, body: Body, epilogue: Epilogue | None = None, detail: str = ""
) -> AsyncIterator[events.Event]:
    """Run `body` and yield its events as they happen, ending with Finished or Failed.

    `epilogue` sees the terminal event before it is yielded (the audit trail is written there)
    and may add warnings to it. Closing the generator early cancels the body.
    """
    common = run._common()
    yield events.Started(detail=detail, **common)

    async def guarded() -> events.Event:
        try:
            summary, result = await body(run)
            return events.Finished(summary=summary, result=result, duration_ms=run.elapsed_ms,
                                   **common)
        except CodebError as exc:
            return events.Failed(error=str(exc), error_type=type(exc).__name__,
                                 exit_code=exc.exit_code, duration_ms=run.elapsed_ms,
                                 step=run.current_step, **common)
        except Exception as exc:  # a bug or an unforeseen failure: still an event
            return events.Failed(error=f"internal error: {type(exc).__name__}: {exc}",
                                 error_type=type(exc).__name__, exit_code=1,
                                 duration_ms=run.elapsed_ms, step=run.current_step, **common)

    task = asyncio.create_task(guarded())
    try:
        while True:
            getter = asyncio.ensure_future(run.queue.get())
            await asyncio.wait([getter, task], return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
                continue
            getter.cancel()
            while not run.queue.empty():
                yield run.queue.get_nowait()
            terminal = task.result()
            break
        if epilogue is not None and run.touched:
            await epilogue(run, terminal)
            while not run.queue.empty():
                yield run.queue.get_nowait()
        terminal = _with_warnings(terminal, run.warnings)
        run.lines.append(f"{terminal.ts:%H:%M:%S} {terminal.line()}")
        yield terminal
    finally:
        if not task.done():
            task.cancel()
            try:
                await task
            except BaseException:
                pass


def _with_warnings(event: events.Event, warnings: list[str]) -> events.Event:
    if not warnings or not isinstance(event, (events.Finished, events.Failed)):
        return event
    return replace(event, warnings=list(warnings))
