"""Inter-process locks on registry files, with the holder written down for whoever is refused.

`flock` is released by the kernel when the holder dies, so a crashed codeb never leaves a stale
lock behind; the holder record is only there to name who holds it and since when. The holder
removes the lock file as it lets go, so no lock file outlives its operation; whoever then gets
the lock on the removed file sees it is no longer at its path and opens the path again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import getpass
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path

from codeb_tui.domain.errors import LockHeld, RegistryCorrupt


def current_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return str(os.getuid())


LockWaiting = Callable[[str], None]
"""Told once, with the holder's description, when a lock is taken by someone else and the
caller has chosen to wait for it."""

POLL_INTERVAL = 0.05


@asynccontextmanager
async def file_lock(path: Path, purpose: str, what: str, wait: float = 0.0,
                    actor: str | None = None, on_wait: LockWaiting | None = None
                    ) -> AsyncIterator[LockHolder]:
    """Hold an exclusive lock on `path`, or raise LockHeld naming the holder.

    `wait` seconds are spent retrying before giving up (0: refuse at once). The wait never
    blocks the event loop: flock is tried without blocking and retried after an asyncio sleep,
    so a console or a server keeps answering while one of its operations waits. Two operations
    of one process exclude each other too (each opens its own file description)."""
    fd = _open_lock_file(path)
    try:
        deadline = time.monotonic() + wait
        announced = False
        while True:
            if _try_flock(fd):
                if _still_at(path, fd):
                    break
                os.close(fd)  # the previous holder removed it as it let go: take the path's
                fd = _open_lock_file(path)
                continue
            if time.monotonic() >= deadline:
                raise LockHeld(f"{what} is locked: {describe_holder(path)}") from None
            if on_wait is not None and not announced:
                announced = True
                on_wait(f"waiting up to {wait:g} s for {what}: {describe_holder(path)}")
            await asyncio.sleep(POLL_INTERVAL)
        holder = LockHolder(fd, {
            "pid": os.getpid(),
            "user": actor or current_actor(),
            "host": socket.gethostname(),
            "purpose": purpose,
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
        holder.write()
        try:
            yield holder
        finally:
            _release(path, fd)
    finally:
        os.close(fd)


class LockHolder:
    """The record a held lock carries; the holder may add to it (the step an operation is at),
    so that whoever looks (another console) sees where it is."""

    def __init__(self, fd: int, record: dict) -> None:
        self._fd = fd
        self.record = record

    def write(self) -> None:
        data = json.dumps(self.record).encode()
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))  # after the write: a reader never sees an empty file

    def note_step(self, step: str | None) -> None:
        self.record["step"] = step
        self.write()


def _release(path: Path, fd: int) -> None:
    """Remove the lock file while still holding it (see the module's docstring), then let go;
    neither call waits."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fcntl.flock(fd, fcntl.LOCK_UN)


def _still_at(path: Path, fd: int) -> bool:
    """Whether the locked file is still the one at `path`."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)


def _open_lock_file(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        raise RegistryCorrupt(f"{path}: cannot open the lock file ({exc.strerror}); "
                              f"{path.parent} must be a writable directory") from None


def _try_flock(fd: int) -> bool:
    """One non-blocking attempt: True when the lock is ours."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def read_holder(path: Path) -> dict | None:
    try:
        text = path.read_text()
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None


def describe_holder(path: Path) -> str:
    holder = read_holder(path)
    if not holder:
        return "held by another codeb process"
    since = holder.get("since", "?")
    age = ""
    try:
        started = datetime.fromisoformat(since)
        age = f" ({int((datetime.now(timezone.utc) - started).total_seconds())} s ago)"
    except (TypeError, ValueError):
        pass
    step = f" at step '{holder['step']}'" if holder.get("step") else ""
    return (
        f"{holder.get('purpose', 'an operation')} by {holder.get('user', '?')}{step} "
        f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')}) since {since}{age}"
    )


def is_locked(path: Path) -> bool:
    """Whether another process holds `path` right now (for status displays)."""
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
