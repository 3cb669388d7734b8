"""The versioned migrations of both backends: `migrations/NNN_name.<dialect>.sql`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from codeb_tui.store.base import StoreError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_MIGRATION_NAME = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.(postgresql|sqlite)\.sql$")


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
