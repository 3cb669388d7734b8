"""Each tool as one call of the engine facade, and its answer in the API's words.

Operations (deploy, promote, rollback, cleanup) are event streams; queries answer at once.
The facade checks the principal on every call; nothing here decides who may do what.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from itertools import groupby
from typing import Any

from pydantic import BaseModel, ValidationError

from codeb_tui.api import models
from codeb_tui.api.errors import ApiError, from_exception, status_for, validation_message
from codeb_tui.domain import events
from codeb_tui.domain.access import Principal
from codeb_tui.domain.errors import CodebError
from codeb_tui.engine.facade import Engine, StoreError


def parse_call(data: Any) -> tuple[str, BaseModel]:
    """The tool and its validated params from a decoded `/api/tool` body."""
    try:
        call = models.ToolCall.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, validation_message(exc), "BadInput") from None
    if call.tool not in models.TOOL_PARAMS:
        raise ApiError(400, f"Unknown tool {call.tool[:40]!r}: expected one of "
                            f"{', '.join(models.TOOLS)}", "BadInput", tools=list(models.TOOLS))
    return call.tool, parse_params(call.tool, call.params)


def parse_params(tool: str, data: Any, where: str = "params") -> BaseModel:
    try:
        return models.TOOL_PARAMS[tool].model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, validation_message(exc, where), "BadInput") from None


# --- operations ----------------------------------------------------------------------------------


def start(engine: Engine, principal: Principal, tool: str,
          params: Any) -> AsyncIterator[events.Event]:
    if tool == "deploy":
        return engine.deploy(principal, params.projectName, params.image, params.environment,
                             confirm_grace=params.confirmGrace, hosts=params.hosts)
    if tool in ("promote", "rollback"):
        return getattr(engine, tool)(principal, params.projectName, params.environment)
    assert tool == "cleanup", tool
    return engine.cleanup(principal, params.projectName, params.environment, force=params.force,
                          slot=params.slot)


def result(tool: str, finished: events.Finished) -> dict[str, Any]:
    """The result of a finished operation, as the API names it."""
    done = finished.result
    common = {"operationId": finished.operation_id, "summary": finished.summary,
              "warnings": finished.warnings}
    if tool == "deploy":
        answer: BaseModel = models.DeployResult(
            previewUrl=done["preview_url"], slot=done["slot"], port=done["port"],
            image=done["image"], **common)
    elif tool in ("promote", "rollback"):
        answer = models.SwitchResult(productionUrl=done["url"], slot=done["slot"],
                                     port=done["port"], image=done.get("image"),
                                     graceSlot=done.get("grace_slot"), **common)
    else:
        answer = models.CleanupResult(cleaned=done.get("cleaned", []), **common)
    return answer.model_dump(mode="json")


async def failure(engine: Engine, principal: Principal, tool: str, params: Any,
                  failed: events.Failed) -> ApiError:
    """A failed operation as an answer. A switch refused because the project has no slots at
    all is a 404: the project is unknown, not in the wrong state."""
    status = status_for(failed.error_type, failed.error)
    if status == 409 and failed.error_type == "TransitionRefused" and tool in ("promote",
                                                                                "rollback"):
        try:
            known = await engine.status(principal, params.projectName, params.environment,
                                        live=False)
        except (CodebError, StoreError):
            known = [True]  # cannot tell: keep the engine's answer
        if not known:
            status = 404
    return ApiError(status, failed.error, failed.error_type, operationId=failed.operation_id)


# --- queries -------------------------------------------------------------------------------------


async def query(engine: Engine, principal: Principal, tool: str, params: Any) -> dict[str, Any]:
    try:
        answer = await _QUERIES[tool](engine, principal, params)
    except (CodebError, StoreError) as exc:
        raise from_exception(exc) from None
    return answer if isinstance(answer, dict) else answer.model_dump(mode="json")


# Slots are passed through as the engine words them (`to_json()`), the shape of
# models.SlotStatusResult, without a round trip through the models: 1,200 of them cost more to
# validate than to read.


async def slot_status(engine: Engine, principal: Principal,
                      params: models.SlotStatusParams) -> dict[str, Any]:
    slots = await engine.status(principal, params.projectName, params.environment,
                                live=params.live)
    if params.projectName is not None and not slots:
        where = f" ({params.environment})" if params.environment else ""
        raise ApiError(404, f"Unknown project {params.projectName}{where}: it has no slots. "
                            "Run deploy first", "NotFound")
    empty = await engine.proxy_empty(principal) if params.live else False
    return {"slots": [slot.to_json() for slot in slots], "proxy_empty": empty}


async def projects(engine: Engine, principal: Principal, params: Any) -> dict[str, Any]:
    """Every project+environment with its slots, from the registry alone (fast)."""
    slots = await engine.status(principal, live=False)
    key = lambda s: (s.project, s.environment.value)  # noqa: E731
    grouped = groupby(sorted(slots, key=key), key=lambda s: (s.project, s.environment))
    return {"projects": [{"project": project, "environment": env.value,
                          "slots": [slot.to_json() for slot in group]}
                         for (project, env), group in grouped]}


async def ports(engine: Engine, principal: Principal, params: models.PortsParams
                ) -> models.PortsResult:
    return models.PortsResult.model_validate((await engine.ports(principal, params.host)).to_json())


async def reconcile(engine: Engine, principal: Principal,
                    params: models.ReconcileParams) -> models.ReconcileResult:
    report = await engine.reconcile(principal, projects=params.projects, live=params.live)
    return models.ReconcileResult.model_validate(report.to_json())


async def history(engine: Engine, principal: Principal,
                  params: models.HistoryParams) -> models.HistoryResult:
    records = await engine.history(principal, project=params.projectName, action=params.action,
                                   team=params.team, since=params.since, until=params.until,
                                   limit=params.limit)
    return models.HistoryResult(records=[models.HistoryEntry.model_validate(r) for r in records])


_QUERIES = {"slot_status": slot_status, "ports": ports, "reconcile": reconcile,
            "history": history, "projects": projects}
