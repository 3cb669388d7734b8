"""Teams, API keys and the permission matrix (codeb_tui.domain.access, `codeb team|apikey|db`).

Store tests run on a real SQLite file and the real local PostgreSQL (fixtures in conftest.py,
as for test_store.py). The command line runs in real processes against SQLite.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from codeb_tui.cli import main
from codeb_tui.domain import access
from codeb_tui.domain.access import (
    ACTIONS,
    PERMISSIONS,
    ROLES,
    Principal,
    PrincipalKind,
    generate_api_key,
    hash_api_key,
    is_allowed,
    key_prefix,
)
from codeb_tui.engine.access import authorize
from codeb_tui.domain.errors import AccessDenied, BadInput, CodebError
from codeb_tui.store import StoreError, StoreRefused, load_migrations, open_store
from conftest import REPO, STORE_BACKENDS

LATEST = len(load_migrations("sqlite"))
both = pytest.mark.parametrize("make_store", STORE_BACKENDS, indirect=True)


# --- keys ----------------------------------------------------------------------------------------


def test_generated_keys_have_the_format_and_are_stored_as_sha256():
    keys = [generate_api_key() for _ in range(200)]
    for new in keys:
        assert access.KEY_RE.match(new.key), new.key
        assert new.key.startswith(f"cb_{new.prefix}_") and len(new.key) == 3 + 8 + 1 + 32
        assert new.key_hash == hashlib.sha256(new.key.encode()).hexdigest() == hash_api_key(new.key)
        assert len(new.key_hash) == 64 and new.key not in repr(new)
    assert len({k.key for k in keys}) == len({k.prefix for k in keys}) == 200


@pytest.mark.parametrize("value, prefix", [
    ("abcd1234", "abcd1234"), ("cb_abcd1234", "abcd1234"), (" cb_abcd1234 ", "abcd1234"),
    ("cb_abcd1234_" + "x" * 32, "abcd1234"), ("abcd123", None), ("ABCD1234", None),
    ("cb_abcd12345", None), ("", None), ("12", None),
])
def test_key_prefix(value, prefix):
    assert key_prefix(value) == prefix


def test_validation():
    assert access.validate_role("viewer") == "viewer"
    with pytest.raises(BadInput, match="unknown role 'root'"):
        access.validate_role("root")
    assert access.validate_team_name("team-a1") == "team-a1"
    for bad in ("", "A", "a b", "-a", "a-", "a" * 41, "../x", "a;b"):
        with pytest.raises(BadInput, match="invalid team name"):
            access.validate_team_name(bad)
    with pytest.raises(BadInput):
        access.validate_key_name("x\ny")


# --- the matrix ----------------------------------------------------------------------------------

MATRIX_CASES = [
    # role, action, environment, allowed
    ("viewer", "status", None, True), ("viewer", "ports", None, True),
    ("viewer", "history", "production", True),
    ("viewer", "deploy", "preview", False), ("viewer", "promote", "staging", False),
    ("viewer", "rollback", "production", False), ("viewer", "cleanup", "preview", False),
    ("viewer", "reconcile", None, False), ("viewer", "db.status", None, False),
    ("viewer", "team.list", None, False),
    ("member", "deploy", "production", True), ("member", "promote", "production", True),
    ("member", "rollback", "production", True), ("member", "deploy", "preview", True),
    ("member", "cleanup", "staging", True), ("member", "cleanup", "preview", True),
    ("member", "cleanup", "production", False), ("member", "cleanup", "prod", False),
    ("member", "cleanup", None, False), ("member", "cleanup", "*", False),
    ("member", "reconcile", None, True), ("member", "reconcile.repair", None, False),
    ("member", "reconcile.prune", None, False), ("member", "db.status", None, True),
    ("member", "db.migrate", None, False), ("member", "team.create", None, False),
    ("member", "apikey.create", None, False), ("member", "apikey.revoke", None, False),
    ("admin", "cleanup", "production", True), ("admin", "cleanup", None, True),
    ("admin", "reconcile.repair", None, True), ("admin", "reconcile.prune", None, True),
    ("admin", "team.create", None, True), ("admin", "apikey.create", None, True),
    ("admin", "apikey.revoke", None, True), ("admin", "db.migrate", None, True),
    ("admin", "no-such-action", None, False), ("root", "status", None, False),
]


@pytest.mark.parametrize("role, action, environment, allowed", MATRIX_CASES)
def test_permission_matrix(role, action, environment, allowed):
    assert is_allowed(role, action, environment) is allowed


def test_matrix_is_complete_and_roles_are_nested():
    assert set(ACTIONS) == set(PERMISSIONS)
    every = {"production", "staging", "preview"}
    for action, grants in PERMISSIONS.items():
        assert set(grants) <= set(ROLES), action
        assert grants["admin"] == every, f"admin may not {action} everywhere"
        # viewer <= member <= admin, environment by environment
        for weaker, stronger in (("viewer", "member"), ("member", "admin")):
            assert grants.get(weaker, frozenset()) <= grants.get(stronger, frozenset()), action


def test_docs_hold_the_matrix():
    docs = (REPO / "docs" / "access.md").read_text()
    assert access.matrix_markdown() in docs, "docs/access.md is out of date: paste matrix_markdown()"


def test_access_denied_is_a_refusal():
    exc = AccessDenied("role viewer may not deploy")
    assert isinstance(exc, CodebError) and exc.exit_code == 2
    assert str(exc) == "Access Denied: role viewer may not deploy"
    assert str(AccessDenied("Access Denied: x")) == "Access Denied: x"


def test_api_key_option_falls_back_to_the_environment(monkeypatch, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(f"database:\n  sqlite_path: {tmp_path / 'c.sqlite3'}\n")

    def refusal(*argv: str) -> str:
        assert main([*argv, "--config", str(config)]) == 2
        return capsys.readouterr().err

    monkeypatch.setenv("CODEB_API_KEY", "cb_from_env")
    assert "malformed API key" in refusal("team", "list")
    assert "malformed API key" in refusal("--api-key", "x", "team", "list")
    # An explicitly empty key is a key, and refused; it never means "local".
    assert "an API key is required" in refusal("team", "list", "--api-key", "")
    monkeypatch.setenv("CODEB_API_KEY", "")
    assert "an API key is required" in refusal("db", "status")
    monkeypatch.delenv("CODEB_API_KEY")
    assert main(["db", "status", "--config", str(config)]) == 0


# --- the store, on both backends ---------------------------------------------------------------


@both
async def test_teams(store):
    assert await store.list_teams() == []
    acme = await store.create_team("acme")
    assert acme.name == "acme" and acme.id > 0 and acme.created_at.tzinfo is not None
    await store.create_team("beta")
    with pytest.raises(StoreRefused, match="^team acme already exists$"):
        await store.create_team("acme")
    teams = await store.list_teams()
    assert [t.name for t in teams] == ["acme", "beta"]
    assert teams[0] == acme


@both
async def test_concurrent_create_team_makes_one(make_store):
    stores = [make_store() for _ in range(3)]
    for s in stores:
        await s.connect()
        await s.migrate()
    results = await asyncio.gather(*(s.create_team("race") for s in stores),
                                   return_exceptions=True)
    assert sum(not isinstance(r, Exception) for r in results) == 1, results
    assert all(isinstance(r, StoreRefused) for r in results if isinstance(r, Exception))
    assert [t.name for t in await stores[0].list_teams()] == ["race"]


@both
async def test_api_keys(store):
    await store.create_team("acme")
    await store.create_team("beta")
    a = generate_api_key()
    b = generate_api_key()
    c = generate_api_key()
    ka = await store.create_api_key("acme", "ci", "member", a.key_hash, a.prefix)
    assert (ka.team, ka.name, ka.role, ka.prefix, ka.revoked_at) == ("acme", "ci", "member",
                                                                     a.prefix, None)
    kb = await store.create_api_key("beta", "", "viewer", b.key_hash, b.prefix)
    kc = await store.create_api_key("acme", "ops", "admin", c.key_hash, c.prefix)

    with pytest.raises(StoreRefused, match="^team nope does not exist$"):
        await store.create_api_key("nope", "x", "admin", "0" * 64, "zzzzzzzz")
    with pytest.raises(StoreRefused, match=f"prefix {a.prefix} is already taken"):
        await store.create_api_key("acme", "again", "admin", "1" * 64, a.prefix)

    assert [k.prefix for k in await store.list_api_keys()] == [a.prefix, c.prefix, b.prefix]
    assert await store.list_api_keys("acme") == [ka, kc]
    assert await store.list_api_keys("beta") == [kb]
    assert await store.list_api_keys("nope") == []

    found = await store.find_api_key(a.key_hash)
    assert found == ka and found.team == "acme"
    assert await store.find_api_key(hash_api_key(a.key + "x")) is None

    revoked = await store.revoke_api_key(a.prefix)
    assert revoked.revoked and revoked.prefix == a.prefix
    assert revoked.revoked_at >= revoked.created_at
    assert (await store.find_api_key(a.key_hash)).revoked_at == revoked.revoked_at
    with pytest.raises(StoreRefused, match=f"^API key cb_{a.prefix} is already revoked"):
        await store.revoke_api_key(a.prefix)
    with pytest.raises(StoreRefused, match="^no API key with prefix or id qqqqqqqq$"):
        await store.revoke_api_key("qqqqqqqq")
    with pytest.raises(StoreRefused, match="no API key"):
        await store.revoke_api_key("99999999999999999999999")
    by_id = await store.revoke_api_key(str(kb.id))
    assert by_id.prefix == b.prefix and by_id.revoked
    assert [k.revoked for k in await store.list_api_keys()] == [True, False, True]


@both
async def test_only_the_hash_is_stored(store, make_store, request):
    await store.create_team("acme")
    new = generate_api_key()
    await store.create_api_key("acme", "ci", "admin", new.key_hash, new.prefix)
    if request.node.callspec.params["make_store"] == "sqlite":
        conn = sqlite3.connect(store.path)
        rows = conn.execute("SELECT * FROM api_keys").fetchall()
        conn.close()
    else:
        async with store._conn("test") as conn:
            rows = [tuple(r) for r in await conn.fetch("SELECT * FROM api_keys")]
    assert len(rows) == 1
    flat = [str(v) for v in rows[0]]
    assert new.key_hash in flat and new.prefix in flat
    assert not any(new.key in v or new.key.split("_")[2] in v for v in flat)


@both
async def test_authorize(store):
    await store.create_team("acme")
    keys = {}
    for role in ROLES:
        new = generate_api_key()
        await store.create_api_key("acme", f"{role}-key", role, new.key_hash, new.prefix)
        keys[role] = new

    p = await authorize(store, keys["viewer"].key, "status", None)
    assert p == Principal.from_key_row("acme", "viewer", keys["viewer"].prefix,
                                       key_name="viewer-key", key_id=p.key_id)
    assert p.kind is PrincipalKind.API_KEY and p.name == f"cb_{keys['viewer'].prefix}"
    assert p.actor == f"apikey:cb_{keys['viewer'].prefix}"
    assert (await authorize(store, keys["member"].key, "deploy", "production")).role == "member"
    assert (await authorize(store, keys["member"].key, "cleanup", "staging")).role == "member"
    assert (await authorize(store, keys["admin"].key, "cleanup", "production")).role == "admin"
    assert (await authorize(store, keys["admin"].key, "reconcile.prune", None)).role == "admin"

    async def denied(key, action, env=None) -> str:
        with pytest.raises(AccessDenied) as info:
            await authorize(store, key, action, env)
        assert info.value.exit_code == 2
        message = str(info.value)
        assert message.startswith("Access Denied:") and "\n" not in message
        assert keys["admin"].key.split("_")[2] not in message  # never echo a secret
        return message

    msg = await denied(keys["viewer"].key, "deploy", "preview")
    assert "role viewer may not deploy" in msg and "needs role admin or member" in msg
    msg = await denied(keys["member"].key, "cleanup", "production")
    assert "role member may not cleanup in production, only in preview, staging" in msg
    msg = await denied(keys["member"].key, "cleanup", None)
    assert "may not cleanup in every environment" in msg
    assert "role member may not team.create" in await denied(keys["member"].key, "team.create")
    wrong = generate_api_key().key
    assert "unknown API key" in await denied(wrong, "status")
    # right prefix, wrong secret
    forged = f"cb_{keys['admin'].prefix}_{'A' * 32}"
    assert "unknown API key" in await denied(forged, "status")
    assert "malformed API key" in await denied("hunter2", "status")
    assert "API key is required" in await denied("", "status")
    assert "API key is required" in await denied(None, "status")
    assert "unknown action" in await denied(keys["admin"].key, "format-disk")
    assert "unknown environment" in await denied(keys["admin"].key, "deploy", "qa")

    await store.revoke_api_key(keys["admin"].prefix)
    msg = await denied(keys["admin"].key, "status")
    assert f"API key cb_{keys['admin'].prefix} (team acme) was revoked at" in msg


@both
async def test_authorize_when_the_store_cannot_answer(make_store):
    unconnected = make_store()
    with pytest.raises(AccessDenied, match="^Access Denied: cannot verify the API key: .*not connected"):
        await authorize(unconnected, generate_api_key().key, "status", None)
    with pytest.raises(AccessDenied, match="^Access Denied: cannot verify the API key: no database"):
        await authorize(None, generate_api_key().key, "status", None)


async def test_authorize_when_postgresql_is_unreachable(tmp_path):
    down = open_store("postgresql://postgres@127.0.0.1:1/x", tmp_path / "unused", 1.0)
    with pytest.raises(StoreError):
        await down.connect()
    with pytest.raises(AccessDenied, match="^Access Denied: cannot verify the API key: "):
        await authorize(down, generate_api_key().key, "deploy", "production")


# --- the command line ----------------------------------------------------------------------------


def admin(*args: str, config: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in __import__("os").environ.items() if k != "CODEB_API_KEY"}
    return subprocess.run([sys.executable, "-m", "codeb_tui.cli", "--config", str(config),
                           *args], capture_output=True, text=True, timeout=60,
                          env={**base, **(env or {})}, cwd=REPO)


def one_error(out: subprocess.CompletedProcess, code: int, start: str) -> str:
    assert out.returncode == code, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), out.stderr
    return lines[0]


@pytest.fixture
def sqlite_config(tmp_path) -> tuple[Path, Path]:
    db = tmp_path / "db" / "codeb.sqlite3"
    path = tmp_path / "config.yaml"
    path.write_text(f"database:\n  sqlite_path: {db}\n")
    return path, db


def test_db_status_and_migrate(sqlite_config):
    config, db = sqlite_config
    out = admin("db", "status", "--json", config=config)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"backend": "sqlite", "where": str(db), "version": 0,
                                      "latest": LATEST, "pending": list(range(1, LATEST + 1))}
    assert not db.exists()  # status does not create the database
    out = admin("db", "status", config=config)
    assert "version  0" in out.stdout and "003 api_key_prefix" in out.stdout

    out = admin("db", "migrate", config=config)
    assert out.returncode == 0, out.stderr
    versions = ", ".join(f"{v:03d}" for v in range(1, LATEST + 1))
    assert out.stdout.strip() == (f"applied migrations {versions} to sqlite {db}: "
                                  f"schema version {LATEST}")
    out = admin("db", "migrate", config=config)
    assert out.returncode == 0 and "up to date" in out.stdout, out
    out = admin("db", "migrate", "--json", config=config)
    assert json.loads(out.stdout) == {"backend": "sqlite", "where": str(db), "applied": [],
                                      "version": LATEST}

    out = admin("db", "status", "--json", config=config)
    assert json.loads(out.stdout) == {"backend": "sqlite", "where": str(db), "version": LATEST,
                                      "latest": LATEST, "pending": []}
    assert "pending  none" in admin("db", "status", config=config).stdout


def test_teams_and_keys_end_to_end(sqlite_config):
    config, db = sqlite_config
    out = admin("team", "create", "acme", config=config)
    assert out.returncode == 0 and out.stdout.strip() == "created team acme", out
    one_error(admin("team", "create", "acme", config=config), 2, "codeb: team acme already exists")
    one_error(admin("team", "create", "Not OK", config=config), 2, "codeb: invalid team name")
    assert json.loads(admin("team", "list", "--json", config=config).stdout)["teams"][0][
        "name"] == "acme"

    # The key is printed once, alone on stdout; the note goes to stderr.
    out = admin("apikey", "create", "--team", "acme", "--role", "member", "--name", "ci",
                config=config)
    assert out.returncode == 0, out.stderr
    member_key = out.stdout.strip()
    assert access.KEY_RE.match(member_key) and out.stdout.count("cb_") == 1
    assert "only time the key is shown" in out.stderr
    prefix = key_prefix(member_key)

    out = admin("apikey", "create", "--team", "acme", "--role", "admin", "--json", config=config)
    created = json.loads(out.stdout)
    admin_key = created["key"]
    assert created["role"] == "admin" and created["prefix"] == key_prefix(admin_key)
    assert "key_hash" not in created

    one_error(admin("apikey", "create", "--team", "nope", "--role", "admin", config=config), 2,
              "codeb: team nope does not exist")
    one_error(admin("apikey", "create", "--team", "acme", "--role", "root", config=config), 2,
              "codeb: argument --role: invalid choice")

    # The database holds only the hash and the prefix, never the key.
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT prefix, key_hash FROM api_keys ORDER BY id").fetchall()
    conn.close()
    assert rows == [(prefix, hash_api_key(member_key)),
                    (key_prefix(admin_key), hash_api_key(admin_key))]
    for file in db.parent.iterdir():  # the file, its WAL and shm
        data = file.read_bytes()
        assert member_key.encode() not in data and admin_key.encode() not in data

    out = admin("apikey", "list", config=config)
    assert out.returncode == 0
    header, *lines = out.stdout.strip().splitlines()
    assert header.split() == ["KEY", "TEAM", "ROLE", "NAME", "CREATED", "REVOKED"]
    assert lines[0].split()[:4] == [f"cb_{prefix}", "acme", "member", "ci"]
    assert lines[0].split()[-1] == "-"
    assert hash_api_key(member_key) not in out.stdout and member_key not in out.stdout
    listed = json.loads(admin("apikey", "list", "--team", "acme", "--json", config=config).stdout)
    assert [k["prefix"] for k in listed["api_keys"]] == [prefix, key_prefix(admin_key)]
    assert all("hash" not in field for k in listed["api_keys"] for field in k)
    one_error(admin("apikey", "list", "--team", "nope", config=config), 2,
              "codeb: team nope does not exist")

    # Given a key, management needs an admin key; without one it is local and allowed.
    one_error(admin("team", "create", "beta", "--api-key", member_key, config=config), 2,
              "codeb: Access Denied: role member may not team.create")
    one_error(admin("team", "list", config=config, env={"CODEB_API_KEY": member_key}), 2,
              "codeb: Access Denied: role member may not team.list")
    one_error(admin("team", "list", "--api-key", generate_api_key().key, config=config), 2,
              "codeb: Access Denied: unknown API key")
    out = admin("team", "create", "beta", config=config, env={"CODEB_API_KEY": admin_key})
    assert out.returncode == 0, out.stderr

    out = admin("apikey", "revoke", f"cb_{prefix}", config=config)
    assert out.returncode == 0 and out.stdout.strip() == (
        f"revoked API key cb_{prefix} (team acme, role member)"), out
    one_error(admin("apikey", "revoke", prefix, config=config), 2,
              f"codeb: API key cb_{prefix} is already revoked")
    one_error(admin("apikey", "revoke", "cb_zzzzzzzz", config=config), 2,
              "codeb: no API key with prefix or id zzzzzzzz")
    one_error(admin("apikey", "revoke", "nonsense!", config=config), 2,
              "codeb: not an API key prefix")
    one_error(admin("db", "status", "--api-key", member_key, config=config), 2,
              f"codeb: Access Denied: API key cb_{prefix} (team acme) was revoked at")
    listed = json.loads(admin("apikey", "list", "--json", config=config).stdout)["api_keys"]
    assert listed[0]["revoked_at"] is not None and listed[1]["revoked_at"] is None
    teams = json.loads(admin("team", "list", "--json", config=config).stdout)["teams"]
    assert [(t["name"], t["active_keys"]) for t in teams] == [("acme", 1), ("beta", 0)]


def test_unreachable_database_is_one_line_exit_1(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("database:\n  dsn: postgresql://postgres@127.0.0.1:1/nothing\n"
                      "  connect_timeout: 1\n")
    for args in (["team", "list"], ["db", "migrate"], ["db", "status"]):
        one_error(admin(*args, config=config), 1, "codeb: PostgreSQL at 127.0.0.1:1 unreachable")


async def test_admin_commands_in_process(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CODEB_API_KEY", raising=False)
    config = tmp_path / "config.yaml"
    config.write_text(f"database:\n  sqlite_path: {tmp_path / 'c.sqlite3'}\n")

    async def run(*argv: str) -> int:
        # main() runs its own event loop: off this test's loop, in a thread.
        return await asyncio.to_thread(main, [*argv, "--config", str(config)])

    assert await run("db", "migrate", "--json") == 0
    assert json.loads(capsys.readouterr().out)["applied"] == list(range(1, LATEST + 1))
    assert await run("team", "create", "ops") == 0
    assert await run("apikey", "create", "--team", "ops", "--role", "viewer", "--json") == 0
    out = capsys.readouterr().out.strip().splitlines()
    key = json.loads(out[-1])["key"]
    assert await run("team", "list", "--api-key", key) == 2
    assert capsys.readouterr().err.startswith("codeb: Access Denied: role viewer may not team.list")
    store = open_store(None, tmp_path / "c.sqlite3", 3.0)
    await store.connect()
    try:
        principal = await authorize(store, key, "history", None)
        assert (principal.team, principal.role) == ("ops", "viewer")
        assert isinstance((await store.list_teams())[0].created_at, datetime)
    finally:
        await store.close()


@pytest.mark.parametrize("make_store", ["sqlite"], indirect=True)
async def test_the_facade_admits_each_kind_of_principal(store):
    """Local operators may do all; SSH operators by their role; keys by the database."""
    from codeb_tui.engine.access import admit

    async def connected():
        return store

    local = Principal.local("root")
    assert await admit(local, "apikey.create", None, connected) is local
    viewer = Principal.operator("ann", "ops", "viewer")
    assert await admit(viewer, "status", "production", connected) is viewer
    with pytest.raises(AccessDenied) as info:
        await admit(viewer, "promote", "production", connected)
    assert "role viewer may not promote" in str(info.value) and "ssh:ann" in str(info.value)
    assert info.value.principal is viewer  # audited under the operator's team
    member = Principal.operator("bob", "ops", "member")
    with pytest.raises(AccessDenied, match="only in preview, staging"):
        await admit(member, "cleanup", "production", connected)
    assert viewer.may("status") and not viewer.may("deploy", "staging")
    assert member.may("cleanup", "staging") and not member.may("cleanup")
    for empty in ("", "   "):
        with pytest.raises(AccessDenied, match="an API key is required"):
            await admit(Principal.with_api_key(empty), "status", None, connected)
    with pytest.raises(AccessDenied, match="malformed API key"):
        await admit(Principal.with_api_key("cb_short\n"), "status", None, connected)
