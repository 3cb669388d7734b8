"""History that survives a database outage: a durable JSON-lines journal, replayed later.

When the database is down, an operation's deployment and audit rows are appended here (one line
per operation, both records in it) and written to the database later through the store's
idempotent `record_deployment` / `record_audit`. The file lives beside the file registry; the
caller names it.

Every read and write of the file happens under an exclusive `flock` on a lock file beside it
(`<name>.lock`, never replaced, so that every process locks the same inode). Appends use
O_APPEND and are fsync'd before they return. Replay writes to the database without the lock and
then, under the lock, re-reads the file and rewrites it (temporary file, fsync, rename) without
the lines it replayed: a line another process appended meanwhile stays. A crash between the
database write and the rewrite only replays the line again, which the unique indexes absorb.

A line that does not parse is reported and kept, except a torn last line (no newline: a process
died mid-append), which is skipped and dropped when replay rewrites the file.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from codeb_tui.domain.durable import atomic_write, fsync_dir, write_all
from codeb_tui.store.base import AuditRecord, DeploymentRecord, Store, StoreError

JOURNAL_FORMAT = 1


@dataclass(frozen=True)
class JournalEntry:
    operation_id: str
    deployment: DeploymentRecord | None
    audit: AuditRecord | None


@dataclass(frozen=True)
class ReplayResult:
    replayed: int  # entries written to the database and removed from the journal
    remaining: int  # entries still pending (including any appended during the replay)
    error: str | None = None  # why the replay stopped early (the database, the file)
    problems: tuple[str, ...] = ()  # lines that could not be read, one message each


@dataclass(frozen=True)
class _Line:
    text: bytes  # as in the file, without the newline
    number: int  # 1-based, for messages
    entry: JournalEntry | None  # None: unparsable
    problem: str | None  # why it is unparsable
    torn: bool  # the last line, unterminated and unparsable: a writer died mid-append


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    def __repr__(self) -> str:
        return f"<Journal {self.path}>"

    # --- writing ----------------------------------------------------------------------------

    def append(self, deployment: DeploymentRecord | None, audit: AuditRecord | None) -> None:
        """Append one operation's rows, durably (fsync'd before this returns). Blocking: call
        it through asyncio.to_thread. Raises OSError when the file cannot be written."""
        line = encode_entry(deployment, audit)
        with self._locked():
            created = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                # A dead writer's unterminated fragment must not swallow this entry.
                if not created and _last_byte(fd) not in (b"", b"\n"):
                    line = b"\n" + line
                write_all(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                fsync_dir(self.path.parent)

    # --- reading ----------------------------------------------------------------------------

    def entries(self) -> list[JournalEntry]:
        """The pending entries, oldest first (unparsable lines left out)."""
        return [line.entry for line in self._read() if line.entry is not None]

    def count(self) -> int:
        return len(self.entries())

    def problems(self) -> list[str]:
        """One message per line that does not parse."""
        return [self._problem(line) for line in self._read() if line.entry is None]

    # --- replay -----------------------------------------------------------------------------

    async def replay(self, store: Store) -> ReplayResult:
        """Write every pending entry through `store`, oldest first, and remove the written ones
        from the file. Stops at the first StoreError (reported in `error`); what was not written
        stays pending."""
        try:
            lines = await asyncio.to_thread(self._read)
        except OSError as exc:
            return ReplayResult(0, 0, f"journal {self.path}: cannot read: {_reason(exc)}")
        problems = tuple(self._problem(line) for line in lines if line.entry is None)
        written: set[bytes] = set()
        replayed = 0
        error: str | None = None
        for line in lines:
            if line.entry is None:
                continue
            try:
                if line.entry.deployment is not None:
                    await store.record_deployment(line.entry.deployment)
                if line.entry.audit is not None:
                    await store.record_audit(line.entry.audit)
            except StoreError as exc:
                error = str(exc)
                break
            written.add(line.text)
            replayed += 1
        pending = sum(1 for line in lines if line.entry is not None) - replayed
        if not written:
            return ReplayResult(0, pending, error, problems)
        try:
            remaining = await asyncio.to_thread(self._remove, written)
        except OSError as exc:
            # The rows are in the database; they stay in the file and are replayed (as no-ops)
            # next time.
            return ReplayResult(0, pending + replayed,
                                f"journal {self.path}: cannot rewrite: {_reason(exc)}", problems)
        return ReplayResult(replayed, remaining, error, problems)

    # --- the file ---------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if not self.path.parent.is_dir():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.path.parent.parent)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held by others only for one append or rewrite
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self) -> list[_Line]:
        if not self.path.exists():
            return []
        with self._locked():
            return _parse(self._contents())

    def _contents(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return b""

    def _remove(self, written: set[bytes]) -> int:
        """Rewrite the file without the lines in `written` (and without a torn last line);
        return how many entries remain. The file is re-read under the lock, so that lines
        appended since the replay read it are kept."""
        with self._locked():
            lines = _parse(self._contents())
            kept = [line for line in lines if line.text not in written and not line.torn]
            if len(kept) < len(lines):
                atomic_write(self.path, b"".join(line.text + b"\n" for line in kept))
            return sum(1 for line in kept if line.entry is not None)

    def _problem(self, line: _Line) -> str:
        if line.torn:
            return (f"{self.path}:{line.number}: torn last line (a codeb process stopped while "
                    "writing it), skipped")
        return f"{self.path}:{line.number}: unparsable ({line.problem}), kept"


# --- the line format ----------------------------------------------------------------------------

# The JSON types each record field may hold in a line, from the records' type hints.
_JSON_TYPES: dict[Any, tuple[type, ...]] = {
    str: (str,), float: (int, float), dict: (dict,), datetime: (str,), type(None): (type(None),),
}


def _json_types(hint: Any) -> tuple[type, ...]:
    parts = get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return tuple(t for part in parts for t in _JSON_TYPES[get_origin(part) or part])


_FIELD_TYPES = {cls: {name: _json_types(hint) for name, hint in get_type_hints(cls).items()}
                for cls in (DeploymentRecord, AuditRecord)}
_TIME_FIELDS = {cls: {name for name, hint in get_type_hints(cls).items()
                      if datetime in (hint, *get_args(hint))}
                for cls in (DeploymentRecord, AuditRecord)}


def _record_to_json(record: DeploymentRecord | AuditRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    data = {}
    for f in fields(record):
        value = getattr(record, f.name)
        data[f.name] = value.isoformat() if isinstance(value, datetime) else value
    return data


def _record_from_json(cls: type, data: Any) -> Any:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__} is not an object")
    expected = _FIELD_TYPES[cls]
    if set(data) - set(expected):
        raise ValueError(f"{cls.__name__} has unknown fields {sorted(set(data) - set(expected))}")
    values: dict[str, Any] = {}
    for name, value in data.items():
        if not isinstance(value, expected[name]) or isinstance(value, bool):
            raise ValueError(f"{cls.__name__}.{name}: unexpected {type(value).__name__}")
        values[name] = datetime.fromisoformat(value) if name in _TIME_FIELDS[cls] else value
    try:
        return cls(**values)
    except TypeError as exc:  # a required field is missing
        raise ValueError(f"{cls.__name__}: {exc}") from None


def encode_entry(deployment: DeploymentRecord | None, audit: AuditRecord | None) -> bytes:
    """One journal line (ASCII, newline-terminated) holding an operation's rows."""
    ids = {record.operation_id for record in (deployment, audit) if record is not None}
    if len(ids) != 1:
        raise ValueError("a journal entry holds one operation's deployment and/or audit row, "
                         f"got operation ids {sorted(ids)}")
    entry = {"format": JOURNAL_FORMAT, "operation_id": ids.pop(),
             "deployment": _record_to_json(deployment), "audit": _record_to_json(audit)}
    # ASCII only: every control character, newlines included, is escaped, so a line is a line.
    return (json.dumps(entry, default=str, sort_keys=True, separators=(",", ":")) + "\n").encode()


def decode_entry(text: bytes) -> JournalEntry:
    """The entry of one line (without its newline); ValueError when it is not one."""
    data = json.loads(text)  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
    if not isinstance(data, dict) or data.get("format") != JOURNAL_FORMAT:
        raise ValueError(f"not a format {JOURNAL_FORMAT} journal entry")
    deployment = _record_from_json(DeploymentRecord, data.get("deployment"))
    audit = _record_from_json(AuditRecord, data.get("audit"))
    operation_id = data.get("operation_id")
    if deployment is None and audit is None:
        raise ValueError("no record")
    if any(r is not None and r.operation_id != operation_id for r in (deployment, audit)):
        raise ValueError("the records' operation ids differ from the entry's")
    return JournalEntry(operation_id, deployment, audit)


def _parse(data: bytes) -> list[_Line]:
    chunks = data.split(b"\n")
    unterminated = chunks.pop()  # b"" when the file ends with a newline
    lines = []
    for number, text in enumerate(chunks + [unterminated], start=1):
        if not text.strip():
            continue
        try:
            entry, problem = decode_entry(text), None
        except ValueError as exc:
            entry, problem = None, " ".join(str(exc).split())[:200]
        torn = entry is None and number == len(chunks) + 1
        lines.append(_Line(text, number, entry, problem, torn))
    return lines


# --- file helpers -------------------------------------------------------------------------------


def _last_byte(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, 1, size - 1) if size else b""


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
