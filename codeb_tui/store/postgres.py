"""The PostgreSQL store through asyncpg: a small pool (1..4 connections).

Tables live in `schema` (default `public`), created if missing and put on every connection's
search_path. Migrations take a transaction-scoped advisory lock, so several `codeb` processes
migrating at once apply each version exactly once. Every driver error, including a lost
connection, becomes a one-line `StoreError` naming the server ("PostgreSQL at host:port ...");
the DSN's password never appears in a message.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

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

# pg_advisory_xact_lock key for migrations and schema creation ("codeb" in ASCII).
MIGRATION_LOCK_KEY = 0x636F646562
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

_SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""

_UPSERT_PROJECT = """
INSERT INTO projects (name, created_at, updated_at) VALUES ($1, $2, $2)
ON CONFLICT (name) DO UPDATE SET updated_at = EXCLUDED.updated_at
RETURNING id
"""

# A slot row is the file's word: an existing row takes every field of the new one.
_ON_SLOT_CONFLICT = """
ON CONFLICT (project_id, environment, slot) DO UPDATE SET
    state = EXCLUDED.state,
    port = EXCLUDED.port,
    image = EXCLUDED.image,
    container_id = EXCLUDED.container_id,
    deployed_at = EXCLUDED.deployed_at,
    promoted_at = EXCLUDED.promoted_at,
    grace_expires_at = EXCLUDED.grace_expires_at,
    version = EXCLUDED.version,
    updated_at = EXCLUDED.updated_at
"""

_UPSERT_SLOT = """
INSERT INTO project_slots (project_id, environment, slot, state, port, image, container_id,
                           deployed_at, promoted_at, grace_expires_at, version, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
""" + _ON_SLOT_CONFLICT

# Reconcile's batch: one statement over arrays, the project id joined by name.
_SYNC_SLOTS = """
INSERT INTO project_slots (project_id, environment, slot, state, port, image, container_id,
                           deployed_at, promoted_at, grace_expires_at, version, updated_at)
SELECT p.id, u.environment, u.slot, u.state, u.port, u.image, u.container_id, u.deployed_at,
       u.promoted_at, u.grace_expires_at, u.version, $12
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::integer[], $6::text[],
            $7::text[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], $11::bigint[])
     AS u(project, environment, slot, state, port, image, container_id, deployed_at,
          promoted_at, grace_expires_at, version)
JOIN projects p ON p.name = u.project
""" + _ON_SLOT_CONFLICT
_DELETE_SLOTS = """
DELETE FROM project_slots s USING projects p,
     unnest($1::text[], $2::text[], $3::text[]) AS d(project, environment, slot)
WHERE p.id = s.project_id AND p.name = d.project AND s.environment = d.environment
  AND s.slot = d.slot
"""

_UPSERT_DEPLOYMENT = """
INSERT INTO deployments (operation_id, operation, project, environment, slot, image, result,
                         error, actor, started_at, finished_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (operation_id) DO UPDATE SET
    operation = EXCLUDED.operation,
    project = EXCLUDED.project,
    environment = EXCLUDED.environment,
    slot = EXCLUDED.slot,
    image = EXCLUDED.image,
    result = EXCLUDED.result,
    error = EXCLUDED.error,
    actor = EXCLUDED.actor,
    started_at = EXCLUDED.started_at,
    finished_at = EXCLUDED.finished_at
"""

_INSERT_AUDIT = """
INSERT INTO audit_logs (operation_id, actor, team, action, project, environment, from_state,
                        to_state, result, duration_ms, detail, log, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
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

# Errors that mean "the server is not there (any more)", as opposed to "it refused this".
_UNREACHABLE = (
    OSError,  # includes ConnectionError and TimeoutError
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
)


def server_address(dsn: str) -> str:
    """`host:port` of a postgresql:// DSN, without user or password."""
    try:
        parts = urlsplit(dsn)
        netloc = parts.netloc.rpartition("@")[2]
        if not netloc:  # postgresql:///db?host=/run/postgresql&port=5433
            query = parse_qs(parts.query)
            return f"{query.get('host', ['localhost'])[0]}:{query.get('port', ['5432'])[0]}"
        if "," in netloc:  # several hosts
            return netloc
        if parts.port is None:
            return f"{netloc}:5432"
        return netloc
    except ValueError:
        return "(unparsable DSN)"


def _database_name(dsn: str) -> str:
    try:
        return urlsplit(dsn).path.lstrip("/")
    except ValueError:
        return ""


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
                     created_at=_ts(r[5]), revoked_at=_ts(r[6]))


class PostgresStore:
    kind = "postgresql"

    def __init__(self, dsn: str, *, schema: str = "public", connect_timeout: float = 3.0,
                 command_timeout: float = 30.0, min_size: int = 1, max_size: int = 4) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise StoreError(f"PostgreSQL schema name {schema!r}: expected lower-case letters, "
                             "digits and underscores")
        self.dsn = dsn
        self.schema = schema
        self.address = server_address(dsn)
        database = _database_name(dsn)
        self.description = f"postgresql {self.address}" + (f"/{database}" if database else "")
        if schema != "public":
            self.description += f" (schema {schema})"
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.min_size = min_size
        self.max_size = max_size
        self._pool: asyncpg.Pool | None = None

    def __repr__(self) -> str:
        return f"<PostgresStore {self.description}>"

    # --- lifecycle --------------------------------------------------------------------------

    def _error(self, what: str, exc: BaseException) -> StoreError:
        if isinstance(exc, _UNREACHABLE):
            return StoreError(f"PostgreSQL at {self.address} unreachable: {one_line(exc)}")
        return StoreError(f"PostgreSQL at {self.address}: {what} failed: {one_line(exc)}")

    async def connect(self) -> None:
        if self._pool is not None:
            return
        pool = asyncpg.create_pool(
            self.dsn, min_size=self.min_size, max_size=self.max_size,
            timeout=self.connect_timeout, command_timeout=self.command_timeout,
            server_settings={"search_path": self.schema, "application_name": "codeb"})
        try:
            # asyncpg bounds each connection attempt by `timeout`; this bounds the whole start-up
            # (name resolution, several addresses) by the same budget plus a little slack.
            await asyncio.wait_for(pool, self.connect_timeout + 0.5)
            async with pool.acquire(timeout=self.connect_timeout) as conn:
                await self._ensure_schema(conn)
        except Exception as exc:
            pool.terminate()
            if isinstance(exc, StoreError):
                raise
            if isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, _UNREACHABLE):
                raise StoreError(f"PostgreSQL at {self.address} refused the connection: "
                                 f"{one_line(exc)}") from exc
            raise self._error("connect", exc) from exc
        self._pool = pool

    async def _ensure_schema(self, conn: asyncpg.Connection) -> None:
        exists = await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", self.schema)
        if exists:
            return
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            # The name is validated by _SCHEMA_NAME, so quoting it is enough.
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), max(self.connect_timeout, 5.0))
        except Exception:
            pool.terminate()

    async def __aenter__(self) -> PostgresStore:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- plumbing ---------------------------------------------------------------------------

    @asynccontextmanager
    async def _conn(self, what: str) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; any driver error becomes a one-line StoreError."""
        pool = self._pool
        if pool is None:
            raise StoreError(f"PostgreSQL at {self.address}: {what} failed: not connected")
        try:
            async with pool.acquire(timeout=self.connect_timeout) as conn:
                yield conn
        except StoreError:
            raise
        except Exception as exc:
            raise self._error(what, exc) from exc

    # --- migrations -------------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        applied: list[int] = []
        timeout = max(self.command_timeout, 300.0)
        async with self._conn("migrate") as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY,
                                   timeout=timeout)
                await conn.execute(_SCHEMA_MIGRATIONS)
            for migration in load_migrations("postgresql"):
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY,
                                       timeout=timeout)
                    done = await conn.fetchval(
                        "SELECT 1 FROM schema_migrations WHERE version = $1", migration.version)
                    if done:
                        continue
                    try:
                        await conn.execute(migration.sql, timeout=timeout)
                    except asyncpg.PostgresError as exc:
                        raise StoreError(
                            f"PostgreSQL at {self.address}: migration {migration.version:03d} "
                            f"({migration.name}) failed: {one_line(exc)}") from exc
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                        migration.version, datetime.now(UTC))
                    applied.append(migration.version)
        return applied

    async def schema_version(self) -> int:
        async with self._conn("schema_version") as conn:
            if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
                return 0
            return int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"))

    # --- writes -----------------------------------------------------------------------------

    async def upsert_project_slots(self, rows: list[SlotRow]) -> None:
        if not rows:
            return
        now = datetime.now(UTC)
        # A fixed order, so that two writers touching the same projects cannot deadlock.
        ordered = sorted(rows, key=lambda r: (r.project, r.environment, r.slot))
        async with self._conn("upsert_project_slots") as conn:
            async with conn.transaction():
                project_ids: dict[str, int] = {}
                for row in ordered:
                    if row.project not in project_ids:
                        project_ids[row.project] = await conn.fetchval(
                            _UPSERT_PROJECT, row.project, now)
                await conn.executemany(_UPSERT_SLOT, [
                    (project_ids[r.project], r.environment, r.slot, r.state, int(r.port),
                     clean_text(r.image), clean_text(r.container_id), _ts(r.deployed_at),
                     _ts(r.promoted_at), _ts(r.grace_expires_at), int(r.version), now)
                    for r in ordered
                ])

    async def sync_slot_rows(self, upsert: list[SlotRow],
                             delete: list[tuple[str, str, str]]) -> None:
        """Reconcile's repair: upsert `upsert` and delete the (project, environment, slot) rows
        in `delete`, all in one transaction, three statements whatever the number of rows."""
        if not upsert and not delete:
            return
        now = datetime.now(UTC)
        ordered = sorted(upsert, key=lambda r: (r.project, r.environment, r.slot))
        names = sorted({r.project for r in ordered})
        gone = sorted(delete)
        async with self._conn("sync_slot_rows") as conn:
            async with conn.transaction():
                if names:
                    await conn.execute(
                        "INSERT INTO projects (name, created_at, updated_at) "
                        "SELECT n, $2, $2 FROM unnest($1::text[]) AS n "
                        "ON CONFLICT (name) DO UPDATE SET updated_at = EXCLUDED.updated_at",
                        names, now)
                    await conn.execute(
                        _SYNC_SLOTS,
                        [r.project for r in ordered], [r.environment for r in ordered],
                        [r.slot for r in ordered], [r.state for r in ordered],
                        [int(r.port) for r in ordered], [clean_text(r.image) for r in ordered],
                        [clean_text(r.container_id) for r in ordered],
                        [_ts(r.deployed_at) for r in ordered], [_ts(r.promoted_at) for r in ordered],
                        [_ts(r.grace_expires_at) for r in ordered],
                        [int(r.version) for r in ordered], now)
                if gone:
                    await conn.execute(_DELETE_SLOTS, [g[0] for g in gone], [g[1] for g in gone],
                                       [g[2] for g in gone])

    async def record_deployment(self, record: DeploymentRecord) -> None:
        async with self._conn("record_deployment") as conn:
            await conn.execute(
                _UPSERT_DEPLOYMENT, record.operation_id, record.operation, record.project,
                record.environment, record.slot, clean_text(record.image), record.result,
                clean_text(record.error), clean_text(record.actor) or "",
                _ts(record.started_at), _ts(record.finished_at))

    async def record_audit(self, record: AuditRecord) -> None:
        detail = json.dumps(record.detail or {}, default=str, ensure_ascii=False, sort_keys=True)
        async with self._conn("record_audit") as conn:
            await conn.execute(
                _INSERT_AUDIT, record.operation_id, clean_text(record.actor),
                clean_text(record.team), record.action, record.project, record.environment,
                record.from_state, record.to_state, record.result, float(record.duration_ms),
                clean_text(detail), clean_text(record.log) or "", _ts(record.created_at))

    # --- queries ----------------------------------------------------------------------------

    async def list_slots(self) -> list[SlotRow]:
        async with self._conn("list_slots") as conn:
            rows = await conn.fetch(_SELECT_SLOTS)
            return [
                SlotRow(project=r[0], environment=r[1], slot=r[2], state=r[3], port=int(r[4]),
                        image=r[5], container_id=r[6], deployed_at=_ts(r[7]),
                        promoted_at=_ts(r[8]), grace_expires_at=_ts(r[9]), version=int(r[10]))
                for r in rows
            ]

    async def list_deployments(self, project: str | None = None,
                               limit: int = 100) -> list[DeploymentRecord]:
        sql = f"SELECT {_DEPLOYMENT_COLUMNS} FROM deployments"
        params: list[Any] = []
        if project is not None:
            params.append(project)
            sql += f" WHERE project = ${len(params)}"
        params.append(max(0, int(limit)))
        sql += f" ORDER BY started_at DESC, id DESC LIMIT ${len(params)}"
        async with self._conn("list_deployments") as conn:
            rows = await conn.fetch(sql, *params)
            return [
                DeploymentRecord(operation_id=r[0], operation=r[1], project=r[2],
                                 environment=r[3], slot=r[4], image=r[5], result=r[6],
                                 started_at=_ts(r[7]), finished_at=_ts(r[8]), error=r[9],
                                 actor=r[10] or "")
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
            params.append(project)
            where.append(f"project = ${len(params)}")
        if action is not None:
            params.append(action)
            where.append(f"action = ${len(params)}")
        if team is not None:
            params.append(team)
            where.append(f"team = ${len(params)}")
        if since is not None:
            params.append(utc(since))
            where.append(f"created_at >= ${len(params)}")
        if until is not None:
            params.append(utc(until))
            where.append(f"created_at < ${len(params)}")
        if where:
            sql += " WHERE " + " AND ".join(where)
        params.append(max(0, int(limit)))
        sql += f" ORDER BY created_at DESC, id DESC LIMIT ${len(params)}"
        async with self._conn("list_audit") as conn:
            rows = await conn.fetch(sql, *params)
            return [
                AuditRecord(operation_id=r[0], actor=r[1], action=r[2], project=r[3],
                            environment=r[4], from_state=r[5], to_state=r[6], result=r[7],
                            duration_ms=float(r[8]), created_at=_ts(r[9]), team=r[10],
                            detail=_detail_from_text(r[11]), log=r[12] or "")
                for r in rows
            ]

    # --- teams and API keys -----------------------------------------------------------------

    async def create_team(self, name: str) -> TeamRow:
        async with self._conn("create_team") as conn:
            row = await conn.fetchrow(
                "INSERT INTO teams (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING "
                "RETURNING id, name, created_at", clean_text(name), datetime.now(UTC))
        if row is None:
            raise StoreRefused(f"team {name} already exists")
        return TeamRow(id=int(row[0]), name=row[1], created_at=_ts(row[2]))

    async def list_teams(self) -> list[TeamRow]:
        async with self._conn("list_teams") as conn:
            rows = await conn.fetch("SELECT id, name, created_at FROM teams ORDER BY name")
            return [TeamRow(id=int(r[0]), name=r[1], created_at=_ts(r[2])) for r in rows]

    async def create_api_key(self, team: str, name: str, role: str, key_hash: str,
                             prefix: str) -> ApiKeyRow:
        async with self._conn("create_api_key") as conn:
            async with conn.transaction():
                team_id = await conn.fetchval("SELECT id FROM teams WHERE name = $1", team)
                if team_id is None:
                    raise StoreRefused(f"team {team} does not exist")
                try:
                    row = await conn.fetchrow(
                        "INSERT INTO api_keys (team_id, name, role, key_hash, prefix, created_at) "
                        "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, created_at",
                        team_id, clean_text(name) or "", role, key_hash, prefix, datetime.now(UTC))
                except asyncpg.UniqueViolationError as exc:
                    raise StoreRefused(f"API key prefix {prefix} is already taken") from exc
        return ApiKeyRow(id=int(row[0]), team=team, name=clean_text(name) or "", role=role,
                         prefix=prefix, created_at=_ts(row[1]))

    async def list_api_keys(self, team: str | None = None) -> list[ApiKeyRow]:
        sql, params = _SELECT_API_KEYS, []
        if team is not None:
            sql += " WHERE t.name = $1"
            params.append(team)
        sql += " ORDER BY t.name, k.created_at, k.id"
        async with self._conn("list_api_keys") as conn:
            return [_api_key(r) for r in await conn.fetch(sql, *params)]

    async def revoke_api_key(self, prefix_or_id: str) -> ApiKeyRow:
        wanted = str(prefix_or_id).strip()
        async with self._conn("revoke_api_key") as conn:
            async with conn.transaction():
                # A prefix first; an all-digits argument that is no prefix is taken as the id.
                row = await conn.fetchrow(
                    _SELECT_API_KEYS + " WHERE k.prefix = $1 FOR UPDATE OF k", wanted)
                if row is None and wanted.isdigit() and int(wanted) < 2**63:
                    row = await conn.fetchrow(
                        _SELECT_API_KEYS + " WHERE k.id = $1 FOR UPDATE OF k", int(wanted))
                if row is None:
                    raise StoreRefused(f"no API key with prefix or id {wanted}")
                key = _api_key(row)
                if key.revoked_at is not None:
                    raise StoreRefused(f"API key cb_{key.prefix} is already revoked (since "
                                       f"{key.revoked_at:%Y-%m-%dT%H:%M:%S.%fZ})")
                revoked_at = await conn.fetchval(
                    "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 RETURNING revoked_at",
                    datetime.now(UTC), key.id)
        return ApiKeyRow(id=key.id, team=key.team, name=key.name, role=key.role,
                         prefix=key.prefix, created_at=key.created_at, revoked_at=_ts(revoked_at))

    async def find_api_key(self, key_hash: str) -> ApiKeyRow | None:
        async with self._conn("find_api_key") as conn:
            row = await conn.fetchrow(_SELECT_API_KEYS + " WHERE k.key_hash = $1", key_hash)
            return None if row is None else _api_key(row)


def _ts(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)
