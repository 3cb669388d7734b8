"""Operations run to their end whatever their client does.

Closing an engine operation's event stream cancels it, so a request never iterates one
itself: a task of the server's drains it and keeps every event, and requests follow from the
side. A client that leaves, a request timeout or a server shutdown (which waits for them) never
cuts a deploy half-way; the engine records it as usual.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from codeb_tui.domain import events

log = logging.getLogger("codeb.api")

TERMINAL = (events.Finished, events.Failed)


class Running:
    """One operation's events as they come, for any number of followers."""

    def __init__(self) -> None:
        self.events: list[events.Event] = []
        self._more = asyncio.Event()
        self.done = False

    @property
    def terminal(self) -> events.Event | None:
        last = self.events[-1] if self.events else None
        return last if isinstance(last, TERMINAL) else None

    async def drain(self, stream: AsyncIterator[events.Event]) -> None:
        try:
            async for event in stream:
                self.events.append(event)
                self._wake()
        except Exception:  # the stream ends with Failed on any error; this would be a bug
            log.exception("an operation's event stream broke off")
        finally:
            self.done = True
            self._wake()

    def _wake(self) -> None:
        self._more.set()
        self._more = asyncio.Event()

    async def follow(self) -> AsyncIterator[events.Event]:
        """Every event from the first, then each as it comes, up to the terminal one."""
        seen = 0
        while True:
            waiting = self._more
            while seen < len(self.events):
                seen += 1
                yield self.events[seen - 1]
            if self.done:
                return
            await waiting.wait()

    async def finished(self) -> events.Event | None:
        async for _ in self.follow():
            pass
        return self.terminal


class Operations:
    """The operations this server runs, each in a task of its own."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def start(self, stream: AsyncIterator[events.Event]) -> Running:
        running = Running()
        task = asyncio.get_running_loop().create_task(running.drain(stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return running

    @property
    def count(self) -> int:
        return len(self._tasks)

    async def wait(self) -> None:
        """Until every operation has ended (at shutdown, before the engine closes)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
