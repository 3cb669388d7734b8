"""The history journal: appended while the database is down, replayed into the real SQLite and
PostgreSQL (the `make_store` / `store` fixtures of conftest.py, both backends)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from codeb_tui.store import open_store
from codeb_tui.store.base import AuditRecord, DeploymentRecord, StoreError
from codeb_tui.store.journal import Journal, JournalEntry, encode_entry
from conftest import STORE_BACKENDS

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)

both = pytest.mark.parametrize("make_store", STORE_BACKENDS, indirect=True)


def deployment(op_id: str, started: datetime = T0, **kw) -> DeploymentRecord:
    base = dict(operation="deploy", project="shop", environment="production", slot="blue",
                image="127.0.0.1:5000/shop:1", result="succeeded", started_at=started,
                finished_at=started + timedelta(seconds=3, microseconds=7), actor="alice")
    base.update(kw)
    return DeploymentRecord(operation_id=op_id, **base)


def audit(op_id: str, created: datetime = T0, **kw) -> AuditRecord:
    base = dict(actor="alice", action="deploy", project="shop", environment="production",
                from_state="empty", to_state="deployed", result="succeeded", duration_ms=1234.5,
                detail={"slot": "blue", "image": "127.0.0.1:5000/shop:1", "error": None})
    base.update(kw)
    return AuditRecord(operation_id=op_id, created_at=created, **base)


def operation(n: int) -> tuple[DeploymentRecord, AuditRecord]:
    op_id = f"{n:032x}"
    at = T0 + timedelta(minutes=n)
    return deployment(op_id, started=at), audit(op_id, created=at + timedelta(seconds=3))


@pytest.fixture
def journal(tmp_path) -> Journal:
    return Journal(tmp_path / "registry" / "journal" / "history.jsonl")


def assert_same_fields(got, expected) -> None:
    for f in fields(expected):
        assert getattr(got, f.name) == getattr(expected, f.name), f.name
    for name in ("started_at", "finished_at", "created_at"):
        if hasattr(expected, name):
            assert getattr(got, name).utcoffset() == timedelta(0)


# --- the file alone ------------------------------------------------------------------------------


def test_append_round_trips_every_field(journal):
    dep = deployment("a" * 32, slot=None, image=None, result="failed",
                     error="pull failed: manifest unknown\nsecond line", actor="")
    aud = audit("a" * 32, team="core", from_state=None, to_state=None, result="failed",
                detail={"attempts": 2, "nested": {"ok": True, "list": [1, "x"]}, "none": None},
                log="12:00:00 deploy shop\n\t\u00e9t\u00e9 \U0001F680 a\x00b \udcff end\n")
    only_audit = audit("b" * 32, action="reconcile.repair", project=None, environment=None)
    journal.append(dep, aud)
    journal.append(None, only_audit)
    assert journal.path.is_file() and journal.lock_path.is_file()
    assert journal.count() == 2
    first, second = journal.entries()
    assert first == JournalEntry("a" * 32, dep, aud)
    assert second == JournalEntry("b" * 32, None, only_audit)
    assert_same_fields(first.deployment, dep)
    assert_same_fields(first.audit, aud)
    assert first.audit.created_at.tzinfo is UTC
    assert journal.problems() == []
    # One ASCII line per entry, whatever the text holds.
    lines = journal.path.read_bytes().split(b"\n")
    assert len(lines) == 3 and lines[2] == b"" and all(line.isascii() for line in lines)


def test_an_entry_is_one_operation(journal):
    with pytest.raises(ValueError):
        journal.append(None, None)
    with pytest.raises(ValueError):
        journal.append(deployment("op1"), audit("op2"))
    assert not journal.path.exists()


def test_empty_or_missing_journal(journal):
    assert journal.entries() == [] and journal.count() == 0 and journal.problems() == []
    assert not journal.path.parent.exists()  # reading creates nothing


_APPEND_SCRIPT = """
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from codeb_tui.store.base import AuditRecord, DeploymentRecord
from codeb_tui.store.journal import Journal

journal, worker, count = Journal(Path(sys.argv[1])), sys.argv[2], int(sys.argv[3])
for i in range(count):
    op_id, at = f"{worker}-{i:03d}", datetime(2025, 3, 1, tzinfo=UTC) + timedelta(seconds=i)
    journal.append(
        DeploymentRecord(op_id, "deploy", "shop", "production", "blue", "img:1", "succeeded",
                         at, at + timedelta(seconds=1), actor=worker),
        AuditRecord(op_id, worker, "deploy", "shop", "production", "empty", "deployed",
                    "succeeded", 12.5, at, detail={"i": i}, log=worker * 20000))
"""


def append_from_processes(path: Path, workers: int, each: int) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", _APPEND_SCRIPT, str(path), f"w{w}",
                               str(each)], stderr=subprocess.PIPE, text=True, cwd=REPO)
             for w in range(workers)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * workers, errors


@both
async def test_appends_from_several_processes_at_once(journal, store):
    # Long lines (the log is 40 kB), so that unlocked appends would interleave.
    append_from_processes(journal.path, workers=4, each=25)
    assert journal.problems() == []
    entries = journal.entries()
    assert len(entries) == 100
    for w in range(4):
        mine = [e.operation_id for e in entries if e.operation_id.startswith(f"w{w}-")]
        assert mine == [f"w{w}-{i:03d}" for i in range(25)]  # each process's order kept
    assert all(e.audit.log == e.audit.actor * 20000 for e in entries)
    result = await journal.replay(store)
    assert (result.replayed, result.remaining, result.error) == (100, 0, None)
    assert len(await store.list_deployments(limit=1000)) == 100
    assert len(await store.list_audit(limit=1000)) == 100


class Intercepted:
    """The real store, with `before()` run before each of its calls (to fail, to act
    meanwhile)."""

    def __init__(self, store, before) -> None:
        self.store, self.before = store, before

    def __getattr__(self, name):
        method = getattr(self.store, name)

        async def call(*args):
            self.before()
            return await method(*args)

        return call


# --- replay --------------------------------------------------------------------------------------


@both
async def test_replay_round_trips_every_field(journal, store):
    originals = [operation(n) for n in range(3)]
    failed = (deployment("f" * 32, slot=None, image=None, result="refused",
                         error="blue slot is locked", actor=""),
              audit("f" * 32, team="ops", result="refused", from_state=None, to_state=None,
                    detail={"slot": None, "nested": {"n": [1, 2.5, "x"]}},
                    log="line one\nline two \u00e9\U0001F680\n"))
    repair = audit("e" * 32, action="reconcile.repair", project=None, environment=None,
                   from_state=None, to_state=None, created=T0 + timedelta(hours=1))
    for dep, aud in [*originals, failed]:
        await asyncio.to_thread(journal.append, dep, aud)  # as the engine calls it
    journal.append(None, repair)

    result = await journal.replay(store)
    assert (result.replayed, result.remaining, result.error, result.problems) == (5, 0, None, ())
    assert journal.count() == 0

    deployments = {r.operation_id: r for r in await store.list_deployments()}
    audits = {r.operation_id: r for r in await store.list_audit()}
    assert len(deployments) == 4 and len(audits) == 5
    for dep, aud in [*originals, failed]:
        assert_same_fields(deployments[dep.operation_id], dep)
        assert_same_fields(audits[aud.operation_id], aud)
    assert_same_fields(audits[repair.operation_id], repair)


@both
async def test_replay_twice_writes_each_row_once(journal, store):
    for n in range(5):
        journal.append(*operation(n))
    saved = journal.path.read_bytes()
    first = await journal.replay(store)
    assert (first.replayed, first.remaining) == (5, 0)
    again = await journal.replay(store)
    assert (again.replayed, again.remaining, again.error) == (0, 0, None)
    # A crash between the database writes and the file's rewrite: the lines come back.
    journal.path.write_bytes(saved)
    third = await journal.replay(store)
    assert (third.replayed, third.remaining, third.error) == (5, 0, None)
    assert sorted(r.operation_id for r in await store.list_deployments()) == [
        operation(n)[0].operation_id for n in range(5)]
    assert len(await store.list_audit()) == 5


@both
async def test_a_store_error_midway_keeps_the_rest(journal, store):
    for n in range(5):
        journal.append(*operation(n))

    left = [5]

    def database_goes_away():
        if left[0] == 0:
            raise StoreError("PostgreSQL at 127.0.0.1:5432 unreachable: gone")
        left[0] -= 1

    # Five writes: two whole entries, and the third's deployment row only.
    result = await journal.replay(Intercepted(store, database_goes_away))
    assert (result.replayed, result.remaining) == (2, 3)
    assert result.error == "PostgreSQL at 127.0.0.1:5432 unreachable: gone"
    assert [e.operation_id for e in journal.entries()] == [
        operation(n)[0].operation_id for n in range(2, 5)]
    rest = await journal.replay(store)
    assert (rest.replayed, rest.remaining, rest.error) == (3, 0, None)
    assert len(await store.list_deployments()) == 5
    assert len(await store.list_audit()) == 5


@both
async def test_an_entry_appended_during_the_replay_is_kept(journal, store):
    for n in range(3):
        journal.append(*operation(n))

    appended = []

    def another_process_appends():
        if not appended:
            appended.append(True)
            append_from_processes(journal.path, workers=1, each=1)

    result = await journal.replay(Intercepted(store, another_process_appends))
    assert (result.replayed, result.remaining, result.error) == (3, 1, None)
    assert [e.operation_id for e in journal.entries()] == ["w0-000"]
    assert (await journal.replay(store)).replayed == 1
    assert len(await store.list_audit()) == 4


@both
async def test_a_torn_last_line_is_skipped_and_reported(journal, store):
    for n in range(3):
        journal.append(*operation(n))
    torn = encode_entry(*operation(3))
    with open(journal.path, "ab") as handle:  # a process killed mid-append
        handle.write(torn[: len(torn) // 2])
    assert journal.count() == 3
    (problem,) = journal.problems()
    assert problem == f"{journal.path}:4: torn last line (a codeb process stopped while writing it), skipped"

    result = await journal.replay(store)
    assert (result.replayed, result.remaining, result.error) == (3, 0, None)
    assert result.problems == (problem,)
    assert len(await store.list_deployments()) == 3
    assert journal.path.read_bytes() == b""  # the fragment could never be replayed


@both
async def test_an_append_after_a_torn_line_is_intact(journal, store):
    journal.append(*operation(0))
    with open(journal.path, "ab") as handle:
        handle.write(b'{"audit":{"act')
    journal.append(*operation(1))
    assert [e.operation_id for e in journal.entries()] == [
        operation(n)[0].operation_id for n in range(2)]
    # The fragment is now a line in the middle: unparsable, reported, kept.
    (problem,) = journal.problems()
    assert problem.startswith(f"{journal.path}:2: unparsable (") and problem.endswith(", kept")
    result = await journal.replay(store)
    assert (result.replayed, result.remaining, result.problems) == (2, 0, (problem,))
    assert journal.path.read_bytes() == b'{"audit":{"act\n'


@both
async def test_unparsable_lines_are_kept_and_reported(journal, store):
    journal.append(*operation(0))
    with open(journal.path, "ab") as handle:
        handle.write(b"not json\n")
        handle.write(b'{"format": 99, "operation_id": "x"}\n')  # a newer codeb's line
        handle.write(encode_entry(*operation(1)).replace(b'"duration_ms":1234.5',
                                                         b'"duration_ms":"slow"'))
    journal.append(*operation(2))
    problems = journal.problems()
    assert [p.split(": ", 1)[0] for p in problems] == [
        f"{journal.path}:{n}" for n in (2, 3, 4)]
    assert "AuditRecord.duration_ms: unexpected str" in problems[2]
    result = await journal.replay(store)
    assert (result.replayed, result.remaining, result.problems) == (2, 0, tuple(problems))
    assert journal.count() == 0
    kept = journal.problems()  # the same lines, now first in the file
    assert [p.split(": ", 1)[0] for p in kept] == [f"{journal.path}:{n}" for n in (1, 2, 3)]
    assert [p.split(": ", 1)[1] for p in kept] == [p.split(": ", 1)[1] for p in problems]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_replay_into_a_store_that_is_down_keeps_every_entry(journal, tmp_path, backend):
    for n in range(3):
        journal.append(*operation(n))
    saved = journal.path.read_bytes()
    if backend == "postgresql":
        store = open_store("postgresql://postgres@127.0.0.1:1/test", tmp_path / "unused", 1.0)
        where = "PostgreSQL at 127.0.0.1:1"
    else:
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        store = open_store(None, blocker / "codeb.sqlite3", 1.0)
        where = f"SQLite at {blocker / 'codeb.sqlite3'}"
    with pytest.raises(StoreError):
        await store.connect()
    result = await journal.replay(store)
    assert (result.replayed, result.remaining) == (0, 3)
    assert result.error.startswith(where) and "\n" not in result.error
    assert journal.path.read_bytes() == saved
    await store.close()
