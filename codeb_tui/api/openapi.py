"""The OpenAPI 3.1 document, generated from the route table and the pydantic models (nothing
here is written by hand but the descriptions of the statuses)."""

from __future__ import annotations

import re
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, create_model
from pydantic.json_schema import models_json_schema

from codeb_tui.api import models

REF = "#/components/schemas/{model}"
_STATUS_TEXT = {
    400: "bad input: malformed JSON, a missing, unknown or mistyped field, an unknown tool",
    401: "missing, malformed, unknown or revoked API key",
    403: "the key's role may not do this (in this environment)",
    404: "unknown project (no slots) or endpoint",
    408: "the request body did not arrive in time",
    409: "refused transition (Run deploy first, No grace slot, ...) or the project's lock is "
         "held (the answer names the holder and since when)",
    413: "request body too large",
    429: "rate limited (Retry-After says when to come back)",
    502: "the world failed: image pull, health check or proxy",
    503: "the database cannot be asked right now",
    504: "still running after api.request_timeout; the operation goes on to its end",
}


@cache
def tool_calls() -> tuple[type[BaseModel], ...]:
    """One model per tool: `{"tool": "<name>", "params": <its params>}`."""
    return tuple(
        create_model(f"{''.join(w.capitalize() for w in tool.split('_'))}Call",
                     __config__=models.ToolCall.model_config,
                     tool=(Literal[tool], ...), params=(params, ...))
        for tool, params in models.TOOL_PARAMS.items())


def document(routes: Any, server_url: str) -> dict[str, Any]:
    wanted: set[type[BaseModel]] = {models.Ok, models.Error, *tool_calls()}
    for route in routes:
        wanted.update(route.answers)
        wanted.update(m for m in (route.body, route.query) if m is not None)
    ordered = sorted(wanted, key=lambda m: m.__name__)
    _, schemas = models_json_schema([(m, "serialization") for m in ordered], ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": "codeb API", "version": "1",
                 "description": "Blue-green deploys of Docker containers behind Caddy. Every "
                                "answer is {ok: true, result} or {ok: false, error}."},
        "servers": [{"url": server_url}],
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header",
                                           "name": "X-API-Key"}},
        },
    }


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _one_of(items: list[type[BaseModel]]) -> dict[str, Any]:
    return _ref(items[0]) if len(items) == 1 else {"oneOf": [_ref(m) for m in items]}


def _operation(route: Any) -> dict[str, Any]:
    doc = (route.handler.__doc__ or "").strip()
    op: dict[str, Any] = {"operationId": route.handler.__name__,
                          "summary": doc.splitlines()[0] if doc else route.path}
    if route.keyed:
        op["security"] = [{"apiKey": []}]
    in_path = re.findall(r"{(\w+)}", route.path)
    parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in in_path]
    if route.query is not None:
        schema = route.query.model_json_schema(ref_template=REF)
        for name, spec in schema.get("properties", {}).items():
            shown = "project" if name == "projectName" else name
            if in_path and name in ("projectName", "environment"):
                continue  # in the path
            parameters.append({"name": shown, "in": "query", "required": False, "schema": spec})
    if parameters:
        op["parameters"] = parameters
    if route.body is not None:
        body = _one_of(list(tool_calls())) if route.body is models.ToolCall else _ref(route.body)
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if route.answers:
        ok = {"allOf": [_ref(models.Ok),
                        {"properties": {"result": _one_of(list(route.answers))}}]}
        content: dict[str, Any] = {"application/json": {"schema": ok}}
        if route.streams:
            content["application/x-ndjson"] = {"schema": {
                "type": "string",
                "description": "with Accept: application/x-ndjson, an operation's events one "
                               "JSON object a line (as `codeb --json` prints them), then the "
                               "answer object"}}
        responses: dict[str, Any] = {"200": {"description": "done", "content": content}}
    else:
        responses = {"200": {"description": "ok", "content": {"application/json": {}}}}
    for status in route.errors:
        responses[str(status)] = {"description": _STATUS_TEXT[status], "content": {
            "application/json": {"schema": _ref(models.Error)}}}
    op["responses"] = responses
    return op
