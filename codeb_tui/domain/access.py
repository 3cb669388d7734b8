"""Teams, API keys and who may do what (docs/access.md).

A key is `cb_<prefix>_<secret>`: 8 characters `[a-z0-9]` that name the key (shown in lists,
used to revoke it) and 32 characters `[A-Za-z0-9]` (about 190 bits) from `secrets`. The database
keeps only the SHA-256 hex digest of the whole key and its prefix; the key itself is shown once,
when it is created, and never again.

Every key belongs to one team and has one role. What a role may do is data (`PERMISSIONS`):
action -> role -> the environments in which the role may perform it. `authorize()` is the one
check (`codeb_tui.engine.access.authorize`) raises `AccessDenied` (exit 2, "Access Denied: ...")
or returns the `Principal`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from dataclasses import dataclass, field
from enum import StrEnum

from codeb_tui.domain.errors import AccessDenied, BadInput
from codeb_tui.domain.model import Environment

__all__ = [
    "ACTIONS",
    "PERMISSIONS",
    "ROLES",
    "AccessDenied",
    "NewApiKey",
    "Principal",
    "PrincipalKind",
    "allowed_environments",
    "generate_api_key",
    "hash_api_key",
    "is_allowed",
    "key_prefix",
    "matrix_markdown",
    "validate_key_name",
    "validate_role",
    "validate_team_name",
]

KEY_PREFIX = "cb_"
PREFIX_LENGTH = 8
SECRET_LENGTH = 32
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits
KEY_RE = re.compile(rf"^cb_([a-z0-9]{{{PREFIX_LENGTH}}})_([A-Za-z0-9]{{{SECRET_LENGTH}}})$")
_PREFIX_ARG_RE = re.compile(rf"^(?:cb_)?([a-z0-9]{{{PREFIX_LENGTH}}})(?:_.*)?$")
TEAM_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")  # like project names

ROLES = ("admin", "member", "viewer")  # most to least powerful

_EVERY = frozenset(env.value for env in Environment)
_OUTSIDE_PRODUCTION = _EVERY - {Environment.PRODUCTION.value}

# action -> what it is (the command it guards)
ACTIONS: dict[str, str] = {
    "status": "codeb status: slots, states, health",
    "ports": "codeb ports: port ranges and allocations",
    "history": "deployment and audit history",
    "deploy": "codeb deploy",
    "promote": "codeb promote",
    "rollback": "codeb rollback",
    "cleanup": "codeb cleanup (with --force too)",
    "reconcile": "codeb reconcile: report differences only",
    "reconcile.repair": "codeb reconcile --repair",
    "reconcile.prune": "codeb reconcile --prune",
    "db.status": "codeb db status",
    "db.migrate": "codeb db migrate",
    "team.list": "codeb team list",
    "team.create": "codeb team create",
    "apikey.list": "codeb apikey list",
    "apikey.create": "codeb apikey create",
    "apikey.revoke": "codeb apikey revoke",
    "host.check": "codeb host list / check: hosts, reachability, versions",
    "host.trust": "codeb host trust: record a host's SSH key in known_hosts",
}

# action -> role -> environments where that role may perform it; a role that is absent may not.
# Actions that concern no environment (teams, keys, the database) are granted in _EVERY.
PERMISSIONS: dict[str, dict[str, frozenset[str]]] = {
    "status": {"admin": _EVERY, "member": _EVERY, "viewer": _EVERY},
    "ports": {"admin": _EVERY, "member": _EVERY, "viewer": _EVERY},
    "history": {"admin": _EVERY, "member": _EVERY, "viewer": _EVERY},
    "deploy": {"admin": _EVERY, "member": _EVERY},
    "promote": {"admin": _EVERY, "member": _EVERY},
    "rollback": {"admin": _EVERY, "member": _EVERY},
    "cleanup": {"admin": _EVERY, "member": _OUTSIDE_PRODUCTION},
    "reconcile": {"admin": _EVERY, "member": _EVERY},
    "reconcile.repair": {"admin": _EVERY},
    "reconcile.prune": {"admin": _EVERY},
    "db.status": {"admin": _EVERY, "member": _EVERY},
    "db.migrate": {"admin": _EVERY},
    "team.list": {"admin": _EVERY},
    "team.create": {"admin": _EVERY},
    "apikey.list": {"admin": _EVERY},
    "apikey.create": {"admin": _EVERY},
    "apikey.revoke": {"admin": _EVERY},
    "host.check": {"admin": _EVERY, "member": _EVERY, "viewer": _EVERY},
    "host.trust": {"admin": _EVERY},
}


class PrincipalKind(StrEnum):
    LOCAL = "local"
    """The operator at a shell on the deploy host: may do everything (the Docker socket is
    theirs anyway)."""
    API_KEY = "apikey"
    """A caller with an API key: its team and role come from the database, checked each time."""
    OPERATOR = "operator"
    """An operator the console's SSH server let in by public key, with the role config gives."""


@dataclass(frozen=True)
class Principal:
    """Who is asking. Every front end builds one and hands it to every engine call; the engine
    facade is the one place that checks it (`codeb_tui.engine.access.admit`)."""

    kind: PrincipalKind
    name: str
    """The OS user, the SSH operator's name, or for a key its label `cb_<prefix>`."""
    team: str | None = None
    role: str | None = None
    """None for the local operator (every right) and for an API key not yet looked up."""
    prefix: str = ""
    """An API key's 8-character prefix (without "cb_")."""
    key_name: str = ""
    key_id: int | None = None
    api_key: str | None = field(default=None, repr=False, compare=False)
    """The key as given, to be verified; never shown, never logged."""

    @classmethod
    def local(cls, user: str) -> Principal:
        return cls(PrincipalKind.LOCAL, user)

    @classmethod
    def with_api_key(cls, key: str) -> Principal:
        """A caller presenting `key` (checked by the engine on every call, refused if empty or
        malformed)."""
        m = _PREFIX_ARG_RE.match(key.strip()) if key else None
        prefix = m.group(1) if m else ""
        return cls(PrincipalKind.API_KEY, f"{KEY_PREFIX}{prefix}" if prefix else "apikey",
                   prefix=prefix, api_key=key)

    @classmethod
    def from_key_row(cls, row_team: str, row_role: str, prefix: str, key_name: str = "",
                     key_id: int | None = None) -> Principal:
        """A verified key's principal."""
        return cls(PrincipalKind.API_KEY, f"{KEY_PREFIX}{prefix}", team=row_team, role=row_role,
                   prefix=prefix, key_name=key_name, key_id=key_id)

    @classmethod
    def operator(cls, name: str, team: str | None, role: str) -> Principal:
        return cls(PrincipalKind.OPERATOR, name, team=team, role=validate_role(role))

    @property
    def key_label(self) -> str:
        return f"{KEY_PREFIX}{self.prefix}"

    @property
    def actor(self) -> str:
        """For audit rows and lock holders: the OS user, `apikey:cb_<prefix>` or
        `ssh:<operator>` (the team goes in the row's team column)."""
        if self.kind is PrincipalKind.API_KEY:
            return f"apikey:{self.key_label}" if self.prefix else "apikey:?"
        if self.kind is PrincipalKind.OPERATOR:
            return f"ssh:{self.name}"
        return self.name

    def may(self, action: str, environment: str | None = None) -> bool:
        """Whether this principal's role allows `action` (the local operator may do all).
        For the console to offer or hide actions; the facade still checks every call."""
        if self.kind is PrincipalKind.LOCAL:
            return True
        return self.role is not None and is_allowed(self.role, action, environment)


@dataclass(frozen=True)
class NewApiKey:
    key: str = field(repr=False)  # shown once, never stored, never in a repr or log
    prefix: str
    key_hash: str


# --- keys --------------------------------------------------------------------------------------


def generate_api_key() -> NewApiKey:
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_LENGTH))
    secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(SECRET_LENGTH))
    key = f"{KEY_PREFIX}{prefix}_{secret}"
    return NewApiKey(key=key, prefix=prefix, key_hash=hash_api_key(key))


def hash_api_key(key: str) -> str:
    """The SHA-256 hex digest of the whole key: what the database stores and looks up."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_prefix(value: str) -> str | None:
    """The 8-character prefix in `abcd1234`, `cb_abcd1234` or a whole key; None otherwise."""
    m = _PREFIX_ARG_RE.match(value.strip())
    return m.group(1) if m else None


# --- validation ----------------------------------------------------------------------------------


def validate_role(role: str) -> str:
    if role not in ROLES:
        raise BadInput(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")
    return role


def validate_team_name(name: str) -> str:
    if not isinstance(name, str) or not TEAM_NAME_RE.fullmatch(name):
        raise BadInput(f"invalid team name {name!r}: lower-case letters, digits and '-', "
                       "1-40 characters, starting and ending with a letter or digit")
    return name


def validate_key_name(name: str) -> str:
    if len(name) > 100 or any(not ch.isprintable() for ch in name):
        raise BadInput("invalid key name: at most 100 printable characters")
    return name.strip()


# --- the matrix --------------------------------------------------------------------------------


def _environments(environment: str | None) -> frozenset[str]:
    """The environments an action touches: one, or all of them for None / "*"."""
    if environment is None or environment == "*":
        return _EVERY
    try:
        return frozenset({Environment.parse(str(environment)).value})
    except Exception as exc:
        raise AccessDenied(f"Access Denied: unknown environment {environment!r}") from exc


def allowed_environments(role: str, action: str) -> frozenset[str]:
    return PERMISSIONS.get(action, {}).get(role, frozenset())


def is_allowed(role: str, action: str, environment: str | None = None) -> bool:
    """Whether `role` may perform `action` in `environment` (None or "*": in every one)."""
    if action not in PERMISSIONS:
        return False
    return _environments(environment) <= allowed_environments(role, action)


def _refusal(principal: Principal, action: str, environment: str | None) -> str:
    allowed = allowed_environments(principal.role, action)
    needed = _environments(environment)
    who = (f"(key {principal.key_label}, team {principal.team})"
           if principal.kind is PrincipalKind.API_KEY else f"({principal.actor}, team {principal.team})")
    if allowed:
        where = "every environment" if needed == _EVERY else f"{sorted(needed)[0]}"
        return (f"Access Denied: role {principal.role} may not {action} in {where}, only in "
                f"{', '.join(sorted(allowed))} {who}")
    roles = [r for r in ROLES if needed <= allowed_environments(r, action)]
    needs = f"; it needs role {' or '.join(roles)}" if roles else ""
    return f"Access Denied: role {principal.role} may not {action} {who}{needs}"


def matrix_markdown() -> str:
    """The permission matrix as a Markdown table (docs/access.md holds a copy; a test compares)."""
    order = [env.value for env in Environment]
    lines = ["| action | command | " + " | ".join(ROLES) + " |",
             "|---|---|" + "---|" * len(ROLES)]
    for action, what in ACTIONS.items():
        cells = []
        for role in ROLES:
            allowed = allowed_environments(role, action)
            if allowed == _EVERY:
                cells.append("yes")
            elif allowed:
                cells.append(", ".join(e for e in order if e in allowed) + " only")
            else:
                cells.append("no")
        lines.append(f"| `{action}` | {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
