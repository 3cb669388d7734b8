"""The secondary store: PostgreSQL (asyncpg) or embedded SQLite (aiosqlite) behind `Store`.

    store = open_store(config.database.dsn, config.database.sqlite_path,
                       config.database.connect_timeout)
    await store.connect()      # StoreError (one line) when the database is unreachable
    await store.migrate()      # applies the missing versioned migrations, returns their versions
    ...
    await store.close()

`open_store` only builds the store; nothing is opened until `connect()`. The backend modules are
imported lazily, so using SQLite never imports asyncpg and vice versa.
"""

from __future__ import annotations

from pathlib import Path

from codeb_tui.store.base import (
    ApiKeyRow,
    AuditRecord,
    DeploymentRecord,
    SlotRow,
    Store,
    StoreError,
    StoreRefused,
    TeamRow,
)
from codeb_tui.store.schema import Migration, load_migrations

__all__ = [
    "ApiKeyRow",
    "AuditRecord",
    "DeploymentRecord",
    "Migration",
    "SlotRow",
    "Store",
    "StoreError",
    "StoreRefused",
    "TeamRow",
    "load_migrations",
    "open_store",
]

def open_store(dsn: str | None, sqlite_path: Path, connect_timeout: float, *,
               schema: str = "public") -> Store:
    """The PostgreSQL store when `dsn` is set (postgres:// or postgresql://), else SQLite at
    `sqlite_path`. `schema` (PostgreSQL only) is created if missing and put on the search_path.
    Not connected yet: call `await store.connect()`."""
    if dsn is not None and dsn.strip():
        dsn = dsn.strip()
        if not dsn.startswith(("postgres://", "postgresql://")):
            raise StoreError("database DSN: expected postgresql://user@host:port/dbname")
        from codeb_tui.store.postgres import PostgresStore

        return PostgresStore(dsn, schema=schema, connect_timeout=connect_timeout)
    from codeb_tui.store.sqlite import SqliteStore

    return SqliteStore(Path(sqlite_path), connect_timeout=connect_timeout)
