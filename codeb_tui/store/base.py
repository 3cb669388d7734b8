"""The secondary store: one interface over PostgreSQL (asyncpg) and SQLite (aiosqlite).

The file registry is the truth; the store is written after it and queried for history. A store
failure never fails an operation: callers catch `StoreError`, report it, and go on.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol


class StoreError(Exception):
    """The database could not be reached or refused a write. The message is one line."""


class StoreRefused(StoreError):
    """The database is fine but the request is refused: a duplicate name, an unknown or already
    revoked API key. Bad input (exit 2), as opposed to an unreachable database."""


@dataclass(frozen=True)
class SlotRow:
    project: str
    environment: str  # production | staging | preview
    slot: str  # blue | green
    state: str  # empty | deployed | active | grace
    port: int
    image: str | None = None
    container_id: str | None = None
    deployed_at: datetime | None = None
    promoted_at: datetime | None = None
    grace_expires_at: datetime | None = None
    version: int = 0


@dataclass(frozen=True)
class DeploymentRecord:
    operation_id: str  # uuid4 hex, unique
    operation: str  # deploy | promote | rollback | cleanup
    project: str
    environment: str
    slot: str | None
    image: str | None
    result: str  # succeeded | failed | refused
    started_at: datetime
    finished_at: datetime
    error: str | None = None
    actor: str = ""


@dataclass(frozen=True)
class AuditRecord:
    operation_id: str
    actor: str  # OS user (or API key's team later)
    action: str  # deploy | promote | rollback | cleanup | ...
    project: str | None
    environment: str | None
    from_state: str | None
    to_state: str | None
    result: str  # succeeded | failed | refused | denied
    duration_ms: float
    created_at: datetime
    team: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)  # stored as JSON text
    log: str = ""  # the operation's event lines


@dataclass(frozen=True)
class TeamRow:
    id: int
    name: str
    created_at: datetime


@dataclass(frozen=True)
class ApiKeyRow:
    """An API key as stored: never the key itself, and the SHA-256 hash is not carried either."""

    id: int
    team: str  # the team's name
    name: str
    role: str  # admin | member | viewer
    prefix: str  # the 8 characters after "cb_" in the key
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


class Store(Protocol):
    kind: str  # "postgresql" | "sqlite"
    description: str  # where it is, for messages ("sqlite /opt/codeb/codeb.sqlite3")

    async def connect(self) -> None: ...
    async def close(self) -> None: ...
    async def migrate(self) -> list[int]:
        """Apply pending migrations in order; return the versions applied (idempotent)."""
    async def schema_version(self) -> int: ...
    async def upsert_project_slots(self, rows: list[SlotRow]) -> None:
        """Insert or update the project row and its slot rows (unique project+env+slot)."""
    async def sync_slot_rows(self, upsert: list[SlotRow],
                             delete: list[tuple[str, str, str]]) -> None:
        """Reconcile's repair, one transaction: upsert these slot rows (creating project rows as
        needed) and delete the (project, environment, slot) rows in `delete`."""
    async def record_deployment(self, record: DeploymentRecord) -> None: ...
    async def record_audit(self, record: AuditRecord) -> None: ...
    async def list_slots(self) -> list[SlotRow]: ...
    async def list_deployments(self, project: str | None = None, limit: int = 100) -> list[DeploymentRecord]: ...
    async def list_audit(self, project: str | None = None, action: str | None = None,
                         limit: int = 100, *, team: str | None = None,
                         since: datetime | None = None,
                         until: datetime | None = None) -> list[AuditRecord]:
        """Newest first. Every filter given must hold: `since` <= created_at < `until`
        (naive datetimes are UTC)."""

    # teams and API keys (codeb_tui.domain.access hashes and checks; the store only keeps rows)
    async def create_team(self, name: str) -> TeamRow:
        """StoreRefused "team <name> already exists" on a duplicate."""
    async def list_teams(self) -> list[TeamRow]:
        """Every team, by name."""
    async def create_api_key(self, team: str, name: str, role: str, key_hash: str,
                             prefix: str) -> ApiKeyRow:
        """StoreRefused when the team does not exist or the prefix or hash is taken."""
    async def list_api_keys(self, team: str | None = None) -> list[ApiKeyRow]:
        """Keys (revoked ones too) by team name then creation; [] for an unknown team."""
    async def revoke_api_key(self, prefix_or_id: str) -> ApiKeyRow:
        """Set revoked_at on the key whose prefix (or, all digits, id) this is.
        StoreRefused when no key matches or it is already revoked."""
    async def find_api_key(self, key_hash: str) -> ApiKeyRow | None:
        """The key with this SHA-256 hex hash (revoked or not), or None."""


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
