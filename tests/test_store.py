"""The secondary store against real databases: a SQLite file and the local PostgreSQL.

Every test runs on both backends. PostgreSQL tests use a fresh schema (codeb_test_<random>)
dropped afterwards; they FAIL when PostgreSQL is unreachable unless CODEB_SKIP_PG=1.
The server comes from CODEB_TEST_PG_DSN (default postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest

from codeb_tui.store import load_migrations, open_store
from codeb_tui.store.base import AuditRecord, DeploymentRecord, SlotRow, StoreError
from codeb_tui.store.postgres import PostgresStore
from codeb_tui.store.sqlite import SqliteStore
from conftest import STORE_BACKENDS, STORE_PG_DSN

# The backends' fixtures (pg_schema, make_store, store) live in conftest.py, shared with
# test_access.py.
PG_DSN, BACKENDS = STORE_PG_DSN, STORE_BACKENDS

EXPECTED_TABLES = {"schema_migrations", "teams", "api_keys", "projects", "project_slots",
                   "deployments", "audit_logs"}
EXPECTED_INDEXES = {"audit_logs_project_created_at_idx", "audit_logs_action_created_at_idx",
                    "deployments_project_started_at_idx", "audit_logs_operation_id_action_key"}
LATEST = len(load_migrations("sqlite"))

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


both = pytest.mark.parametrize("make_store", BACKENDS, indirect=True)


def slot(project="shop", environment="production", slot="blue", **kw) -> SlotRow:
    base = dict(state="empty", port=4100 if slot == "blue" else 4101)
    base.update(kw)
    return SlotRow(project=project, environment=environment, slot=slot, **base)


def deployment(op_id: str, project="shop", started=T0, **kw) -> DeploymentRecord:
    base = dict(operation="deploy", environment="production", slot="blue",
                image="127.0.0.1:5000/shop:1", result="succeeded", started_at=started,
                finished_at=started + timedelta(seconds=3), actor="alice")
    base.update(kw)
    return DeploymentRecord(operation_id=op_id, project=project, **base)


def audit(op_id: str, project="shop", action="deploy", created=T0, **kw) -> AuditRecord:
    base = dict(actor="alice", environment="production", from_state="empty",
                to_state="deployed", result="succeeded", duration_ms=1234.5)
    base.update(kw)
    return AuditRecord(operation_id=op_id, action=action, project=project, created_at=created,
                       **base)


async def two_stores(make_store):
    """Two connected stores on one migrated database, as two codeb processes."""
    a, b = make_store(), make_store()
    await a.connect()
    await b.connect()
    await a.migrate()
    return a, b


# --- migrations ---------------------------------------------------------------------------------


def test_migration_files_match_across_dialects():
    pg = load_migrations("postgresql")
    lite = load_migrations("sqlite")
    assert [m.version for m in pg] == [m.version for m in lite] == list(range(1, len(pg) + 1))
    assert [m.name for m in pg] == [m.name for m in lite]
    assert len(pg) >= 2


@both
async def test_migrate_is_idempotent(make_store):
    s = make_store()
    await s.connect()
    assert await s.schema_version() == 0
    assert await s.migrate() == list(range(1, LATEST + 1))
    assert await s.schema_version() == LATEST
    assert await s.migrate() == []
    assert await s.schema_version() == LATEST
    # A second process (another connection) finds nothing to do either.
    other = make_store()
    await other.connect()
    assert await other.migrate() == []
    assert await other.schema_version() == LATEST


@both
async def test_concurrent_migrate_applies_each_version_once(make_store):
    stores = [make_store() for _ in range(3)]
    await asyncio.gather(*(s.connect() for s in stores))
    results = await asyncio.gather(*(s.migrate() for s in stores))
    assert sorted(v for applied in results for v in applied) == list(range(1, LATEST + 1))
    assert [await s.schema_version() for s in stores] == [LATEST] * 3


_MIGRATE_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from codeb_tui.store import open_store

async def main():
    dsn, path, schema = sys.argv[1] or None, Path(sys.argv[2]), sys.argv[3]
    store = open_store(dsn, path, 5.0, schema=schema)
    await store.connect()
    try:
        print(json.dumps(await store.migrate()))
    finally:
        await store.close()

asyncio.run(main())
"""


@both
async def test_migrate_from_several_processes(make_store, tmp_path):
    store = make_store()  # for the fixture's clean-up and to read the result
    schema = getattr(store, "schema", "public")
    dsn = PG_DSN if store.kind == "postgresql" else ""
    path = tmp_path / "nested" / "dir" / "codeb.sqlite3"
    procs = [subprocess.Popen([sys.executable, "-c", _MIGRATE_SCRIPT, dsn, str(path), schema],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
             for _ in range(4)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outputs]
    applied = [v for out, _ in outputs for v in json.loads(out)]
    assert sorted(applied) == list(range(1, LATEST + 1))
    await store.connect()
    assert await store.schema_version() == LATEST


@pytest.mark.parametrize("make_store", ["postgresql"], indirect=True)
async def test_postgres_schema_tables_and_indexes(make_store, pg_schema):
    s = make_store()
    await s.connect()
    await s.migrate()
    conn = await asyncpg.connect(PG_DSN)
    try:
        tables = {r[0] for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
            pg_schema)}
        indexes = {r[0] for r in await conn.fetch(
            "SELECT indexname FROM pg_indexes WHERE schemaname = $1", pg_schema)}
        types = {r[0]: r[1] for r in await conn.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name = 'project_slots'", pg_schema)}
        applied = await conn.fetch(f'SELECT version, applied_at FROM "{pg_schema}".schema_migrations')
    finally:
        await conn.close()
    assert tables == EXPECTED_TABLES
    assert EXPECTED_INDEXES <= indexes
    assert types["deployed_at"] == "timestamp with time zone"
    assert sorted(r[0] for r in applied) == list(range(1, LATEST + 1))
    assert all(r[1].tzinfo is not None for r in applied)


@pytest.mark.parametrize("make_store", ["sqlite"], indirect=True)
async def test_sqlite_file_wal_and_schema(make_store, tmp_path):
    s = make_store()
    await s.connect()
    await s.migrate()
    path = tmp_path / "nested" / "dir" / "codeb.sqlite3"
    assert path.is_file()  # parent directories created
    assert s.description == f"sqlite {path}"
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        applied_at = db.execute("SELECT applied_at FROM schema_migrations").fetchone()[0]
    finally:
        db.close()
    assert EXPECTED_TABLES | EXPECTED_INDEXES <= names
    assert applied_at.endswith("Z") and datetime.fromisoformat(applied_at).tzinfo is not None
    busy = await s._db.execute_fetchall("PRAGMA busy_timeout")  # noqa: SLF001
    assert list(busy)[0][0] == 5000


# --- slots ---------------------------------------------------------------------------------------


@both
async def test_upsert_then_list_roundtrip(store):
    berlin = timezone(timedelta(hours=1))
    rows = [
        slot(state="active", image="127.0.0.1:5000/shop:2", container_id="c" * 64,
             deployed_at=T0, promoted_at=datetime(2025, 3, 1, 14, 0, tzinfo=berlin), version=3),
        slot(slot="green", state="grace", image="127.0.0.1:5000/shop:1", container_id="d" * 64,
             deployed_at=T0 - timedelta(days=1), promoted_at=T0 - timedelta(hours=20),
             grace_expires_at=T0 + timedelta(hours=48), version=3),
        slot(project="blog", environment="staging", port=4500),  # all optional fields None
    ]
    await store.upsert_project_slots(rows)
    listed = await store.list_slots()
    assert [(r.project, r.environment, r.slot) for r in listed] == [
        ("blog", "staging", "blue"), ("shop", "production", "blue"),
        ("shop", "production", "green")]
    by_key = {(r.project, r.environment, r.slot): r for r in listed}
    for expected in rows:
        got = by_key[(expected.project, expected.environment, expected.slot)]
        assert got == expected  # field by field, datetimes compare as instants
        for name in ("deployed_at", "promoted_at", "grace_expires_at"):
            value = getattr(got, name)
            if getattr(expected, name) is None:
                assert value is None
            else:
                assert value.tzinfo is not None and value.utcoffset() == timedelta(0)
    blue = by_key[("shop", "production", "blue")]
    assert blue.promoted_at == datetime(2025, 3, 1, 13, 0, tzinfo=UTC)
    assert blue.deployed_at.microsecond == 123456
    blog = by_key[("blog", "staging", "blue")]
    assert (blog.image, blog.container_id, blog.deployed_at, blog.promoted_at,
            blog.grace_expires_at, blog.version) == (None, None, None, None, None, 0)


@both
async def test_upsert_updates_existing_rows(store):
    await store.upsert_project_slots([slot(), slot(slot="green")])
    first = {r.slot: r for r in await store.list_slots()}
    assert first["blue"].state == "empty"

    deployed = slot(state="deployed", image="127.0.0.1:5000/shop:1", container_id="abc",
                    deployed_at=T0, version=1)
    await store.upsert_project_slots([deployed])
    after = {r.slot: r for r in await store.list_slots()}
    assert after["blue"] == deployed
    assert after["green"] == first["green"]  # untouched

    # Back to empty: the optional fields are cleared again, not kept.
    cleared = slot(state="empty", version=2)
    await store.upsert_project_slots([cleared])
    after = {r.slot: r for r in await store.list_slots()}
    assert after["blue"] == cleared
    assert len(await store.list_slots()) == 2  # no duplicate rows


@both
async def test_naive_datetimes_are_taken_as_utc(store):
    await store.upsert_project_slots([slot(deployed_at=datetime(2025, 1, 2, 3, 4, 5))])
    (row,) = await store.list_slots()
    assert row.deployed_at == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@both
async def test_upsert_empty_list_is_a_no_op(store):
    await store.upsert_project_slots([])
    assert await store.list_slots() == []


# --- deployments and audit -----------------------------------------------------------------------


@both
async def test_deployments_newest_first_with_filter(store):
    records = [
        deployment("op1", started=T0),
        deployment("op2", project="blog", started=T0 + timedelta(minutes=1)),
        deployment("op3", started=T0 + timedelta(minutes=2), operation="promote", slot=None,
                   image=None, result="failed", error="Grace slot unhealthy", actor=""),
    ]
    for record in records:
        await store.record_deployment(record)
    listed = await store.list_deployments()
    assert [r.operation_id for r in listed] == ["op3", "op2", "op1"]
    assert listed[0] == records[2]
    assert listed[2] == records[0]
    assert listed[0].started_at.tzinfo is not None
    assert [r.operation_id for r in await store.list_deployments(project="shop")] == ["op3", "op1"]
    assert [r.operation_id for r in await store.list_deployments(limit=1)] == ["op3"]
    assert await store.list_deployments(project="nope") == []


@both
async def test_record_deployment_twice_keeps_the_first_row(store):
    first = deployment("op1", result="failed", error="boom")
    await store.record_deployment(first)
    await store.record_deployment(first)
    await store.record_deployment(deployment("op1", result="succeeded"))
    assert await store.list_deployments() == [first]


@both
async def test_record_audit_twice_keeps_the_first_row(store):
    first = audit("op1", log="first")
    await store.record_audit(first)
    await store.record_audit(first)
    await store.record_audit(audit("op1", log="second", result="failed"))
    # Another action under the same operation id is another row.
    other = audit("op1", action="reconcile.repair", created=T0 + timedelta(seconds=1))
    await store.record_audit(other)
    assert await store.list_audit() == [other, first]


@both
async def test_concurrent_history_writes_leave_one_row(make_store):
    """Two processes writing the same operation at once (an engine and a journal replay)."""
    a, b = await two_stores(make_store)
    records = [deployment(f"op{i}") for i in range(10)]
    audits = [audit(f"op{i}") for i in range(10)]
    await asyncio.gather(*(s.record_deployment(r) for r in records for s in (a, b)),
                         *(s.record_audit(r) for r in audits for s in (a, b)))
    assert sorted(r.operation_id for r in await a.list_deployments()) == sorted(
        r.operation_id for r in records)
    assert len(await b.list_audit()) == 10


async def _sqlite_with_duplicate_audit_rows(path: Path) -> None:
    """A database at migration 003 where one operation's audit row was written twice."""
    db = sqlite3.connect(path)
    try:
        db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                   "applied_at TEXT NOT NULL)")
        for migration in load_migrations("sqlite")[:3]:
            db.executescript(migration.sql)
            db.execute("INSERT INTO schema_migrations VALUES (?, '2025-01-01T00:00:00.000000Z')",
                       (migration.version,))
        for log in ("first", "second"):
            db.execute("INSERT INTO audit_logs (operation_id, actor, action, result, duration_ms, "
                       "log, created_at) VALUES ('op1', 'alice', 'deploy', 'succeeded', 1, ?, "
                       "'2025-01-01T00:00:00.000000Z')", (log,))
        db.commit()
    finally:
        db.close()


async def test_migration_004_keeps_the_first_of_duplicate_audit_rows(tmp_path):
    path = tmp_path / "old.sqlite3"
    await _sqlite_with_duplicate_audit_rows(path)
    async with open_store(None, path, 3.0) as s:
        assert await s.migrate() == list(range(4, LATEST + 1))
        (row,) = await s.list_audit()
        assert row.log == "first"


@both
async def test_audit_newest_first_with_filters(store):
    records = [
        audit("a1", created=T0, detail={"image": "x:1", "attempts": 2, "nested": {"ok": True}},
              log="step 1\nstep 2\n", team="core"),
        audit("a2", action="promote", created=T0 + timedelta(seconds=1), from_state="deployed",
              to_state="active"),
        audit("a3", project="blog", created=T0 + timedelta(seconds=2), result="refused"),
        audit("a4", project=None, environment=None, action="cleanup", from_state=None,
              to_state=None, created=T0 + timedelta(seconds=3), result="denied"),
    ]
    for record in records:
        await store.record_audit(record)
    listed = await store.list_audit()
    assert [r.operation_id for r in listed] == ["a4", "a3", "a2", "a1"]
    assert listed[3] == records[0]  # detail dict, log, team and timestamps round-trip
    assert listed[0] == records[3]
    assert [r.operation_id for r in await store.list_audit(project="shop")] == ["a2", "a1"]
    assert [r.operation_id for r in await store.list_audit(action="deploy")] == ["a3", "a1"]
    assert [r.operation_id for r in await store.list_audit(project="shop", action="deploy")] == ["a1"]
    assert [r.operation_id for r in await store.list_audit(limit=2)] == ["a4", "a3"]


@both
async def test_audit_filters_by_team_and_time_range(store):
    records = [
        audit("t1", created=T0, team="ops"),
        audit("t2", action="promote", created=T0 + timedelta(hours=1), team="web"),
        audit("t3", created=T0 + timedelta(hours=2), team="ops"),
        audit("t4", created=T0 + timedelta(hours=3)),  # no team (local operator)
    ]
    for record in records:
        await store.record_audit(record)

    async def ids(**filters) -> list[str]:
        return [r.operation_id for r in await store.list_audit(**filters)]

    assert await ids(team="ops") == ["t3", "t1"]
    assert await ids(team="nobody") == []
    assert await ids(since=T0 + timedelta(hours=1)) == ["t4", "t3", "t2"]  # since is inclusive
    assert await ids(until=T0 + timedelta(hours=2)) == ["t2", "t1"]  # until is exclusive
    assert await ids(since=T0 + timedelta(minutes=30), until=T0 + timedelta(hours=2, seconds=1)) == ["t3", "t2"]
    # naive datetimes are UTC; an aware one in another zone means the same instant
    assert await ids(since=(T0 + timedelta(hours=2)).replace(tzinfo=None)) == ["t4", "t3"]
    plus2 = timezone(timedelta(hours=2))
    assert await ids(until=(T0 + timedelta(hours=1)).astimezone(plus2)) == ["t1"]
    # combined with the older filters
    assert await ids(team="ops", action="deploy", since=T0 + timedelta(minutes=1)) == ["t3"]
    assert await ids(team="web", project="shop", action="promote") == ["t2"]
    assert await ids(team="ops", limit=1) == ["t3"]


@both
async def test_audit_awkward_text_is_stored(store):
    record = audit("odd", detail={"when": T0, "path": Path("/tmp/x")}, log="a\x00b \udcff end")
    await store.record_audit(record)
    (row,) = await store.list_audit()
    assert row.detail == {"when": str(T0), "path": "/tmp/x"}
    assert row.log.startswith("a") and row.log.endswith(" end")


# --- failures ------------------------------------------------------------------------------------


async def test_unreachable_postgres_raises_store_error_quickly():
    s = open_store("postgresql://postgres:secret@127.0.0.1:5999/test", Path("/unused"), 2.0)
    assert isinstance(s, PostgresStore)
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        await s.connect()
    assert time.monotonic() - started < 2.5
    message = str(info.value)
    assert message == "PostgreSQL at 127.0.0.1:5999 unreachable: Connection refused"
    assert "secret" not in message and "\n" not in message
    await s.close()


async def test_silent_postgres_times_out_within_connect_timeout():
    """A server that accepts TCP and never answers (a hung host) fails within the timeout."""
    held = []

    async def hold(reader, writer):
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        s = PostgresStore(f"postgresql://postgres@127.0.0.1:{port}/test", connect_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(StoreError, match=rf"^PostgreSQL at 127.0.0.1:{port} unreachable: "):
            await s.connect()
        assert time.monotonic() - started < 2.0
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_sqlite_unavailable_path_raises_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    s = open_store(None, blocker / "codeb.sqlite3", 1.0)
    assert isinstance(s, SqliteStore)
    with pytest.raises(StoreError, match=r"^SQLite at .* unavailable: "):
        await s.connect()


@both
async def test_methods_wrap_errors_in_store_error(make_store):
    s = make_store()
    with pytest.raises(StoreError, match="not connected"):
        await s.list_slots()
    await s.connect()
    # Not migrated yet: the tables are missing, the driver error comes back as a StoreError.
    with pytest.raises(StoreError, match="list_deployments failed") as info:
        await s.list_deployments()
    assert "\n" not in str(info.value)
    with pytest.raises(StoreError):
        await s.record_audit(audit("x"))
    await s.close()
    await s.close()  # idempotent
    with pytest.raises(StoreError):
        await s.record_deployment(deployment("y"))


@both
async def test_stores_share_data_across_connections(make_store):
    """Two stores on the same database (as two codeb processes) see each other's writes."""
    a, b = await two_stores(make_store)
    await asyncio.gather(
        a.upsert_project_slots([slot(project=f"p{i}") for i in range(10)]),
        b.upsert_project_slots([slot(project=f"p{i}", slot="green") for i in range(10)]),
        *(a.record_audit(audit(f"a{i}")) for i in range(10)),
        *(b.record_audit(audit(f"b{i}")) for i in range(10)),
    )
    assert len(await a.list_slots()) == 20
    assert len(await b.list_audit(limit=100)) == 20


def test_open_store_selects_backend(tmp_path):
    assert open_store(None, tmp_path / "x.db", 1.0).kind == "sqlite"
    assert open_store("", tmp_path / "x.db", 1.0).kind == "sqlite"
    pg = open_store("postgresql://u:pw@db.example:6543/codeb", tmp_path / "x.db", 1.0)
    assert pg.kind == "postgresql"
    assert pg.description == "postgresql db.example:6543/codeb"
    with pytest.raises(StoreError):
        open_store("mysql://x", tmp_path / "x.db", 1.0)
    with pytest.raises(StoreError):
        open_store(PG_DSN, tmp_path / "x.db", 1.0, schema="Bad; DROP")


@pytest.mark.parametrize("make_store", ["postgresql"], indirect=True)
async def test_postgres_lost_connection_is_a_store_error_then_recovers(make_store, pg_schema):
    s = make_store()
    await s.connect()
    await s.migrate()
    async with s._pool.acquire() as conn:  # noqa: SLF001 - the pool's only connection
        pid = conn.get_server_pid()
    admin = await asyncpg.connect(PG_DSN)
    try:
        # Hold a lock so that the store's query waits on the server, then kill its backend.
        tx = admin.transaction()
        await tx.start()
        await admin.execute(f'LOCK TABLE "{pg_schema}".project_slots IN ACCESS EXCLUSIVE MODE')
        query = asyncio.create_task(s.list_slots())
        for _ in range(100):
            waiting = await admin.fetchval(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid)
            if waiting:
                break
            await asyncio.sleep(0.02)
        assert waiting
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(StoreError, match=r"^PostgreSQL at 127.0.0.1:5432 unreachable: "):
            await asyncio.wait_for(query, 5)
        await tx.rollback()
    finally:
        await admin.close()
    assert await s.list_slots() == []  # the pool reconnects
