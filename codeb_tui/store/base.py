"""The secondary store: one interface over PostgreSQL (asyncpg) and SQLite (aiosqlite).

The file registry is the truth; the store is written after it and queried for history. A store
failure never fails an operation: callers catch `StoreError`, report it, and go on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


class StoreError(Exception):
    """The database could not be reached or refused a write. The message is one line."""


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
    async def record_deployment(self, record: DeploymentRecord) -> None: ...
    async def record_audit(self, record: AuditRecord) -> None: ...
    async def list_slots(self) -> list[SlotRow]: ...
    async def list_deployments(self, project: str | None = None, limit: int = 100) -> list[DeploymentRecord]: ...
    async def list_audit(self, project: str | None = None, action: str | None = None,
                         limit: int = 100) -> list[AuditRecord]: ...
