"""From the engine's refusals and failures to HTTP statuses, and from a pydantic validation
error to one line naming the field. The words are always the engine's own."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from codeb_tui.domain.errors import CodebError
from codeb_tui.engine.facade import StoreError

# error_type (the class name a Failed event carries) -> status
_STATUS_BY_TYPE = {
    "BadInput": 400,
    "ConfigError": 400,
    "StoreRefused": 400,
    "TransitionRefused": 409,
    "LockHeld": 409,
    "ImageNotFound": 502,
    "HealthCheckFailed": 502,
    "ProxyApplyFailed": 502,
    "OperationFailed": 502,
    "PortRangeFull": 503,
    "StoreError": 503,
    "RegistryCorrupt": 500,
}


class ApiError(Exception):
    """An answer other than 2xx: `{"ok": false, "error": message}` with `status`."""

    def __init__(self, status: int, message: str, error_type: str | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.extra = extra


def status_for(error_type: str, message: str) -> int:
    """The status of an engine error by its class name and words."""
    if error_type == "AccessDenied":
        # The one class covers three cases; its message says which (docs/access.md, "Checks").
        if message.startswith("Access Denied: role "):
            return 403
        if message.startswith("Access Denied: cannot verify"):
            return 503  # the database is down: retry later, the key may be fine
        return 401
    return _STATUS_BY_TYPE.get(error_type, 500)


def from_exception(exc: CodebError | StoreError) -> ApiError:
    """What a query raised, as an answer."""
    kind = type(exc).__name__
    if isinstance(exc, StoreError) and kind not in _STATUS_BY_TYPE:
        kind = "StoreError"
    return ApiError(status_for(kind, str(exc)), " ".join(str(exc).split()), kind)


_REASONS = {
    "missing": "required",
    "extra_forbidden": "unknown key",
    "string_type": "expected a string",
    "bool_type": "expected true or false",
    "int_type": "expected an integer",
    "dict_type": "expected an object",
    "model_type": "expected an object",
    "list_type": "expected a list",
    "literal_error": "expected one of {expected}",
    "string_too_short": "expected a non-empty string",
    "string_too_long": "longer than {max_length} characters",
    "too_long": "more than {max_length} items",
    "greater_than_equal": "must be {ge} or more",
    "less_than_equal": "must be {le} or less",
    "datetime_from_date_parsing": "expected an ISO 8601 time",
    "datetime_parsing": "expected an ISO 8601 time",
    "datetime_type": "expected an ISO 8601 time",
}


def validation_message(error: ValidationError, where: str = "") -> str:
    """The first problem as `params.projectName: required` (and how many more there are)."""
    problems = error.errors()
    first = problems[0]
    key = ".".join([where] * bool(where) + [str(part) for part in first["loc"]]) or "body"
    template = _REASONS.get(first["type"])
    reason = (template.format(**(first.get("ctx") or {})) if template
              else " ".join(first["msg"].split()))
    if first["type"].endswith("_type") and first["type"] != "missing":
        reason += f", got {_shown(first.get('input'))}"
    more = len(problems) - 1
    return f"{key}: {reason}" + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def _shown(value: Any, limit: int = 60) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
