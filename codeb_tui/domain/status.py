"""Typed answers of the engine's queries: slot status and the port report.

Enums stay enums here; `to_json()` is the one place they become the plain words of
`codeb status --json` and `codeb ports --json`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from codeb_tui.domain.model import Environment, SlotName, SlotState


class Health(StrEnum):
    NONE = "none"
    """An empty slot: nothing to check."""
    UNKNOWN = "unknown"
    """Not checked (registry-only status) or not checkable right now."""
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class ContainerState(StrEnum):
    """What Docker says of a slot's container, as far as status needs it."""

    RUNNING = "running"
    CREATED = "created"
    RESTARTING = "restarting"
    EXITED = "exited"
    PAUSED = "paused"
    DEAD = "dead"
    REMOVING = "removing"
    MISSING = "missing"
    """The slot names a container Docker does not have."""
    UNKNOWN = "unknown"
    """Docker could not be asked."""

    @classmethod
    def of(cls, docker_status: str) -> ContainerState:
        try:
            return cls(docker_status)
        except ValueError:
            return cls.UNKNOWN


@dataclass(frozen=True)
class HostHealth:
    """One slot on one host of a project that runs on remote or several hosts."""

    host: str
    health: Health
    detail: str | None = None
    latency_ms: float | None = None
    container_status: ContainerState | None = None
    reachable: bool = True
    """False when the host did not answer within its request timeout (health is then unknown)."""

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "health": self.health.value, "detail": self.detail,
                "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
                "container_status": None if self.container_status is None
                else self.container_status.value,
                "reachable": self.reachable}


@dataclass(frozen=True)
class HostState:
    """Whether a host answered its last probe (the console's top bar, `codeb status`)."""

    name: str
    reachable: bool
    detail: str = ""
    """Why not, when unreachable."""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "reachable": self.reachable, "detail": self.detail}


@dataclass(frozen=True)
class SlotStatus:
    """One slot as `codeb status` and the console show it: the registry's word plus, when
    asked live, its container and health."""

    project: str
    environment: Environment
    slot: SlotName
    state: SlotState
    port: int
    image: str | None
    health: Health
    health_detail: str | None
    latency_ms: float | None
    url: str | None
    """The production URL of an active slot, the preview URL of a deployed or grace one."""
    container: str | None
    container_status: ContainerState | None
    """None when not asked (registry-only) or when the slot has no container."""
    deployed_at: datetime | None
    grace_expires_at: datetime | None
    version: int
    checked_at: float | None = None
    """time.monotonic() of the health check, None when not checked."""
    hosts: tuple[HostHealth, ...] = ()
    """Per host, for a project on remote or several hosts (its health and container are then
    the worst of them); empty for a project on the local host only."""

    @property
    def key(self) -> tuple[str, Environment]:
        return (self.project, self.environment)

    def to_json(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "environment": self.environment.value,
            "slot": self.slot.value,
            "state": self.state.value,
            "port": self.port,
            "image": self.image,
            "health": self.health.value,
            "health_detail": self.health_detail,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
            "url": self.url,
            "container": self.container,
            "container_status": None if self.container_status is None else self.container_status.value,
            "deployed_at": self.deployed_at.isoformat() if self.deployed_at else None,
            "grace_expires_at": self.grace_expires_at.isoformat() if self.grace_expires_at else None,
            "version": self.version,
            "hosts": [h.to_json() for h in self.hosts],
        }


class PortConflictKind(StrEnum):
    HELD_BY_UNKNOWN_PROCESS = "held_by_unknown_process"
    FOREIGN_LISTENER = "foreign_listener"
    CONTAINER_NOT_IN_REGISTRY = "container_not_in_registry"
    OWNER_MISMATCH = "owner_mismatch"


@dataclass(frozen=True)
class PortPairUse:
    blue: int
    green: int
    project: str | None
    """Owners in ssot.json (comma-joined when they disagree), None when not codeb's."""
    listening: tuple[int, ...]
    containers: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"blue": self.blue, "green": self.green, "project": self.project,
                "listening": list(self.listening), "containers": list(self.containers)}


@dataclass(frozen=True)
class EnvironmentPorts:
    environment: Environment
    range: tuple[int, int]
    used_pairs: tuple[PortPairUse, ...]
    free_pairs: int

    def to_json(self) -> dict[str, Any]:
        return {"environment": self.environment.value, "range": list(self.range),
                "used_pairs": [p.to_json() for p in self.used_pairs],
                "free_pairs": self.free_pairs}


@dataclass(frozen=True)
class PortConflict:
    port: int
    kind: PortConflictKind
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"port": self.port, "kind": self.kind.value, "detail": self.detail}


@dataclass(frozen=True)
class PortsReport:
    """Each environment's range with its used and free pairs, and every disagreement between
    ssot.json, codeb's containers and the sockets listening on the host."""

    environments: tuple[EnvironmentPorts, ...]
    conflicts: tuple[PortConflict, ...]

    def to_json(self) -> dict[str, Any]:
        return {"environments": [e.to_json() for e in self.environments],
                "conflicts": [c.to_json() for c in self.conflicts]}


__all__ = [
    "ContainerState",
    "EnvironmentPorts",
    "Health",
    "HostHealth",
    "HostState",
    "PortConflict",
    "PortConflictKind",
    "PortPairUse",
    "PortsReport",
    "SlotStatus",
]
