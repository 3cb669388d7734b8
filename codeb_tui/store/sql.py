"""The statements and row mappers of both stores, written once.

`SqlStore` implements every method of `Store` over a small connection interface (the subset of
asyncpg's connection that is used: execute, executemany, fetch, fetchrow, fetchval) and a
`Dialect` for what differs between the databases: how timestamps are stored and read, how rows
are locked for update, how errors are told apart. Statements use PostgreSQL's numbered
placeholders ($1, $2, ...); the SQLite connection rewrites them to SQLite's own (?1, ?2, ...).

A backend adds only what really differs: connecting, the pool or the single connection, how a
transaction begins, how migrations exclude each other and how a migration script is run.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol

from codeb_tui.store.base import clean_text, one_line
from codeb_tui.store.schema import load_migrations
from codeb_tui.store.base import (
    ApiKeyRow,
    AuditRecord,
    DeploymentRecord,
    SlotRow,
    StoreError,
    StoreRefused,
    TeamRow,
)


class Connection(Protocol):
    """What `SqlStore` asks of a database connection (asyncpg's connection has all of it)."""

    async def execute(self, sql: str, *args: Any) -> Any: ...
    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> Any: ...
    async def fetch(self, sql: str, *args: Any) -> list[Any]: ...
    async def fetchrow(self, sql: str, *args: Any) -> Any | None: ...
    async def fetchval(self, sql: str, *args: Any) -> Any: ...


class Dialect(ABC):
    """What the statements' values and the errors look like in one database."""

    name: str  # "postgresql" | "sqlite": the store's kind and its migration files' suffix
    # Appended to a SELECT of api_keys to lock the row until the transaction ends.
    lock_rows: str
    # CREATE TABLE IF NOT EXISTS schema_migrations, in the database's types.
    create_migrations_table: str
    # One value: whether schema_migrations exists.
    migrations_table_exists: str

    @abstractmethod
    def write_time(self, value: datetime | None) -> Any:
        """`value` as the database stores it (naive datetimes are UTC)."""

    @abstractmethod
    def read_time(self, value: Any) -> datetime | None:
        """A stored timestamp as an aware UTC datetime."""

    @abstractmethod
    def is_unique_violation(self, exc: BaseException) -> bool: ...

    def is_unreachable(self, exc: BaseException) -> bool:
        """Whether `exc` means the server is not there (any more), rather than a refusal."""
        return False


# --- statements -----------------------------------------------------------------------------

_INSERT_MIGRATION = "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)"
_SELECT_MIGRATION = "SELECT 1 FROM schema_migrations WHERE version = $1"
_SCHEMA_VERSION = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"

_UPSERT_PROJECT = """
INSERT INTO projects (name, created_at, updated_at) VALUES ($1, $2, $2)
ON CONFLICT (name) DO UPDATE SET updated_at = EXCLUDED.updated_at
"""

# A slot row is the file's word: an existing row takes every field of the new one. The project
# id is looked up by name inside the statement, so that one executemany covers every row.
_UPSERT_SLOT = """
INSERT INTO project_slots (project_id, environment, slot, state, port, image, container_id,
                           deployed_at, promoted_at, grace_expires_at, version, updated_at)
VALUES ((SELECT id FROM projects WHERE name = $1), $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
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

_DELETE_SLOT = """
DELETE FROM project_slots
WHERE project_id = (SELECT id FROM projects WHERE name = $1) AND environment = $2 AND slot = $3
"""

# History is written once per operation: a second write (a retry after a lost answer, a replay
# from the journal) leaves the first row as it is.
_INSERT_DEPLOYMENT = """
INSERT INTO deployments (operation_id, operation, project, environment, slot, image, result,
                         error, actor, started_at, finished_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (operation_id) DO NOTHING
"""

_INSERT_AUDIT = """
INSERT INTO audit_logs (operation_id, actor, team, action, project, environment, from_state,
                        to_state, result, duration_ms, detail, log, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (operation_id, action) DO NOTHING
"""

_SELECT_SLOTS = """
SELECT p.name, s.environment, s.slot, s.state, s.port, s.image, s.container_id,
       s.deployed_at, s.promoted_at, s.grace_expires_at, s.version
FROM project_slots s JOIN projects p ON p.id = s.project_id
ORDER BY p.name, s.environment, s.slot
"""

_SELECT_DEPLOYMENTS = ("SELECT operation_id, operation, project, environment, slot, image, "
                       "result, started_at, finished_at, error, actor FROM deployments")
_SELECT_AUDIT = ("SELECT operation_id, actor, action, project, environment, from_state, "
                 "to_state, result, duration_ms, created_at, team, detail, log FROM audit_logs")

_INSERT_TEAM = ("INSERT INTO teams (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING "
                "RETURNING id, name, created_at")
_INSERT_API_KEY = ("INSERT INTO api_keys (team_id, name, role, key_hash, prefix, created_at) "
                   "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, created_at")
_SELECT_API_KEYS = ("SELECT k.id, t.name, k.name, k.role, k.prefix, k.created_at, k.revoked_at "
                    "FROM api_keys k JOIN teams t ON t.id = k.team_id")
_REVOKE_API_KEY = "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 RETURNING revoked_at"


class _Query:
    """A SELECT with optional filters, its placeholders numbered as values are bound."""

    def __init__(self, select: str) -> None:
        self.select = select
        self.args: list[Any] = []
        self.where: list[str] = []

    def bind(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def filter(self, condition: str, value: Any) -> None:
        """`condition` with `{}` where the value goes ("project = {}")."""
        self.where.append(condition.format(self.bind(value)))

    def sql(self, order_by: str, limit: int | None = None) -> str:
        sql = self.select
        if self.where:
            sql += " WHERE " + " AND ".join(self.where)
        sql += f" ORDER BY {order_by}"
        if limit is not None:
            sql += f" LIMIT {self.bind(max(0, int(limit)))}"
        return sql


def _detail_from_text(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"raw": text}
    return value if isinstance(value, dict) else {"value": value}


def _by_key(rows: Iterable[SlotRow]) -> list[SlotRow]:
    # A fixed order, so that two writers touching the same rows cannot deadlock.
    return sorted(rows, key=lambda r: (r.project, r.environment, r.slot))


class SqlStore(ABC):
    """Every method of `Store`, over `Connection` and `Dialect`."""

    dialect: Dialect
    description: str  # where it is, for messages ("sqlite /opt/codeb/codeb.sqlite3")
    where: str  # the start of every error message ("SQLite at /opt/codeb/codeb.sqlite3")

    @property
    def kind(self) -> str:
        return self.dialect.name

    # --- what a backend provides ------------------------------------------------------------

    @abstractmethod
    async def connect(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    def _connection(self, what: str) -> AbstractAsyncContextManager[Connection]:
        """A connection used by this caller alone; `self._failure(what, "not connected")`
        before `connect()`."""

    @abstractmethod
    def _begin(self, conn: Connection) -> AbstractAsyncContextManager[Any]:
        """A transaction on `conn`: committed at the end, rolled back on an exception."""

    @abstractmethod
    def _migration_lock(self, what: str) -> AbstractAsyncContextManager[Connection]:
        """A transaction that no other process migrating the same database runs beside."""

    @abstractmethod
    async def _run_script(self, conn: Connection, script: str) -> None:
        """Run a migration script (several statements)."""

    # --- plumbing ---------------------------------------------------------------------------

    async def __aenter__(self) -> SqlStore:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _failure(self, what: str, reason: str) -> StoreError:
        return StoreError(f"{self.where}: {what} failed: {reason}")

    def _error(self, what: str, exc: BaseException) -> StoreError:
        """A driver error as a one-line StoreError."""
        if self.dialect.is_unreachable(exc):
            return StoreError(f"{self.where} unreachable: {one_line(exc)}")
        return self._failure(what, one_line(exc))

    @asynccontextmanager
    async def _session(self, what: str) -> AsyncIterator[Connection]:
        """A connection; any driver error inside becomes a one-line StoreError."""
        try:
            async with self._connection(what) as conn:
                yield conn
        except StoreError:
            raise
        except Exception as exc:
            raise self._error(what, exc) from exc

    @asynccontextmanager
    async def _transaction(self, what: str) -> AsyncIterator[Connection]:
        async with self._session(what) as conn:
            async with self._begin(conn):
                yield conn

    def _now(self) -> Any:
        return self.dialect.write_time(datetime.now(UTC))

    # --- row mappers ------------------------------------------------------------------------

    def _slot(self, r: Sequence[Any]) -> SlotRow:
        when = self.dialect.read_time
        return SlotRow(project=r[0], environment=r[1], slot=r[2], state=r[3], port=int(r[4]),
                       image=r[5], container_id=r[6], deployed_at=when(r[7]),
                       promoted_at=when(r[8]), grace_expires_at=when(r[9]), version=int(r[10]))

    def _slot_args(self, r: SlotRow, now: Any) -> tuple[Any, ...]:
        when = self.dialect.write_time
        return (r.project, r.environment, r.slot, r.state, int(r.port), clean_text(r.image),
                clean_text(r.container_id), when(r.deployed_at), when(r.promoted_at),
                when(r.grace_expires_at), int(r.version), now)

    def _deployment(self, r: Sequence[Any]) -> DeploymentRecord:
        when = self.dialect.read_time
        return DeploymentRecord(operation_id=r[0], operation=r[1], project=r[2],
                                environment=r[3], slot=r[4], image=r[5], result=r[6],
                                started_at=when(r[7]), finished_at=when(r[8]), error=r[9],
                                actor=r[10] or "")

    def _audit(self, r: Sequence[Any]) -> AuditRecord:
        return AuditRecord(operation_id=r[0], actor=r[1], action=r[2], project=r[3],
                           environment=r[4], from_state=r[5], to_state=r[6], result=r[7],
                           duration_ms=float(r[8]), created_at=self.dialect.read_time(r[9]),
                           team=r[10], detail=_detail_from_text(r[11]), log=r[12] or "")

    def _team(self, r: Sequence[Any]) -> TeamRow:
        return TeamRow(id=int(r[0]), name=r[1], created_at=self.dialect.read_time(r[2]))

    def _api_key(self, r: Sequence[Any]) -> ApiKeyRow:
        when = self.dialect.read_time
        return ApiKeyRow(id=int(r[0]), team=r[1], name=r[2], role=r[3], prefix=r[4],
                         created_at=when(r[5]), revoked_at=when(r[6]))

    # --- migrations -------------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Apply pending migrations in order; return the versions applied (idempotent)."""
        applied: list[int] = []
        async with self._migration_lock("migrate") as conn:
            await conn.execute(self.dialect.create_migrations_table)
        for migration in load_migrations(self.dialect.name):
            what = f"migration {migration.version:03d} ({migration.name})"
            async with self._migration_lock(what) as conn:
                # Checked under the lock: another process may have just applied it.
                if await conn.fetchval(_SELECT_MIGRATION, migration.version):
                    continue
                await self._run_script(conn, migration.sql)
                await conn.execute(_INSERT_MIGRATION, migration.version, self._now())
                applied.append(migration.version)
        return applied

    async def schema_version(self) -> int:
        async with self._session("schema_version") as conn:
            if not await conn.fetchval(self.dialect.migrations_table_exists):
                return 0
            return int(await conn.fetchval(_SCHEMA_VERSION))

    # --- writes -----------------------------------------------------------------------------

    async def _upsert_slots(self, conn: Connection, rows: list[SlotRow], now: Any) -> None:
        names = sorted({r.project for r in rows})
        await conn.executemany(_UPSERT_PROJECT, [(name, now) for name in names])
        await conn.executemany(_UPSERT_SLOT, [self._slot_args(r, now) for r in _by_key(rows)])

    async def upsert_project_slots(self, rows: list[SlotRow]) -> None:
        """Insert or update the project rows and their slot rows (unique project+env+slot)."""
        if not rows:
            return
        async with self._transaction("upsert_project_slots") as conn:
            await self._upsert_slots(conn, rows, self._now())

    async def sync_slot_rows(self, upsert: list[SlotRow],
                             delete: list[tuple[str, str, str]]) -> None:
        """Reconcile's repair: upsert `upsert` and delete the (project, environment, slot) rows
        in `delete`, all in one transaction, a few batched statements whatever the number of
        rows."""
        if not upsert and not delete:
            return
        async with self._transaction("sync_slot_rows") as conn:
            if upsert:
                await self._upsert_slots(conn, upsert, self._now())
            if delete:
                await conn.executemany(_DELETE_SLOT, sorted(delete))

    async def record_deployment(self, record: DeploymentRecord) -> None:
        """Idempotent by operation_id: the first row written stays."""
        when = self.dialect.write_time
        async with self._transaction("record_deployment") as conn:
            await conn.execute(
                _INSERT_DEPLOYMENT, record.operation_id, record.operation, record.project,
                record.environment, record.slot, clean_text(record.image), record.result,
                clean_text(record.error), clean_text(record.actor) or "",
                when(record.started_at), when(record.finished_at))

    async def record_audit(self, record: AuditRecord) -> None:
        """Idempotent by (operation_id, action): the first row written stays."""
        detail = json.dumps(record.detail or {}, default=str, ensure_ascii=False, sort_keys=True)
        async with self._transaction("record_audit") as conn:
            await conn.execute(
                _INSERT_AUDIT, record.operation_id, clean_text(record.actor),
                clean_text(record.team), record.action, record.project, record.environment,
                record.from_state, record.to_state, record.result, float(record.duration_ms),
                clean_text(detail), clean_text(record.log) or "",
                self.dialect.write_time(record.created_at))

    # --- queries ----------------------------------------------------------------------------

    async def list_slots(self) -> list[SlotRow]:
        async with self._session("list_slots") as conn:
            return [self._slot(r) for r in await conn.fetch(_SELECT_SLOTS)]

    async def list_deployments(self, project: str | None = None,
                               limit: int = 100) -> list[DeploymentRecord]:
        query = _Query(_SELECT_DEPLOYMENTS)
        if project is not None:
            query.filter("project = {}", project)
        sql = query.sql("started_at DESC, id DESC", limit)
        async with self._session("list_deployments") as conn:
            return [self._deployment(r) for r in await conn.fetch(sql, *query.args)]

    async def list_audit(self, project: str | None = None, action: str | None = None,
                         limit: int = 100, *, team: str | None = None,
                         since: datetime | None = None,
                         until: datetime | None = None) -> list[AuditRecord]:
        """Newest first. Every filter given must hold: `since` <= created_at < `until`
        (naive datetimes are UTC)."""
        query = _Query(_SELECT_AUDIT)
        for condition, value in (("project = {}", project), ("action = {}", action),
                                 ("team = {}", team)):
            if value is not None:
                query.filter(condition, value)
        if since is not None:
            query.filter("created_at >= {}", self.dialect.write_time(since))
        if until is not None:
            query.filter("created_at < {}", self.dialect.write_time(until))
        sql = query.sql("created_at DESC, id DESC", limit)
        async with self._session("list_audit") as conn:
            return [self._audit(r) for r in await conn.fetch(sql, *query.args)]

    # --- teams and API keys -----------------------------------------------------------------

    async def create_team(self, name: str) -> TeamRow:
        async with self._transaction("create_team") as conn:
            row = await conn.fetchrow(_INSERT_TEAM, clean_text(name), self._now())
        if row is None:
            raise StoreRefused(f"team {name} already exists")
        return self._team(row)

    async def list_teams(self) -> list[TeamRow]:
        async with self._session("list_teams") as conn:
            rows = await conn.fetch("SELECT id, name, created_at FROM teams ORDER BY name")
            return [self._team(r) for r in rows]

    async def create_api_key(self, team: str, name: str, role: str, key_hash: str,
                             prefix: str) -> ApiKeyRow:
        name = clean_text(name) or ""
        async with self._transaction("create_api_key") as conn:
            team_id = await conn.fetchval("SELECT id FROM teams WHERE name = $1", team)
            if team_id is None:
                raise StoreRefused(f"team {team} does not exist")
            try:
                row = await conn.fetchrow(_INSERT_API_KEY, int(team_id), name, role, key_hash,
                                          prefix, self._now())
            except Exception as exc:
                if self.dialect.is_unique_violation(exc):
                    raise StoreRefused(f"API key prefix {prefix} is already taken") from exc
                raise
        return ApiKeyRow(id=int(row[0]), team=team, name=name, role=role, prefix=prefix,
                         created_at=self.dialect.read_time(row[1]))

    async def list_api_keys(self, team: str | None = None) -> list[ApiKeyRow]:
        query = _Query(_SELECT_API_KEYS)
        if team is not None:
            query.filter("t.name = {}", team)
        sql = query.sql("t.name, k.created_at, k.id")
        async with self._session("list_api_keys") as conn:
            return [self._api_key(r) for r in await conn.fetch(sql, *query.args)]

    async def revoke_api_key(self, prefix_or_id: str) -> ApiKeyRow:
        wanted = str(prefix_or_id).strip()
        select = _SELECT_API_KEYS + " WHERE {} = $1" + self.dialect.lock_rows
        async with self._transaction("revoke_api_key") as conn:
            # A prefix first; an all-digits argument that is no prefix is taken as the key's id.
            row = await conn.fetchrow(select.format("k.prefix"), wanted)
            if row is None and wanted.isdigit() and int(wanted) < 2**63:
                row = await conn.fetchrow(select.format("k.id"), int(wanted))
            if row is None:
                raise StoreRefused(f"no API key with prefix or id {wanted}")
            key = self._api_key(row)
            if key.revoked_at is not None:
                raise StoreRefused(f"API key cb_{key.prefix} is already revoked (since "
                                   f"{key.revoked_at:%Y-%m-%dT%H:%M:%S.%fZ})")
            revoked_at = await conn.fetchval(_REVOKE_API_KEY, self._now(), key.id)
        return replace(key, revoked_at=self.dialect.read_time(revoked_at))

    async def find_api_key(self, key_hash: str) -> ApiKeyRow | None:
        async with self._session("find_api_key") as conn:
            row = await conn.fetchrow(_SELECT_API_KEYS + " WHERE k.key_hash = $1", key_hash)
            return None if row is None else self._api_key(row)
