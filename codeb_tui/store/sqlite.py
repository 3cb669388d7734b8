"""The embedded store: one SQLite file through aiosqlite.

WAL mode and a 5 s busy timeout let several `codeb` processes (two operators, CI) share the file.
Within one process a single connection is used and every statement or transaction runs under an
asyncio lock. Writes run in explicit `BEGIN IMMEDIATE` transactions (the connection is in
autocommit mode otherwise). Timestamps are stored as fixed-width ISO-8601 UTC text
(`2025-01-31T12:00:00.000000Z`) so that text order is time order.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import aiosqlite

from codeb_tui.store.base import one_line, utc
from codeb_tui.store.base import StoreError
from codeb_tui.store.sql import Dialect, SqlStore


def to_text(value: datetime | None) -> str | None:
    if value is None:
        return None
    return utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_text(value: str | None) -> datetime | None:
    if value is None:
        return None
    return utc(datetime.fromisoformat(value))


class SqliteDialect(Dialect):
    name = "sqlite"
    lock_rows = ""  # BEGIN IMMEDIATE already keeps every other writer out
    create_migrations_table = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    applied_at  TEXT NOT NULL
)
"""
    migrations_table_exists = (
        "SELECT EXISTS (SELECT 1 FROM sqlite_master "
        "WHERE type = 'table' AND name = 'schema_migrations')")

    def write_time(self, value: datetime | None) -> str | None:
        return to_text(value)

    def read_time(self, value: Any) -> datetime | None:
        return from_text(value)

    def is_unique_violation(self, exc: BaseException) -> bool:
        return getattr(exc, "sqlite_errorname", None) in (
            "SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY")


@lru_cache(maxsize=256)
def _numbered(sql: str) -> str:
    """PostgreSQL's $1, $2 ... as SQLite's ?1, ?2 ... (same numbers, so a value may repeat)."""
    return re.sub(r"\$(\d+)", r"?\1", sql)


class _Connection:
    """The aiosqlite connection behind the interface `SqlStore` uses."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def execute(self, sql: str, *args: Any) -> None:
        await self.db.execute(_numbered(sql), args)

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        await self.db.executemany(_numbered(sql), args)

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        return list(await self.db.execute_fetchall(_numbered(sql), args))

    async def fetchrow(self, sql: str, *args: Any) -> Any | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else row[0]


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


class SqliteStore(SqlStore):
    dialect = SqliteDialect()

    def __init__(self, path: Path, *, connect_timeout: float = 3.0,
                 busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path).expanduser()
        self.description = f"sqlite {self.path}"
        self.where = f"SQLite at {self.path}"
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
        except BaseException as exc:  # cancelled too: an open connection's thread would
            if db is not None:        # keep the process from exiting
                try:
                    await db.close()
                except Exception:
                    pass
            if not isinstance(exc, Exception):
                raise
            raise StoreError(f"{self.where} unavailable: {one_line(exc)}") from exc
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
                raise self._error("close", exc) from exc

    # --- what SqlStore asks of a backend ----------------------------------------------------

    @asynccontextmanager
    async def _connection(self, what: str) -> AsyncIterator[_Connection]:
        async with self._lock:
            if self._db is None:
                raise self._failure(what, "not connected")
            yield _Connection(self._db)

    @asynccontextmanager
    async def _begin(self, conn: _Connection) -> AsyncIterator[None]:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            try:
                await conn.execute("ROLLBACK")
            except Exception:
                pass
            raise
        await conn.execute("COMMIT")

    def _migration_lock(self, what: str) -> AbstractAsyncContextManager[_Connection]:
        # BEGIN IMMEDIATE already keeps every other process's writes out.
        return self._transaction(what)

    async def _run_script(self, conn: _Connection, script: str) -> None:
        for statement in _split_statements(script):
            await conn.db.execute(statement)
