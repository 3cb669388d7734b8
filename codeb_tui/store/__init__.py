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

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
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

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_MIGRATION_NAME = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.(postgresql|sqlite)\.sql$")


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


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(dialect: str) -> list[Migration]:
    """The migrations for `dialect` ("postgresql" | "sqlite"), in version order.

    Files are `migrations/NNN_name.<dialect>.sql`; versions must run 1, 2, 3, ... without gaps."""
    found: dict[int, Migration] = {}
    for path in sorted(MIGRATIONS_DIR.iterdir()):
        m = _MIGRATION_NAME.match(path.name)
        if m is None or m.group(3) != dialect:
            continue
        version = int(m.group(1))
        if version in found:
            raise StoreError(f"duplicate {dialect} migration {version}: {path.name}")
        found[version] = Migration(version, m.group(2), path.read_text(encoding="utf-8"))
    versions = sorted(found)
    if versions != list(range(1, len(versions) + 1)):
        raise StoreError(f"{dialect} migrations must be numbered 1..n without gaps, got {versions}")
    return [found[v] for v in versions]


# --- small helpers shared by both backends ---------------------------------------------------


def utc(value: datetime) -> datetime:
    """`value` as an aware UTC datetime (a naive datetime is taken to be UTC already)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def clean_text(value: str | None) -> str | None:
    """Text a database accepts: NUL characters and unpaired surrogates replaced."""
    if value is None:
        return None
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def one_line(exc: BaseException) -> str:
    """A short one-line reason for `exc` ("Connection refused", not a traceback)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    errno = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and errno:
        # errno > 0 is a system error; < 0 is a resolver error (socket.gaierror) whose strerror
        # is the readable part ("Name or service not known").
        reason = os.strerror(errno) if errno > 0 else (exc.strerror or str(exc))
        filename = getattr(exc, "filename", None)
        return f"{reason}: {filename}" if filename else reason
    text = " ".join(str(exc).split())
    if text.startswith("Multiple exceptions:"):
        # asyncio's message when every address of a host failed: name the shared cause.
        errnos = set(re.findall(r"\[Errno (\d+)\]", text))
        if len(errnos) == 1:
            return os.strerror(int(errnos.pop()))
    return text or type(exc).__name__
