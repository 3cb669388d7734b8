"""Who may do what, checked against the database's API keys (docs/access.md).

The facade calls `admit` for every call a front end makes; nothing else checks access.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from datetime import datetime

from codeb_tui.domain.access import (
    KEY_PREFIX,
    KEY_RE,
    PERMISSIONS,
    Principal,
    PrincipalKind,
    _environments,
    _refusal,
    hash_api_key,
    is_allowed,
)
from codeb_tui.domain.errors import AccessDenied
from codeb_tui.store.base import ApiKeyRow, Store, StoreError


async def authorize(store: Store | None, api_key: str | None, action: str,
                    environment: str | None = None) -> Principal:
    """The principal of `api_key` when its role may perform `action` in `environment` (None or
    "*" mean every environment: a member's `cleanup` without --env is refused because it would
    cover production). `store` must be connected. Raises `AccessDenied` for a missing, malformed,
    unknown or revoked key, a role that does not allow the action, or a store that cannot be
    asked ("Access Denied: cannot verify the API key: <reason>")."""
    if action not in PERMISSIONS:
        raise AccessDenied(f"Access Denied: unknown action {action!r}")
    _environments(environment)  # an unknown environment is refused before the lookup
    key = (api_key or "").strip()
    if not key:
        raise AccessDenied("Access Denied: an API key is required (--api-key or $CODEB_API_KEY)")
    m = KEY_RE.fullmatch(key)
    if m is None:
        raise AccessDenied("Access Denied: malformed API key (expected cb_<8 characters>_<32 "
                           "characters>)")
    prefix = m.group(1)
    if store is None:
        raise AccessDenied("Access Denied: cannot verify the API key: no database")
    try:
        row: ApiKeyRow | None = await store.find_api_key(hash_api_key(key))
    except StoreError as exc:
        raise AccessDenied(f"Access Denied: cannot verify the API key: {exc}") from exc
    except Exception as exc:  # a driver error that escaped the store's wrapping
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise AccessDenied(f"Access Denied: cannot verify the API key: {reason}") from exc
    if row is None or not hmac.compare_digest(row.prefix, prefix):
        raise AccessDenied(f"Access Denied: unknown API key {KEY_PREFIX}{prefix}_...")
    if row.revoked_at is not None:
        raise AccessDenied(f"Access Denied: API key {KEY_PREFIX}{prefix} (team {row.team}) was "
                           f"revoked at {_when(row.revoked_at)}")
    principal = Principal.from_key_row(row.team, row.role, row.prefix, key_name=row.name,
                                       key_id=row.id)
    if not is_allowed(principal.role, action, environment):
        raise AccessDenied(_refusal(principal, action, environment), principal=principal)
    return principal


def _when(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")




async def admit(principal: Principal, action: str, environment: str | None,
                store: Callable[[], Awaitable[Store]]) -> Principal:
    """The principal as checked for `action` in `environment` (None: every environment).

    The local operator may do everything; an SSH operator's role is checked against the
    matrix; an API key is looked up in the database (`store` connects on demand). Raises
    AccessDenied; a denial of a known principal carries it, so the audit row names its team."""
    if principal.kind is PrincipalKind.LOCAL:
        return principal
    if principal.kind is PrincipalKind.OPERATOR:
        if action not in PERMISSIONS:
            raise AccessDenied(f"Access Denied: unknown action {action!r}")
        if principal.role is None or not is_allowed(principal.role, action, environment):
            raise AccessDenied(_refusal(principal, action, environment), principal=principal)
        return principal
    if not KEY_RE.fullmatch((principal.api_key or "").strip()):
        # Refused on its shape alone (missing, malformed): no database is opened or created.
        await authorize(None, principal.api_key, action, environment)
    try:
        connected = await store()
    except StoreError as exc:
        raise AccessDenied(f"Access Denied: cannot verify the API key: {exc}") from None
    return await authorize(connected, principal.api_key, action, environment)
