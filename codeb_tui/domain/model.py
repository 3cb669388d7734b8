"""The domain: projects, environments, slots and their states.

Everything here is pure data and validation; nothing touches a file, a container or the network.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from enum import StrEnum

from codeb_tui.domain.errors import BadInput

PROJECT_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
HOST_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
"""A host's name in config (`hosts:`), slot files and --host: like a project name."""
# A Docker image reference: [host[:port]/]path[:tag][@digest]. Deliberately narrower than the
# distribution grammar where it matters: no whitespace, no shell metacharacters, no leading dash.
IMAGE_REF_RE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]{1,5})?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@sha256:[a-f0-9]{64})?$"
)


class Environment(StrEnum):
    PRODUCTION = "production"
    STAGING = "staging"
    PREVIEW = "preview"

    @property
    def suffix(self) -> str:
        """The short form used in file and container names (`shop-prod.json`, `codeb-shop-prod-blue`)."""
        return ENV_SUFFIX[self]

    @classmethod
    def parse(cls, value: str) -> Environment:
        try:
            return cls(value)
        except ValueError:
            by_suffix = {suffix: env for env, suffix in ENV_SUFFIX.items()}
            if value in by_suffix:
                return by_suffix[value]
            raise BadInput(
                f"Unknown environment {value!r}: expected one of production, staging, preview"
            ) from None


ENV_SUFFIX = {
    Environment.PRODUCTION: "prod",
    Environment.STAGING: "staging",
    Environment.PREVIEW: "preview",
}


class SlotName(StrEnum):
    BLUE = "blue"
    GREEN = "green"

    @property
    def other(self) -> SlotName:
        return SlotName.GREEN if self is SlotName.BLUE else SlotName.BLUE


class SlotState(StrEnum):
    EMPTY = "empty"
    DEPLOYED = "deployed"
    ACTIVE = "active"
    GRACE = "grace"


# fullmatch, not match: `$` also matches before a trailing newline, and a name with a newline
# would become a file name, a container name and a shell word.
def validate_project_name(name: str) -> str:
    if not isinstance(name, str) or not PROJECT_NAME_RE.fullmatch(name):
        shown = name if len(str(name)) <= 48 else str(name)[:45] + "..."
        raise BadInput(
            f"Invalid project name {shown!r}: use 1-40 characters a-z, 0-9 and '-', "
            "starting and ending with a letter or digit"
        )
    return name


def validate_image_ref(ref: str) -> str:
    if not isinstance(ref, str) or len(ref) > 255 or not IMAGE_REF_RE.fullmatch(ref):
        raise BadInput(
            f"Invalid image reference {ref!r}: expected [registry/]name[:tag] "
            "without spaces or shell characters"
        )
    return ref


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def to_iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def from_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class HealthRecord:
    ok: bool
    detail: str
    checked_at: datetime
    latency_ms: float | None = None


@dataclass(frozen=True)
class Slot:
    name: SlotName
    port: int
    state: SlotState = SlotState.EMPTY
    image: str | None = None
    container_id: str | None = None
    container_name: str | None = None
    deployed_at: datetime | None = None
    promoted_at: datetime | None = None
    grace_expires_at: datetime | None = None
    last_health: HealthRecord | None = None
    container_ids: tuple[tuple[str, str], ...] = ()
    """(host, container id) on each host of a project on several hosts or on a remote one;
    empty for a project on the local host only, whose container is `container_id`."""

    def emptied(self) -> Slot:
        return Slot(name=self.name, port=self.port)

    def container_on(self, host: str) -> str | None:
        """The id of this slot's container on `host`."""
        if not self.container_ids:
            return self.container_id if host == LOCAL_HOST else None
        return dict(self.container_ids).get(host)

    def with_(self, **changes) -> Slot:
        return replace(self, **changes)


LOCAL_HOST = "local"
"""The machine codeb runs on: every project's host unless config or --host says otherwise."""


@dataclass(frozen=True)
class ProjectSlots:
    """Both slots of one project in one environment: one file `slots/<project>-<suffix>.json`."""

    project: str
    environment: Environment
    blue: Slot
    green: Slot
    version: int = 0
    updated_at: datetime | None = None
    hosts: tuple[str, ...] = (LOCAL_HOST,)
    """Where the pair runs: each host has both slots' containers and its own proxy."""

    @property
    def local_only(self) -> bool:
        return self.hosts == (LOCAL_HOST,)

    def slot(self, name: SlotName) -> Slot:
        return self.blue if name is SlotName.BLUE else self.green

    def slots(self) -> tuple[Slot, Slot]:
        return (self.blue, self.green)

    def with_slot(self, slot: Slot) -> ProjectSlots:
        if slot.name is SlotName.BLUE:
            return replace(self, blue=slot)
        return replace(self, green=slot)

    def in_state(self, state: SlotState) -> Slot | None:
        for slot in self.slots():
            if slot.state is state:
                return slot
        return None

    @property
    def active(self) -> Slot | None:
        return self.in_state(SlotState.ACTIVE)

    @property
    def ports(self) -> tuple[int, int]:
        return (self.blue.port, self.green.port)

    def deploy_target(self) -> Slot:
        """The slot a deploy goes into: the one that is not active (blue for a new project)."""
        active = self.active
        if active is None:
            deployed = self.in_state(SlotState.DEPLOYED)
            # Re-deploying replaces a deployed slot rather than filling the other one.
            return deployed or self.blue
        return self.slot(active.name.other)


def container_name(project: str, environment: Environment, slot: SlotName) -> str:
    return f"codeb-{project}-{environment.suffix}-{slot.value}"


def slot_to_dict(slot: Slot) -> dict:
    data = asdict(slot)
    ids = data.pop("container_ids")
    if ids:  # only projects on remote or several hosts: other files stay as they were
        data["container_ids"] = dict(ids)
    data["name"] = slot.name.value
    data["state"] = slot.state.value
    for key in ("deployed_at", "promoted_at", "grace_expires_at"):
        data[key] = to_iso(getattr(slot, key))
    if slot.last_health is not None:
        data["last_health"] = {
            "ok": slot.last_health.ok,
            "detail": slot.last_health.detail,
            "checked_at": to_iso(slot.last_health.checked_at),
            "latency_ms": slot.last_health.latency_ms,
        }
    return data
