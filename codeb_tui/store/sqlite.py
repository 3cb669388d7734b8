"""The embedded store: one SQLite file through aiosqlite.

WAL mode and a 5 s busy timeout let several `codeb` processes (two operators, CI) share the file.
Within one process a single connection is used and every statement or transaction runs under an
asyncio lock. Writes run in explicit `BEGIN IMMEDIATE` transactions (the connection is in
autocommit mode otherwise). Timestamps are stored as fixed-width ISO-8601 UTC text
(`2025-01-31T12:00:00.000000Z`) so that text order is time order.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from codeb_tui.store import clean_text, load_migrations, one_line, utc
from codeb_tui.store.base import (
    ApiKeyRow,
    AuditRecord,
    DeploymentRecord,
    SlotRow,
    StoreError,
    StoreRefused,
    TeamRow,
)

_SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    applied_at  TEXT NOT NULL
)
"""

_UPSERT_PROJECT = """
INSERT INTO projects (name, created_at, updated_at) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET updated_at = excluded.updated_at
RETURNING id
"""

# A slot row is the file's word: an existing row takes every field of the new one.
_ON_SLOT_CONFLICT = """
ON CONFLICT (project_id, environment, slot) DO UPDATE SET
    state = excluded.state,
    port = excluded.port,
    image = excluded.image,
    container_id = excluded.container_id,
    deployed_at = excluded.deployed_at,
    promoted_at = excluded.promoted_at,
    grace_expires_at = excluded.grace_expires_at,
    version = excluded.version,
    updated_at = excluded.updated_at
"""

_UPSERT_SLOT = """
INSERT INTO project_slots (project_id, environment, slot, state, port, image, container_id,
                           deployed_at, promoted_at, grace_expires_at, version, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
""" + _ON_SLOT_CONFLICT

# Reconcile's batch: the project id looked up by name inside the statement, so that one
# executemany covers every row.
_SYNC_SLOT = """
INSERT INTO project_slots (project_id, environment, slot, state, port, image, container_id,
                           deployed_at, promoted_at, grace_expires_at, version, updated_at)
VALUES ((SELECT id FROM projects WHERE name = ?), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
""" + _ON_SLOT_CONFLICT
_DELETE_SLOT = """
DELETE FROM project_slots
WHERE project_id = (SELECT id FROM projects WHERE name = ?) AND environment = ? AND slot = ?
"""

_UPSERT_DEPLOYMENT = """
INSERT INTO deployments (operation_id, operation, project, environment, slot, image, result,
                         error, actor, started_at, finished_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (operation_id) DO UPDATE SET
    operation = excluded.operation,
    project = excluded.project,
    environment = excluded.environment,
    slot = excluded.slot,
    image = excluded.image,
    result = excluded.result,
    error = excluded.error,
    actor = excluded.actor,
    started_at = excluded.started_at,
    finished_at = excluded.finished_at
"""

_INSERT_AUDIT = """
INSERT INTO audit_logs (operation_id, actor, team, action, project, environment, from_state,
                        to_state, result, duration_ms, detail, log, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

_SELECT_SLOTS = """
SELECT p.name, s.environment, s.slot, s.state, s.port, s.image, s.container_id,
       s.deployed_at, s.promoted_at, s.grace_expires_at, s.version
FROM project_slots s JOIN projects p ON p.id = s.project_id
ORDER BY p.name, s.environment, s.slot
"""

_DEPLOYMENT_COLUMNS = ("operation_id, operation, project, environment, slot, image, result, "
                       "started_at, finished_at, error, actor")
_AUDIT_COLUMNS = ("operation_id, actor, action, project, environment, from_state, to_state, "
                  "result, duration_ms, created_at, team, detail, log")
_SELECT_API_KEYS = ("SELECT k.id, t.name, k.name, k.role, k.prefix, k.created_at, k.revoked_at "
                    "FROM api_keys k JOIN teams t ON t.id = k.team_id")


def to_text(value: datetime | None) -> str | None:
    if value is None:
        return None
    return utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_text(value: str | None) -> datetime | None:
    if value is None:
        return None
    return utc(datetime.fromisoformat(value))


def _split_statements(script: str) -> Iterable[str]:
    """The statements of a migration script (one per `;`-terminated chunk, comments kept)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    rest = "\n".join(ln for ln in buffer.splitlines() if not ln.strip().startswith("--")).strip()
    if rest:
        raise StoreError(f"migration script ends with an unterminated statement: {rest[:60]!r}")


def _detail_from_text(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"raw": text}
    return value if isinstance(value, dict) else {"value": value}


def _api_key(r: Any) -> ApiKeyRow:
    return ApiKeyRow(id=int(r[0]), team=r[1], name=r[2], role=r[3], prefix=r[4],
                     created_at=from_text(r[5]), revoked_at=from_text(r[6]))


class SqliteStore:
    kind = "sqlite"

    def __init__(self, path: Path, *, connect_timeout: float = 3.0,
                 busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path).expanduser()
        self.description = f"sqlite {self.path}"
        self.connect_timeout = connect_timeout
        self.busy_timeout_ms = busy_timeout_ms
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path}>"

    # --- lifecycle --------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._db is not None:
            return
        db: aiosqlite.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = await asyncio.wait_for(
                aiosqlite.connect(self.path, timeout=self.busy_timeout_ms / 1000,
                                  isolation_level=None),
                self.connect_timeout)
            await db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            await self._use_wal(db)
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute("PRAGMA foreign_keys = ON")
        except Exception as exc:
            if db is not None:
                try:
                    await db.close()
                except Exception:
                    pass
            raise StoreError(f"SQLite at {self.path} unavailable: {one_line(exc)}") from exc
        self._db = db

    async def _use_wal(self, db: aiosqlite.Connection) -> None:
        """WAL lets several codeb processes write. The mode is kept in the file, so only the
        first connection ever switches it; that switch can answer "database is locked" at once,
        without waiting on busy_timeout, while another process holds the new file: retry."""
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        while True:
            try:
                async with db.execute("PRAGMA journal_mode") as cursor:
                    (mode,) = await cursor.fetchone()
                if str(mode).lower() != "wal":
                    await db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            try:
                await db.close()
            except Exception as exc:
                raise StoreError(f"SQLite at {self.path}: close failed: {one_line(exc)}") from exc

    async def __aenter__(self) -> SqliteStore:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- plumbing ---------------------------------------------------------------------------

    @asynccontextmanager
    async def _session(self, what: str) -> AsyncIterator[aiosqlite.Connection]:
        """The connection, used alone; any driver error becomes a one-line StoreError."""
        async with self._lock:
            db = self._db
            if db is None:
                raise StoreError(f"SQLite at {self.path}: {what} failed: not connected")
            try:
                yield db
            except StoreError:
                raise
            except Exception as exc:
                raise StoreError(f"SQLite at {self.path}: {what} failed: {one_line(exc)}") from exc

    @asynccontextmanager
    async def _transaction(self, what: str) -> AsyncIterator[aiosqlite.Connection]:
        async with self._session(what) as db:
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                try:
                    await db.execute("ROLLBACK")
                except Exception:
                    pass
                raise
            await db.execute("COMMIT")

    # --- migrations -------------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        applied: list[int] = []
        async with self._session("migrate") as db:
            await db.execute(_SCHEMA_MIGRATIONS)
        for migration in load_migrations("sqlite"):
            async with self._transaction(f"migration {migration.version:03d}") as db:
                # Checked inside the write lock: another process may have just applied it.
                rows = await db.execute_fetchall(
                    "SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,))
                if rows:
                    continue
                for statement in _split_statements(migration.sql):
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (migration.version, to_text(datetime.now(UTC))))
                applied.append(migration.version)
        return applied

    async def schema_version(self) -> int:
        async with self._session("schema_version") as db:
            exists = await db.execute_fetchall(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'")
            if not exists:
                return 0
            rows = await db.execute_fetchall("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            return int(list(rows)[0][0])

    # --- writes -----------------------------------------------------------------------------

    async def upsert_project_slots(self, rows: list[SlotRow]) -> None:
        if not rows:
            return
        now = to_text(datetime.now(UTC))
        ordered = sorted(rows, key=lambda r: (r.project, r.environment, r.slot))
        async with self._transaction("upsert_project_slots") as db:
            project_ids: dict[str, int] = {}
            for row in ordered:
                if row.project not in project_ids:
                    result = await db.execute_fetchall(_UPSERT_PROJECT, (row.project, now, now))
                    project_ids[row.project] = int(list(result)[0][0])
                await db.execute(_UPSERT_SLOT, (
                    project_ids[row.project], row.environment, row.slot, row.state, int(row.port),
                    clean_text(row.image), clean_text(row.container_id), to_text(row.deployed_at),
                    to_text(row.promoted_at), to_text(row.grace_expires_at), int(row.version), now))

    async def sync_slot_rows(self, upsert: list[SlotRow],
                             delete: list[tuple[str, str, str]]) -> None:
        """Reconcile's repair: upsert `upsert` and delete the (project, environment, slot) rows
        in `delete`, all in one transaction, a few statements whatever the number of rows."""
        if not upsert and not delete:
            return
        now = to_text(datetime.now(UTC))
        ordered = sorted(upsert, key=lambda r: (r.project, r.environment, r.slot))
        names = sorted({r.project for r in ordered})
        async with self._transaction("sync_slot_rows") as db:
            await db.executemany(
                "INSERT INTO projects (name, created_at, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET updated_at = excluded.updated_at",
                [(name, now, now) for name in names])
            await db.executemany(_SYNC_SLOT, [
                (r.project, r.environment, r.slot, r.state, int(r.port), clean_text(r.image),
                 clean_text(r.container_id), to_text(r.deployed_at), to_text(r.promoted_at),
                 to_text(r.grace_expires_at), int(r.version), now)
                for r in ordered])
            await db.executemany(_DELETE_SLOT, sorted(delete))

    async def record_deployment(self, record: DeploymentRecord) -> None:
        async with self._transaction("record_deployment") as db:
            await db.execute(_UPSERT_DEPLOYMENT, (
                record.operation_id, record.operation, record.project, record.environment,
                record.slot, clean_text(record.image), record.result, clean_text(record.error),
                clean_text(record.actor) or "", to_text(record.started_at),
                to_text(record.finished_at)))

    async def record_audit(self, record: AuditRecord) -> None:
        detail = json.dumps(record.detail or {}, default=str, ensure_ascii=False, sort_keys=True)
        async with self._transaction("record_audit") as db:
            await db.execute(_INSERT_AUDIT, (
                record.operation_id, clean_text(record.actor), clean_text(record.team),
                record.action, record.project, record.environment, record.from_state,
                record.to_state, record.result, float(record.duration_ms), clean_text(detail),
                clean_text(record.log) or "", to_text(record.created_at)))

    # --- queries ----------------------------------------------------------------------------

    async def list_slots(self) -> list[SlotRow]:
        async with self._session("list_slots") as db:
            rows = await db.execute_fetchall(_SELECT_SLOTS)
            return [
                SlotRow(project=r[0], environment=r[1], slot=r[2], state=r[3], port=int(r[4]),
                        image=r[5], container_id=r[6], deployed_at=from_text(r[7]),
                        promoted_at=from_text(r[8]), grace_expires_at=from_text(r[9]),
                        version=int(r[10]))
                for r in rows
            ]

    async def list_deployments(self, project: str | None = None,
                               limit: int = 100) -> list[DeploymentRecord]:
        sql = f"SELECT {_DEPLOYMENT_COLUMNS} FROM deployments"
        params: list[Any] = []
        if project is not None:
            sql += " WHERE project = ?"
            params.append(project)
        sql += " ORDER BY started_at DESC, id DESC LIMIT ?"
        params.append(max(0, int(limit)))
        async with self._session("list_deployments") as db:
            rows = await db.execute_fetchall(sql, params)
            return [
                DeploymentRecord(operation_id=r[0], operation=r[1], project=r[2], environment=r[3],
                                 slot=r[4], image=r[5], result=r[6], started_at=from_text(r[7]),
                                 finished_at=from_text(r[8]), error=r[9], actor=r[10] or "")
                for r in rows
            ]

    async def list_audit(self, project: str | None = None, action: str | None = None,
                         limit: int = 100, *, team: str | None = None,
                         since: datetime | None = None,
                         until: datetime | None = None) -> list[AuditRecord]:
        sql = f"SELECT {_AUDIT_COLUMNS} FROM audit_logs"
        where: list[str] = []
        params: list[Any] = []
        if project is not None:
            where.append("project = ?")
            params.append(project)
        if action is not None:
            where.append("action = ?")
            params.append(action)
        if team is not None:
            where.append("team = ?")
            params.append(team)
        # created_at is fixed-width UTC text (to_text), so text order is time order.
        if since is not None:
            where.append("created_at >= ?")
            params.append(to_text(since))
        if until is not None:
            where.append("created_at < ?")
            params.append(to_text(until))
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        params.append(max(0, int(limit)))
        async with self._session("list_audit") as db:
            rows = await db.execute_fetchall(sql, params)
            return [
                AuditRecord(operation_id=r[0], actor=r[1], action=r[2], project=r[3],
                            environment=r[4], from_state=r[5], to_state=r[6], result=r[7],
                            duration_ms=float(r[8]), created_at=from_text(r[9]), team=r[10],
                            detail=_detail_from_text(r[11]), log=r[12] or "")
                for r in rows
            ]

    # --- teams and API keys -----------------------------------------------------------------

    async def create_team(self, name: str) -> TeamRow:
        async with self._transaction("create_team") as db:
            rows = list(await db.execute_fetchall(
                "INSERT INTO teams (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING "
                "RETURNING id, name, created_at", (clean_text(name), to_text(datetime.now(UTC)))))
        if not rows:
            raise StoreRefused(f"team {name} already exists")
        return TeamRow(id=int(rows[0][0]), name=rows[0][1], created_at=from_text(rows[0][2]))

    async def list_teams(self) -> list[TeamRow]:
        async with self._session("list_teams") as db:
            rows = await db.execute_fetchall("SELECT id, name, created_at FROM teams ORDER BY name")
            return [TeamRow(id=int(r[0]), name=r[1], created_at=from_text(r[2])) for r in rows]

    async def create_api_key(self, team: str, name: str, role: str, key_hash: str,
                             prefix: str) -> ApiKeyRow:
        now = datetime.now(UTC)
        async with self._transaction("create_api_key") as db:
            found = list(await db.execute_fetchall("SELECT id FROM teams WHERE name = ?", (team,)))
            if not found:
                raise StoreRefused(f"team {team} does not exist")
            taken = await db.execute_fetchall(
                "SELECT 1 FROM api_keys WHERE prefix = ? OR key_hash = ?", (prefix, key_hash))
            if taken:
                raise StoreRefused(f"API key prefix {prefix} is already taken")
            rows = list(await db.execute_fetchall(
                "INSERT INTO api_keys (team_id, name, role, key_hash, prefix, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (int(found[0][0]), clean_text(name) or "", role, key_hash, prefix, to_text(now))))
        return ApiKeyRow(id=int(rows[0][0]), team=team, name=clean_text(name) or "", role=role,
                         prefix=prefix, created_at=from_text(to_text(now)))

    async def list_api_keys(self, team: str | None = None) -> list[ApiKeyRow]:
        sql, params = _SELECT_API_KEYS, []
        if team is not None:
            sql += " WHERE t.name = ?"
            params.append(team)
        sql += " ORDER BY t.name, k.created_at, k.id"
        async with self._session("list_api_keys") as db:
            return [_api_key(r) for r in await db.execute_fetchall(sql, params)]

    async def revoke_api_key(self, prefix_or_id: str) -> ApiKeyRow:
        wanted = str(prefix_or_id).strip()
        now = to_text(datetime.now(UTC))
        async with self._transaction("revoke_api_key") as db:
            # A prefix first; an all-digits argument that is no prefix is taken as the key's id.
            rows = list(await db.execute_fetchall(_SELECT_API_KEYS + " WHERE k.prefix = ?",
                                                  (wanted,)))
            if not rows and wanted.isdigit() and int(wanted) < 2**63:
                rows = list(await db.execute_fetchall(_SELECT_API_KEYS + " WHERE k.id = ?",
                                                      (int(wanted),)))
            if not rows:
                raise StoreRefused(f"no API key with prefix or id {wanted}")
            key = _api_key(rows[0])
            if key.revoked_at is not None:
                raise StoreRefused(f"API key cb_{key.prefix} is already revoked "
                                   f"(since {to_text(key.revoked_at)})")
            await db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (now, key.id))
        return _api_key((key.id, key.team, key.name, key.role, key.prefix,
                         to_text(key.created_at), now))

    async def find_api_key(self, key_hash: str) -> ApiKeyRow | None:
        async with self._session("find_api_key") as db:
            rows = list(await db.execute_fetchall(_SELECT_API_KEYS + " WHERE k.key_hash = ?",
                                                  (key_hash,)))
            return _api_key(rows[0]) if rows else None
