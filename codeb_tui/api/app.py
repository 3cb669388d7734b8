"""The HTTP API: routes, each a thin call of the engine facade through tools.py.

`POST /api/tool` takes the call as CI has always sent it (`{"tool": "deploy", "params": {...}}`,
`X-API-Key`); `/api/v1/...` offers the same as resources. Every answer is
`{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`; with
`Accept: application/x-ndjson` an operation streams its events (as `codeb --json` prints them)
and ends with that answer. The route table (`ROUTES`) also generates the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from codeb_tui.api import models, tools
from codeb_tui.api.errors import ApiError, validation_message
from codeb_tui.api.limits import RateLimiter, caller_of, read_body
from codeb_tui.api.operations import TERMINAL, Operations, Running
from codeb_tui.domain import events
from codeb_tui.domain.access import Principal
from codeb_tui.domain.config import Config
from codeb_tui.engine.facade import Engine, dumps_event

log = logging.getLogger("codeb.api")
NDJSON = "application/x-ndjson"


@dataclass
class State:
    config: Config
    engine: Engine
    operations: Operations
    limiter: RateLimiter


def _state(request: Request) -> State:
    return request.state.codeb


# --- answers -------------------------------------------------------------------------------------


def ok(result: dict[str, Any]) -> JSONResponse:
    return JSONResponse(models.Ok(result=result).model_dump(mode="json"))


def error_body(exc: ApiError) -> dict[str, Any]:
    extra = {k: v for k, v in exc.extra.items() if k in models.Error.model_fields}
    return models.Error(error=str(exc), errorType=exc.error_type, **extra).model_dump(
        mode="json", exclude_none=True)


def error_response(exc: ApiError) -> JSONResponse:
    headers = {"Retry-After": str(exc.extra["retry_after"])} if "retry_after" in exc.extra else None
    return JSONResponse(error_body(exc), status_code=exc.status, headers=headers)


async def _envelope(s: State, principal: Principal, tool: str, params: Any,
                    terminal: events.Event | None) -> tuple[int, dict[str, Any]]:
    if isinstance(terminal, events.Finished):
        return 200, models.Ok(result=tools.result(tool, terminal)).model_dump(mode="json")
    if isinstance(terminal, events.Failed):
        failed = await tools.failure(s.engine, principal, tool, params, terminal)
        return failed.status, error_body(failed)
    return 500, error_body(ApiError(500, f"{tool} ended without an outcome", "InternalError"))


# --- the steps every keyed request takes ---------------------------------------------------------


def _principal(request: Request) -> Principal:
    """Who asks; a missing header is still an API-key principal, with an empty key, which the
    facade refuses ("Access Denied: an API key is required")."""
    s = _state(request)
    s.limiter.admit(caller_of(request))
    keys = request.headers.getlist("x-api-key")
    if len(keys) > 1:  # which one would count is anybody's guess: none does
        raise ApiError(400, "X-API-Key given more than once", "BadInput")
    principal = Principal.with_api_key(keys[0] if keys else "")
    request.scope["codeb.actor"] = principal.actor  # for the request log: never the key
    return principal


async def _json_body(request: Request, empty: Any = None) -> Any:
    """The body as JSON, whatever Content-Type says (CI's curl has always sent none)."""
    cfg = _state(request).config.api
    raw = await read_body(request, cfg.max_body_bytes, cfg.idle_timeout)
    if not raw.strip():
        if empty is not None:
            return empty
        raise ApiError(400, 'Request body is empty: expected a JSON object like {"tool": '
                            '"deploy", "params": {"projectName": "...", "image": "..."}}',
                       "BadInput")
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"Malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                       "BadInput") from None
    except UnicodeDecodeError:
        raise ApiError(400, "Malformed JSON: the body is not UTF-8 text", "BadInput") from None
    except (RecursionError, ValueError) as exc:
        raise ApiError(400, f"Malformed JSON: {exc}", "BadInput") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _wants_stream(request: Request) -> bool:
    return NDJSON in request.headers.get("accept", "")


async def _dispatch(request: Request, principal: Principal, tool: str, params: Any) -> Response:
    s = _state(request)
    if tool in models.OPERATIONS:
        running = s.operations.start(tools.start(s.engine, principal, tool, params))
        if _wants_stream(request):
            return await _stream(s, principal, tool, params, running)
        return await _await(s, principal, tool, params, running)
    try:
        async with asyncio.timeout(s.config.api.request_timeout):
            return ok(await tools.query(s.engine, principal, tool, params))
    except TimeoutError:
        raise ApiError(504, f"{tool} took longer than {s.config.api.request_timeout:g} s "
                            "(api.request_timeout)", "Timeout") from None


async def _await(s: State, principal: Principal, tool: str, params: Any,
                 running: Running) -> Response:
    timeout = s.config.api.request_timeout
    try:
        async with asyncio.timeout(timeout):
            terminal = await running.finished()
    except TimeoutError:
        first = running.events[0]
        raise ApiError(504, f"{tool} is still running after {timeout:g} s (api.request_timeout); "
                            "it goes on to its end: see GET /api/v1/history", "Timeout",
                       operationId=first.operation_id) from None
    status, body = await _envelope(s, principal, tool, params, terminal)
    return JSONResponse(body, status_code=status)


async def _stream(s: State, principal: Principal, tool: str, params: Any,
                  running: Running) -> Response:
    """Events as NDJSON. The status waits for the first step: by then the input, the key and
    the lock have been checked, so a refusal still has its own status (401, 409, ...)."""
    follow = running.follow()
    head: list[events.Event] = []
    async for event in follow:
        head.append(event)
        if isinstance(event, (events.StepStarted, *TERMINAL)):
            break
    status, final = 200, None
    if not head or head[-1] is running.terminal:  # refused, or ended without an outcome
        status, final = await _envelope(s, principal, tool, params, running.terminal)

    async def lines() -> AsyncIterator[str]:
        try:
            for event in head:
                yield dumps_event(event) + "\n"
            answer = final
            if answer is None:
                async for event in follow:
                    yield dumps_event(event) + "\n"
                _, answer = await _envelope(s, principal, tool, params, running.terminal)
            yield json.dumps(answer) + "\n"
        finally:
            await follow.aclose()

    return StreamingResponse(lines(), status_code=status, media_type=NDJSON)


def endpoint(handler: Callable[[Request], Awaitable[Response]]):
    """An ApiError anywhere in `handler` becomes its answer."""
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc)
    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


def _query_params(request: Request, tool: str, **fixed: Any) -> Any:
    """A query string as the tool's params (`project` names the project)."""
    data: dict[str, Any] = {}
    for name, value in request.query_params.multi_items():
        key = "projectName" if name == "project" else name
        if key in data:
            raise ApiError(400, f"query.{name}: given twice", "BadInput")
        data[key] = value
    data.update(fixed)
    try:
        return models.TOOL_PARAMS[tool].model_validate(data, strict=False)
    except ValidationError as exc:
        raise ApiError(400, validation_message(exc, "query"), "BadInput") from None


# --- endpoints -----------------------------------------------------------------------------------


@endpoint
async def call_tool(request: Request) -> Response:
    """Run a tool: the call CI makes."""
    principal = _principal(request)
    tool, params = tools.parse_call(await _json_body(request))
    return await _dispatch(request, principal, tool, params)


@endpoint
async def list_projects(request: Request) -> Response:
    """Every project and environment with its slots (from the registry, without live checks)."""
    principal = _principal(request)
    return await _dispatch(request, principal, "projects", None)


@endpoint
async def project_status(request: Request) -> Response:
    """One project+environment's slots, with live health unless `live=false`."""
    principal = _principal(request)
    p = request.path_params
    params = _query_params(request, "slot_status", projectName=p["project"],
                           environment=p["env"])
    return await _dispatch(request, principal, "slot_status", params)


def _project_operation(tool: str, body: type[BaseModel] | None):
    async def handler(request: Request) -> Response:
        principal = _principal(request)
        p = request.path_params
        data = await _json_body(request, empty={})
        if not isinstance(data, dict):
            raise ApiError(400, "body: expected a JSON object", "BadInput")
        if body is not None:
            try:
                given = body.model_validate(data).model_dump()
            except ValidationError as exc:
                raise ApiError(400, validation_message(exc, "body"), "BadInput") from None
        elif data:
            raise ApiError(400, f"body.{next(iter(data))}: unknown key ({tool} takes no body)",
                           "BadInput")
        else:
            given = {}
        params = tools.parse_params(tool, {"projectName": p["project"], "environment": p["env"],
                                           **given}, "path")
        return await _dispatch(request, principal, tool, params)
    handler.__name__ = f"{tool}_project"
    handler.__doc__ = f"{tool.capitalize()} the project in this environment."
    return endpoint(handler)


@endpoint
async def ports(request: Request) -> Response:
    """Port ranges, allocations and conflicts."""
    principal = _principal(request)
    return await _dispatch(request, principal, "ports", _query_params(request, "ports"))


@endpoint
async def history(request: Request) -> Response:
    """The audit trail, newest first."""
    principal = _principal(request)
    return await _dispatch(request, principal, "history", _query_params(request, "history"))


async def healthz(request: Request) -> Response:
    """Liveness: the server answers (no key needed, nothing about the projects)."""
    return ok(models.Healthz(serving=True).model_dump())


async def openapi(request: Request) -> Response:
    from codeb_tui.api.openapi import document  # only when asked for

    return JSONResponse(document(ROUTES, _state(request).config.api.url))


# --- the route table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiRoute:
    method: str
    path: str
    handler: Callable[[Request], Awaitable[Response]]
    answers: tuple[type[BaseModel], ...] = ()
    """The models of `result` in `{"ok": true, "result": ...}`."""
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = (400, 401, 403, 429)
    streams: bool = False
    keyed: bool = True


_OPERATION_ERRORS = (400, 401, 403, 404, 408, 409, 413, 429, 502, 504)
ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute("POST", "/api/tool", call_tool,
             (models.DeployResult, models.SwitchResult, models.CleanupResult,
              models.SlotStatusResult, models.PortsResult, models.ReconcileResult,
              models.HistoryResult),
             body=models.ToolCall, errors=_OPERATION_ERRORS, streams=True),
    ApiRoute("GET", "/api/v1/projects", list_projects, (models.ProjectsResult,)),
    ApiRoute("GET", "/api/v1/projects/{project}/{env}", project_status,
             (models.SlotStatusResult,), query=models.SlotStatusParams,
             errors=(400, 401, 403, 404, 429)),
    ApiRoute("POST", "/api/v1/projects/{project}/{env}/deploy",
             _project_operation("deploy", models.DeployBody), (models.DeployResult,),
             body=models.DeployBody, errors=_OPERATION_ERRORS, streams=True),
    ApiRoute("POST", "/api/v1/projects/{project}/{env}/promote",
             _project_operation("promote", None), (models.SwitchResult,),
             errors=_OPERATION_ERRORS, streams=True),
    ApiRoute("POST", "/api/v1/projects/{project}/{env}/rollback",
             _project_operation("rollback", None), (models.SwitchResult,),
             errors=_OPERATION_ERRORS, streams=True),
    ApiRoute("GET", "/api/v1/ports", ports, (models.PortsResult,)),
    ApiRoute("GET", "/api/v1/history", history, (models.HistoryResult,),
             query=models.HistoryParams, errors=(400, 401, 403, 429, 503)),
    ApiRoute("GET", "/healthz", healthz, (models.Healthz,), keyed=False, errors=()),
    ApiRoute("GET", "/api/openapi.json", openapi, keyed=False, errors=()),
)


# --- the application -----------------------------------------------------------------------------


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class RequestLog:
    """One log line per request: method, path, status, time and the key's public label. Never
    a header (uvicorn's access log is off for that reason)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = _CONTROL.sub("?", scope.get("path", ""))[:200]
            log.info("%s %s %s %.0f ms %s", scope.get("method"), path, status or "-",
                     (time.perf_counter() - started) * 1000, scope.get("codeb.actor", "-"))


async def _not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    path = _CONTROL.sub("?", request.url.path)[:200]
    message = {404: f"No such endpoint: {request.method} {path} (see /api/openapi.json)",
               405: f"Method {request.method} not allowed here"}.get(status, "HTTP error")
    return error_response(ApiError(status, message, "NotFound" if status == 404 else "BadInput"))


async def _internal(request: Request, exc: Exception) -> Response:
    log.error("internal error on %s %s: %s: %s", request.method,
              _CONTROL.sub("?", request.url.path)[:200], type(exc).__name__, exc)
    return error_response(ApiError(500, f"internal error: {type(exc).__name__}", "InternalError"))


def create_app(config: Config, engine: Engine | None = None) -> Starlette:
    """The ASGI app. Its lifespan creates the process's one Engine (unless given one) and, at
    shutdown, waits for every running operation before closing it."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        state = State(config, engine or Engine(config), Operations(),
                      RateLimiter(config.api.rate_limit_per_minute))
        try:
            yield {"codeb": state}
        finally:
            if state.operations.count:
                log.info("waiting for %d running operation(s) to end", state.operations.count)
            await state.operations.wait()
            if engine is None:
                await state.engine.aclose()

    routes = [Route(r.path, r.handler, methods=[r.method]) for r in ROUTES]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _not_found, Exception: _internal})
    app.add_middleware(RequestLog)
    return app
