"""What the API takes and answers, as pydantic models: requests are validated with them and the
OpenAPI document is generated from them (openapi.py).

Requests refuse unknown keys (a misspelt `enviroment` is an error, not production) and take
strict types. The names are those CI already uses (`projectName`, `previewUrl`); the engine's
own words (`codeb --json`) are kept where a record is passed through whole (slots, events).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from codeb_tui.domain.model import Environment, SlotName
from codeb_tui.domain.status import SlotStatus

# Lengths bound what reaches the engine; the engine itself says what a valid name is.
ProjectName = Annotated[str, Field(min_length=1, max_length=64, examples=["workb"],
                                   description="lower-case letters, digits and '-'")]
# Checked by the engine, in its words ("Unknown environment 'qa': expected one of ...").
EnvironmentName = Annotated[str, Field(max_length=20, json_schema_extra={
    "enum": [env.value for env in Environment]})]
ImageRef = Annotated[str, Field(min_length=1, max_length=255,
                                examples=["127.0.0.1:5000/workb:3f2c1e0"])]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Answer(BaseModel):
    model_config = ConfigDict(frozen=True)


# --- requests: one params model per tool ---------------------------------------------------------


class DeployParams(_Request):
    projectName: ProjectName
    image: ImageRef
    environment: EnvironmentName = "production"
    confirmGrace: bool = Field(False, description="deploy into a grace slot (destroys the "
                                                  "rollback target)")
    hosts: list[Annotated[str, Field(max_length=63)]] | None = Field(
        None, max_length=32, description="hosts of a first deploy (default: the config's "
                                         "projects.<name>.hosts, else local)")


class SwitchParams(_Request):
    """promote and rollback."""

    projectName: ProjectName
    environment: EnvironmentName = "production"


class CleanupParams(_Request):
    projectName: ProjectName | None = None
    environment: EnvironmentName | None = Field(None, description="default: every environment")
    force: bool = False
    slot: Literal["blue", "green"] | None = None


class SlotStatusParams(_Request):
    projectName: ProjectName | None = None
    environment: EnvironmentName | None = None
    live: bool = Field(True, description="ask Docker and the slots' health too")


class PortsParams(_Request):
    host: Annotated[str, Field(max_length=63)] | None = Field(
        None, description="whose containers and listening sockets (default: local)")


class ReconcileParams(_Request):
    """A report only: repairs and pruning are for an operator at the host."""

    projects: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, max_length=100, description="names or shell patterns")
    live: bool = True


class HistoryParams(_Request):
    projectName: ProjectName | None = None
    action: Annotated[str, Field(max_length=40)] | None = None
    team: Annotated[str, Field(max_length=40)] | None = None
    # ISO 8601 text in JSON; strict mode would refuse it otherwise.
    since: Annotated[datetime, Field(strict=False)] | None = None
    until: Annotated[datetime, Field(strict=False)] | None = None
    limit: int = Field(100, ge=1, le=1000)


class DeployBody(_Request):
    """POST /api/v1/projects/{project}/{env}/deploy: the project and environment are in the path."""

    image: ImageRef
    confirmGrace: bool = False


TOOL_PARAMS: dict[str, type[_Request]] = {
    "deploy": DeployParams,
    "promote": SwitchParams,
    "rollback": SwitchParams,
    "cleanup": CleanupParams,
    "slot_status": SlotStatusParams,
    "ports": PortsParams,
    "reconcile": ReconcileParams,
    "history": HistoryParams,
}
TOOLS = tuple(TOOL_PARAMS)
OPERATIONS = ("deploy", "promote", "rollback", "cleanup")
"""The tools that change something: event streams, and run to their end whatever the client."""


class ToolCall(_Request):
    """POST /api/tool, as CI sends it. `params` is checked against the tool's own model."""

    tool: Annotated[str, Field(json_schema_extra={"enum": list(TOOLS)})]
    params: dict[str, Any] = Field(default_factory=dict)


# --- answers -------------------------------------------------------------------------------------


class OperationAnswer(_Answer):
    operationId: str
    summary: str
    warnings: list[str] = []


class DeployResult(OperationAnswer):
    previewUrl: str
    slot: SlotName
    port: int
    image: str


class SwitchResult(OperationAnswer):
    """promote and rollback."""

    productionUrl: str
    slot: SlotName
    port: int
    image: str | None
    graceSlot: SlotName | None = None


class CleanupResult(OperationAnswer):
    cleaned: list[dict[str, Any]]


class _SlotBase(_Answer):
    def to_status(self) -> SlotStatus:
        """Back to the engine's record (a remote `codeb status` prints it as a local one)."""
        values = self.model_dump()
        for name in _TIMES:
            values[name] = datetime.fromisoformat(values[name]) if values[name] else None
        values["hosts"] = tuple(self.hosts)  # HostHealth records as validated, not dumped
        return SlotStatus(**values)


def _slot_model() -> type[_SlotBase]:
    """One slot in the words of `codeb status --json` (`SlotStatus.to_json()`): its fields,
    enums as their values and times as ISO text; the monotonic check time stays inside."""
    hints = get_type_hints(SlotStatus)
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(SlotStatus):
        kind = hints[field.name]
        if field.name == "checked_at":
            continue
        if field.name in _TIMES:
            kind = Annotated[str, Field(json_schema_extra={"format": "date-time"})] | None
        fields[field.name] = (kind, ...)
    return create_model("Slot", __base__=_SlotBase, **fields)


_TIMES = ("deployed_at", "grace_expires_at")
Slot = _slot_model()


class SlotStatusResult(_Answer):
    slots: list[Slot]
    proxy_empty: bool = Field(False, description="Caddy answers without codeb's routes")


class ProjectEntry(_Answer):
    project: str
    environment: Environment
    slots: list[Slot]


class ProjectsResult(_Answer):
    projects: list[ProjectEntry]


class PortPair(_Answer):
    blue: int
    green: int
    project: str | None
    listening: list[int]
    containers: list[str]


class EnvironmentPorts(_Answer):
    environment: Environment
    range: tuple[int, int]
    used_pairs: list[PortPair]
    free_pairs: int


class PortConflict(_Answer):
    port: int
    kind: str
    detail: str


class PortsResult(_Answer):
    environments: list[EnvironmentPorts]
    conflicts: list[PortConflict]


class ReconcileResult(_Answer):
    """As `codeb reconcile --json` prints it."""

    drift: list[dict[str, Any]]
    summary: dict[str, Any]


class HistoryEntry(_Answer):
    """One row of the audit trail."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    operation_id: str
    actor: str
    team: str | None
    action: str
    project: str | None
    environment: str | None
    from_state: str | None
    to_state: str | None
    result: str
    duration_ms: float
    created_at: datetime
    detail: dict[str, Any]


class HistoryResult(_Answer):
    records: list[HistoryEntry]


class Healthz(_Answer):
    serving: bool


class Ok(_Answer):
    ok: Literal[True] = True
    result: dict[str, Any]


class Error(_Answer):
    ok: Literal[False] = False
    error: str
    errorType: str | None = None
    operationId: str | None = None
    tools: list[str] | None = Field(None, description="with an unknown tool: the known ones")
