"""`codeb team ...`, `codeb apikey ...` and `codeb db ...`: teams, API keys and the schema.

    codeb team create NAME                    codeb team list
    codeb apikey create --team T --role R [--name N]
    codeb apikey list [--team T]              codeb apikey revoke PREFIX
    codeb db migrate                          codeb db status

`codeb.cli` wires these in with `add_admin_commands(sub, common)` and runs them with
`run_admin(args, config)`; `python -m codeb_tui.admin_cli ...` runs them alone. Run locally they
need no API key (the operator has a shell on the host); when `--api-key` or `$CODEB_API_KEY` is
given, the key's role must allow the command (docs/access.md: admin for teams and keys).
Exit codes (design.md): 0 done, 1 the database failed, 2 bad input or refused (duplicate team,
unknown key, Access Denied); one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from typing import Any

from codeb_tui.domain.config import Config
from codeb_tui.domain.access import (
    generate_api_key,
    key_prefix,
    validate_key_name,
    validate_role,
    validate_team_name,
)
from codeb_tui.domain.access import ROLES
from codeb_tui.engine.access import authorize
from codeb_tui.domain.errors import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, BadInput, CodebError
from codeb_tui.store import Store, StoreError, StoreRefused, load_migrations, open_store
from codeb_tui.store.base import ApiKeyRow, TeamRow

API_KEY_ENV = "CODEB_API_KEY"
ADMIN_COMMANDS = ("team", "apikey", "db")
KEY_NOTE = ("This is the only time the key is shown: codeb stores only its SHA-256 hash. "
            "Keep it in a secret store.")


# --- arguments ---------------------------------------------------------------------------------


def add_api_key_option(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """`--api-key KEY`, default `$CODEB_API_KEY`. With `suppress=True` (for an option accepted
    both before and after a subcommand) the default is left out; `api_key_of(args)` then falls
    back to the environment."""
    default = argparse.SUPPRESS if suppress else os.environ.get(API_KEY_ENV)
    parser.add_argument("--api-key", metavar="KEY", default=default,
                        help=f"API key (default: ${API_KEY_ENV}); its role must allow the command")


def api_key_of(args: argparse.Namespace) -> str | None:
    """The API key given by --api-key, else $CODEB_API_KEY; None when neither (or empty)."""
    value = getattr(args, "api_key", None)
    if value is None:
        value = os.environ.get(API_KEY_ENV)
    return (value or "").strip() or None


def add_admin_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `team`, `apikey` and `db` to the subparsers `sub`; every leaf takes the `common`
    options (--config, --json) and --api-key, and sets `args.admin_action` (the action name of
    the permission matrix, e.g. "apikey.create")."""

    def leaf(group: Any, name: str, action: str, text: str) -> argparse.ArgumentParser:
        p = group.add_parser(name, parents=[common], help=text, description=text)
        add_api_key_option(p)
        p.set_defaults(admin_action=action)
        return p

    team = sub.add_parser("team", help="teams (API keys belong to a team)")
    teams = team.add_subparsers(dest="team_command", metavar="{create,list}", required=True)
    p = leaf(teams, "create", "team.create", "create a team")
    p.add_argument("name", help="lower-case letters, digits and '-'")
    leaf(teams, "list", "team.list", "every team with its number of active keys")

    apikey = sub.add_parser("apikey", help="API keys: create (shown once), list, revoke")
    keys = apikey.add_subparsers(dest="apikey_command", metavar="{create,list,revoke}",
                                 required=True)
    p = leaf(keys, "create", "apikey.create", "create an API key; it is printed once")
    p.add_argument("--team", required=True)
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--name", default="", help="what the key is for (e.g. github-actions)")
    p = leaf(keys, "list", "apikey.list", "keys: prefix, team, role, created, revoked")
    p.add_argument("--team")
    p = leaf(keys, "revoke", "apikey.revoke", "revoke a key by its prefix")
    p.add_argument("prefix", metavar="PREFIX", help="cb_xxxxxxxx, xxxxxxxx or the key's id")

    db = sub.add_parser("db", help="the database schema: status, migrate")
    dbs = db.add_subparsers(dest="db_command", metavar="{migrate,status}", required=True)
    leaf(dbs, "migrate", "db.migrate", "apply the pending migrations")
    leaf(dbs, "status", "db.status", "backend, schema version, pending migrations")


# --- running -----------------------------------------------------------------------------------


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _team_json(team: TeamRow, active_keys: int | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"id": team.id, "name": team.name, "created_at": _ts(team.created_at)}
    if active_keys is not None:
        data["active_keys"] = active_keys
    return data


def _key_json(key: ApiKeyRow) -> dict[str, Any]:
    # Never the key, never its hash.
    return {"id": key.id, "prefix": key.prefix, "team": key.team, "role": key.role,
            "name": key.name, "created_at": _ts(key.created_at), "revoked_at": _ts(key.revoked_at)}


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = [header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def _where(store: Store) -> str:
    return store.description.split(" ", 1)[1] if " " in store.description else store.description


class _Out:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, data: dict[str, Any], text: str) -> None:
        print(json.dumps(data) if self.as_json else text, flush=True)


async def run_admin(args: argparse.Namespace, config: Config) -> int:
    """Run the admin command in `args` (from `add_admin_commands`). Returns the exit code;
    errors are one line on stderr ("codeb: ...")."""
    action: str = args.admin_action
    out = _Out(bool(getattr(args, "json", False)))
    db = config.database
    store: Store | None = None
    try:
        store = open_store(db.dsn, db.sqlite_path, db.connect_timeout)
        return await _dispatch(action, args, store, out)
    except StoreRefused as exc:
        sys.stderr.write(f"codeb: {exc}\n")
        return EXIT_REFUSED
    except StoreError as exc:
        sys.stderr.write(f"codeb: {exc}\n")
        return EXIT_FAILED
    except CodebError as exc:  # AccessDenied, BadInput
        sys.stderr.write(f"codeb: {exc}\n")
        return exc.exit_code
    finally:
        if store is not None:
            try:
                await store.close()
            except StoreError:
                pass


async def _check_key(args: argparse.Namespace, store: Store, action: str) -> None:
    key = api_key_of(args)
    if key is not None:
        await authorize(store, key, action, None)


async def _dispatch(action: str, args: argparse.Namespace, store: Store, out: _Out) -> int:
    if action == "db.status":
        return await _db_status(args, store, out)
    if action == "db.migrate":
        await store.connect()
        await _check_key(args, store, action)
        applied = await store.migrate()
        version = await store.schema_version()
        data = {"backend": store.kind, "where": _where(store), "applied": applied,
                "version": version}
        if applied:
            text = (f"applied migration{'s' if len(applied) > 1 else ''} "
                    f"{', '.join(f'{v:03d}' for v in applied)} to {store.description}: "
                    f"schema version {version}")
        else:
            text = f"{store.description}: up to date (schema version {version})"
        out.emit(data, text)
        return EXIT_OK

    # Teams and keys: the schema is brought up to date first, as every operation does.
    await store.connect()
    await store.migrate()
    await _check_key(args, store, action)

    if action == "team.create":
        team = await store.create_team(validate_team_name(args.name))
        out.emit({"team": _team_json(team)}, f"created team {team.name}")
        return EXIT_OK

    if action == "team.list":
        teams = await store.list_teams()
        active: dict[str, int] = {}
        for key in await store.list_api_keys(None):
            if key.revoked_at is None:
                active[key.team] = active.get(key.team, 0) + 1
        out.emit({"teams": [_team_json(t, active.get(t.name, 0)) for t in teams]},
                 _table(("TEAM", "CREATED", "ACTIVE KEYS"),
                        [(t.name, _ts(t.created_at) or "-", str(active.get(t.name, 0)))
                         for t in teams]) if teams else "no teams yet: codeb team create NAME")
        return EXIT_OK

    if action == "apikey.create":
        role = validate_role(args.role)
        name = validate_key_name(args.name or "")
        new = generate_api_key()
        row = await store.create_api_key(args.team, name, role, new.key_hash, new.prefix)
        if out.as_json:
            out.emit({"key": new.key, **_key_json(row), "note": KEY_NOTE}, "")
        else:
            # The key alone on stdout (KEY=$(codeb apikey create ...) works); the rest on stderr.
            sys.stderr.write(f"created API key cb_{row.prefix} for team {row.team}, role "
                             f"{row.role}{f', name {row.name}' if row.name else ''}:\n")
            print(new.key, flush=True)
            sys.stderr.write(f"{KEY_NOTE}\n")
        return EXIT_OK

    if action == "apikey.list":
        if args.team is not None and args.team not in {t.name for t in await store.list_teams()}:
            raise BadInput(f"team {args.team} does not exist")
        keys = await store.list_api_keys(args.team)
        out.emit({"api_keys": [_key_json(k) for k in keys]},
                 _table(("KEY", "TEAM", "ROLE", "NAME", "CREATED", "REVOKED"),
                        [(f"cb_{k.prefix}", k.team, k.role, k.name or "-",
                          _ts(k.created_at) or "-", _ts(k.revoked_at) or "-") for k in keys])
                 if keys else "no API keys" + (f" for team {args.team}" if args.team else ""))
        return EXIT_OK

    if action == "apikey.revoke":
        wanted = args.prefix.strip()
        prefix = key_prefix(wanted)
        if prefix is None and not wanted.isdigit():
            raise BadInput(f"not an API key prefix: {wanted!r} (expected cb_xxxxxxxx, the "
                           "8 characters after cb_, or the key's id)")
        row = await store.revoke_api_key(prefix or wanted)
        out.emit({"revoked": _key_json(row)},
                 f"revoked API key cb_{row.prefix} (team {row.team}, role {row.role})")
        return EXIT_OK

    raise AssertionError(action)


async def _db_status(args: argparse.Namespace, store: Store, out: _Out) -> int:
    migrations = load_migrations(store.kind)
    latest = migrations[-1].version if migrations else 0
    path = getattr(store, "path", None)
    if store.kind == "sqlite" and path is not None and not path.exists() and not api_key_of(args):
        version = 0  # do not create the file just to say it is empty
    else:
        await store.connect()
        await _check_key(args, store, "db.status")
        version = await store.schema_version()
    pending = [m for m in migrations if m.version > version]
    data = {"backend": store.kind, "where": _where(store), "version": version, "latest": latest,
            "pending": [m.version for m in pending]}
    lines = [f"backend  {store.kind}", f"where    {_where(store)}",
             f"version  {version}", f"latest   {latest}"]
    if pending:
        lines.append("pending  " + ", ".join(f"{m.version:03d} {m.name}" for m in pending)
                     + "  (codeb db migrate)")
    else:
        lines.append("pending  none")
    out.emit(data, "\n".join(lines))
    return EXIT_OK
