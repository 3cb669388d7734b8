"""The PostgreSQL store through asyncpg: a small pool (1..4 connections).

Tables live in `schema` (default `public`), created if missing and put on every connection's
search_path. Migrations take a transaction-scoped advisory lock, so several `codeb` processes
migrating at once apply each version exactly once. Every driver error, including a lost
connection, becomes a one-line `StoreError` naming the server ("PostgreSQL at host:port ...");
the DSN's password never appears in a message.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

from codeb_tui.store.base import one_line, utc
from codeb_tui.store.base import StoreError
from codeb_tui.store.sql import Dialect, SqlStore

# pg_advisory_xact_lock key for migrations and schema creation ("codeb" in ASCII).
MIGRATION_LOCK_KEY = 0x636F646562
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# Errors that mean "the server is not there (any more)", as opposed to "it refused this".
_UNREACHABLE = (
    OSError,  # includes ConnectionError and TimeoutError
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
)


class PostgresDialect(Dialect):
    name = "postgresql"
    lock_rows = " FOR UPDATE OF k"
    create_migrations_table = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""
    migrations_table_exists = "SELECT to_regclass('schema_migrations') IS NOT NULL"

    def write_time(self, value: datetime | None) -> datetime | None:
        return None if value is None else utc(value)

    def read_time(self, value: Any) -> datetime | None:
        return None if value is None else utc(value)

    def is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, asyncpg.UniqueViolationError)

    def is_unreachable(self, exc: BaseException) -> bool:
        return isinstance(exc, _UNREACHABLE)


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


class PostgresStore(SqlStore):
    dialect = PostgresDialect()

    def __init__(self, dsn: str, *, schema: str = "public", connect_timeout: float = 3.0,
                 command_timeout: float = 30.0, min_size: int = 1, max_size: int = 4) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise StoreError(f"PostgreSQL schema name {schema!r}: expected lower-case letters, "
                             "digits and underscores")
        self.dsn = dsn
        self.schema = schema
        self.address = server_address(dsn)
        self.where = f"PostgreSQL at {self.address}"
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
                raise StoreError(f"{self.where} refused the connection: "
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

    # --- what SqlStore asks of a backend ----------------------------------------------------

    @asynccontextmanager
    async def _connection(self, what: str) -> AsyncIterator[asyncpg.Connection]:
        pool = self._pool
        if pool is None:
            raise self._failure(what, "not connected")
        async with pool.acquire(timeout=self.connect_timeout) as conn:
            yield conn

    # A pooled connection with errors mapped (the name tests/test_access.py reaches for).
    _conn = SqlStore._session

    def _begin(self, conn: asyncpg.Connection) -> AbstractAsyncContextManager[Any]:
        return conn.transaction()

    @property
    def _migration_timeout(self) -> float:
        # A migration may rewrite a large table or wait for another process's migration.
        return max(self.command_timeout, 300.0)

    @asynccontextmanager
    async def _migration_lock(self, what: str) -> AsyncIterator[asyncpg.Connection]:
        async with self._transaction(what) as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY,
                               timeout=self._migration_timeout)
            yield conn

    async def _run_script(self, conn: asyncpg.Connection, script: str) -> None:
        await conn.execute(script, timeout=self._migration_timeout)
