"""Hostile input to the real `codeb` process: every case is refused in one line and leaves the
world as it was (one deploys, next to another project's corrupt slot file, and checks only
that the file stays as it was).

Each case runs `python -m codeb_tui.cli` and checks:

- the exit code: 2 for bad input, refused transitions and denials; 1 where the world failed
  (an image missing from the registry, a corrupt registry file: the operator's input to this
  command is fine, the files are not, so `RegistryCorrupt` stays 1);
- stderr is exactly one line starting with `codeb: ` holding the expected words (no
  traceback, no warning line), and neither stream carries a raw terminal control character;
- nothing was written:
  * the registry tree (every directory, every file's path and bytes, ssot.json, slots/, a
    planted corrupt file) is byte-identical. The one allowance: a case that got past
    validation may leave EMPTY `locks/*.lock` files (with `locks/` and the root holding them).
    flock files stay after release by design (docs/architecture.md) and are truncated then, so
    an empty one says nothing; a holder record left behind would still fail the case;
  * no container labelled with a project of the case's prefix;
  * no row in `deployments` or `audit_logs` of the config's SQLite file (nor the file itself
    created) for refusals at validation. A refusal, denial or failure AFTER validation is
    audited by design: there the case names the result and exactly one new row of each table
    must carry it.

Argument and message templates: {p} the test's project prefix, {img} the demo image repository,
{root} the registry root, {viewer} {member} {revoked} API keys (a team "ops" and its keys are
made once with `codeb team create` / `codeb apikey create` / `codeb apikey revoke` and the
database copied into each case that uses them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import IMAGE, config_dict, run_cli

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # what a terminal may act on (not \t \n)


@dataclass
class World:
    """One case's surroundings."""

    tmp: Path
    config: Path
    root: Path
    sqlite: Path
    prefix: str
    keys: dict[str, str] = field(default_factory=dict)
    key_db: Path | None = None

    def fill(self, text: str) -> str:
        text = (text.replace("{p}", self.prefix).replace("{img}", IMAGE)
                .replace("{root}", str(self.root)))
        for role, key in self.keys.items():
            text = text.replace("{" + role + "}", key)
        return text


Setup = Callable[[World], None]
ConfigSource = Callable[[World], Path | None]


def good_config(world: World) -> Path | None:
    return world.config


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]
    setup: Setup | None
    expect_code: int
    expect_message_part: str
    audited: str | None = None
    """The result of the one audit row a refusal after validation writes; None: no row at all."""
    config: ConfigSource = good_config
    env: dict[str, str] = field(default_factory=dict)
    stdout_part: str = ""
    """Words the text output must hold (a hostile name shown escaped, on one line)."""
    xfail: str | None = None


# --- setups ------------------------------------------------------------------------------------


def plant(rel: str, content: str | bytes | Callable[[World], Any]) -> Setup:
    """A file in the registry root: text/bytes as given, or JSON built for the world."""
    def setup(world: World) -> None:
        path = world.root / world.fill(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(world.fill(content))
        else:
            path.write_text(json.dumps(content(world), indent=2))
    return setup


def plant_dir(rel: str) -> Setup:
    return lambda world: (world.root / rel).mkdir(parents=True)


def slot_file(project: str, blue: str = "empty", green: str = "empty",
              port: int = 4100) -> Callable[[World], dict]:
    def slot(name: str, state: str, number: int) -> dict:
        return {"name": name, "port": number, "state": state,
                "image": None if state == "empty" else f"{IMAGE}:v1", "container_id": None,
                "container_name": None, "deployed_at": None, "promoted_at": None,
                "grace_expires_at": None, "last_health": None}

    return lambda world: {
        "format": 1, "project": world.fill(project), "environment": "production", "version": 3,
        "updated_at": "2024-01-01T00:00:00Z",
        "slots": {"blue": slot("blue", blue, port), "green": slot("green", green, port + 1)}}


def with_keys(world: World) -> None:
    """The team and keys made once for the module (files of a closed SQLite: main, -wal...)."""
    assert world.key_db is not None
    for source in world.key_db.parent.glob(world.key_db.name + "*"):
        shutil.copy(source, world.sqlite.parent / source.name.replace(world.key_db.name,
                                                                     world.sqlite.name))


# --- hostile configs: the good one with a change, so that an accepted one would write into the
# --- very registry and database the case watches

def config_text(make: Callable[[str, dict], str | bytes]) -> ConfigSource:
    def write(world: World) -> Path:
        good = world.config.read_text()
        data = make(good, yaml.safe_load(good))
        path = world.tmp / "hostile.yaml"
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return path
    return write


def config_set(dotted: str, value: Any) -> ConfigSource:
    """The good config with one key (`caddy.listen`) set to `value`."""
    def make(good: str, data: dict) -> str:
        *sections, key = dotted.split(".")
        inner = data
        for section in sections:
            inner = inner[section]
        inner[key] = value
        return yaml.safe_dump(data)
    return config_text(make)


def no_config_flag(world: World) -> None:
    return None


def refused(name: str, argv: tuple[str, ...], message: str = "Invalid project name",
            **kw: Any) -> Case:
    """Refused at validation: exit 2, nothing planted beforehand."""
    return Case(name, argv, None, 2, message, **kw)


def bad_image(name: str, ref: str) -> Case:
    return refused(name, ("deploy", "{p}-i", f"--image={ref}"), f"Invalid image reference {ref!r}")


DEPLOY = ("deploy", "--image", "{img}:v1")
LAUGHS = "lol: &a [x, x, x, x, x, x, x, x]\n" + "".join(
    f"lol{i}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(8))

CASES = [
    # --- project names: refused at validation, before any file, lock, container or row ------
    refused("name-empty", (*DEPLOY, "--", "")),
    refused("name-41-chars", (*DEPLOY, "a" * 41)),
    refused("name-upper-case", ("promote", "Shop")),
    refused("name-leading-dash", ("rollback", "--", "-shop")),
    refused("name-trailing-dash", (*DEPLOY, "shop-")),
    refused("name-dot", ("status", "shop.v2")),
    refused("name-slash", (*DEPLOY, "shop/prod")),
    refused("name-dotdot", ("cleanup", "--force", "../x")),
    refused("name-space", (*DEPLOY, "my shop")),
    refused("name-semicolon", (*DEPLOY, "a;rm -rf /")),
    refused("name-dollar-paren", ("promote", "$(id)")),
    refused("name-backticks", (*DEPLOY, "`id`")),
    refused("name-trailing-newline", (*DEPLOY, "{p}\n"), stdout_part="deploy {p}\\n (production)"),
    refused("name-cyrillic-lookalike", (*DEPLOY, "\u0455hop")),  # DZE, not an "s"
    refused("name-fullwidth", (*DEPLOY, "\uff53hop")),
    refused("name-terminal-escape", (*DEPLOY, "x\x1b[2Jy"), stdout_part="deploy x\\x1b[2Jy"),
    # --- images (as `--image=REF`, so that a REF starting with '-' is still the value) --------
    bad_image("image-space", "{img}:v1 --rm"),
    bad_image("image-semicolon", "img;rm -rf /"),
    bad_image("image-dollar-paren", "{img}:$(id)"),
    bad_image("image-backticks", "{img}:`id`"),
    bad_image("image-leading-dash", "--privileged"),
    bad_image("image-short-digest", "{img}@sha256:abc"),
    bad_image("image-non-hex-digest", "{img}@sha256:" + "z" * 64),
    bad_image("image-upper-case-repository", "127.0.0.1:5000/Demo/App:v1"),
    bad_image("image-tag-129", "{img}:" + "t" * 129),
    bad_image("image-over-255", "a/" * 130 + "x"),
    bad_image("image-empty", ""),
    bad_image("image-url-scheme", "http://{img}:v1"),
    bad_image("image-trailing-newline", "{img}:v1\n"),
    # Past validation: audited as failed, no port in ssot.json, no container; the project lock
    # file it took is left empty.
    Case("image-not-in-registry", ("deploy", "{p}-i", "--image", "{img}:does-not-exist"), None,
         1, "Image not found: {img}:does-not-exist", audited="failed"),
    # --- environments: words of their own only (an upper-case PRODUCTION is refused, not
    # --- folded: a file name or container name never sees anything but the three words) ------
    refused("env-prod2", (*DEPLOY, "{p}-e", "--env", "prod2"), "Unknown environment 'prod2'"),
    refused("env-empty", (*DEPLOY, "{p}-e", "--env", ""), "Unknown environment ''"),
    refused("env-upper-case", (*DEPLOY, "{p}-e", "--env", "PRODUCTION"),
            "Unknown environment 'PRODUCTION'"),
    refused("env-trailing-space", (*DEPLOY, "{p}-e", "--env", "production "),
            "Unknown environment 'production '"),
    refused("env-trailing-newline", ("promote", "{p}-e", "--env", "staging\n"),
            "Unknown environment 'staging\\n'"),
    refused("env-dotdot", ("status", "--env", "../prod"), "Unknown environment '../prod'"),
    refused("env-star", ("cleanup", "--env", "*"), "Unknown environment '*'"),
    refused("env-semicolon", ("rollback", "{p}-e", "--env", "prod;id"), "Unknown environment"),
    # --- config files: one line naming the key (or the file), exit 2 -------------------------
    refused("config-not-a-mapping", ("ports",), "config: expected a mapping at the top level",
            config=config_text(lambda good, data: "- a\n- b\n")),
    refused("config-unknown-key", (*DEPLOY, "{p}-c"), "caddy.admin_url: unknown key",
            config=config_set("caddy.admin_url", "http://x")),
    refused("config-bad-type", (*DEPLOY, "{p}-c"), "health.timeout: expected a number, got '60'",
            config=config_set("health.timeout", "60")),
    refused("config-grace-nan", (*DEPLOY, "{p}-c"), "grace_hours: expected a finite number",
            config=config_text(lambda good, data: good + "grace_hours: .nan\n")),
    refused("config-duplicate-key", (*DEPLOY, "{p}-c"), "grace_hours: duplicate key on line",
            config=config_text(lambda good, data: good + "grace_hours: 1\ngrace_hours: 2\n")),
    refused("config-same-domain-twice", (*DEPLOY, "{p}-c"), "same host names as",
            config=config_set("environments.staging.domain", "{project}.prod.test")),
    refused("config-domain-with-space", (*DEPLOY, "{p}-c"), "environments.production.domain:",
            config=config_set("environments.production.domain", "{project}.x test")),
    refused("config-docker-endpoint-not-url", (*DEPLOY, "{p}-c"), "docker.endpoint: expected",
            config=config_set("docker.endpoint", "not a url")),
    refused("config-caddy-listen-a-b-c", (*DEPLOY, "{p}-c"), "caddy.listen: expected host:port",
            config=config_set("caddy.listen", "a:b:c")),
    refused("config-overlapping-ports", (*DEPLOY, "{p}-c"), "overlaps environments.",
            config=config_set("environments.staging.ports", [4400, 4700])),
    refused("config-missing-file", ("ports",), "Config file not found: ",
            config=lambda world: world.tmp / "nope.yaml"),
    refused("config-is-a-directory", ("ports",), "cannot read config",
            config=lambda world: world.tmp),
    refused("config-yaml-syntax", (*DEPLOY, "{p}-c"), "cannot read config",
            config=config_text(lambda good, data: good + "caddy: [unclosed\n")),
    refused("config-nul-character", (*DEPLOY, "{p}-c"), "cannot read config",
            config=config_text(lambda good, data: good + "grace_hours: 1\x00\n")),
    refused("config-binary-garbage", (*DEPLOY, "{p}-c"), "cannot read config",
            config=config_text(lambda good, data: b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")),
    # Aliases nest 8^9 x's if expanded; the key is refused without expanding them.
    refused("config-billion-laughs", (*DEPLOY, "{p}-c"), "lol: unknown key",
            config=config_text(lambda good, data: good + LAUGHS)),
    refused("config-env-override-bad-value", (*DEPLOY, "{p}-c"),
            "grace_hours: expected a number, got 'abc' (set by CODEB_GRACE_HOURS)",
            env={"CODEB_GRACE_HOURS": "abc"}),
    refused("config-env-var-missing-file", ("ports",), "Config file not found: ",
            config=no_config_flag, env={"CODEB_CONFIG": "/nonexistent/codeb.yaml"}),
    # An explicitly empty --config (`--config "$UNSET"`) must not fall back to the built-in
    # defaults (/opt/codeb/registry) nor to ~/.config.
    refused("config-flag-empty", ("--config", "", *DEPLOY, "{p}-c"),
            "--config: expected a file name",
            config=no_config_flag),
    # --- corrupt registry files: exit 1 naming the file, which is never overwritten ---------
    Case("ssot-truncated", (*DEPLOY, "{p}-new"), plant("ssot.json", '{"ports": {"used": [41'),
         1, "{root}/ssot.json: not valid JSON", audited="failed"),
    Case("ssot-json-list", ("ports",), plant("ssot.json", "[4100, 4101]"), 1,
         "{root}/ssot.json: expected"),
    Case("ssot-empty", ("ports",), plant("ssot.json", ""), 1, "{root}/ssot.json: not valid JSON"),
    Case("ssot-non-numeric-port", (*DEPLOY, "{p}-new"),
         plant("ssot.json", '{"ports": {"used": [], "allocated": {"41x0": "shop"}}}'), 1,
         "{root}/ssot.json: ports.allocated entry '41x0'", audited="failed"),
    Case("ssot-a-directory", ("ports",), plant_dir("ssot.json"), 1,
         "{root}/ssot.json: cannot read"),
    Case("slot-file-not-json", ("promote", "{p}-a"), plant("slots/{p}-a-prod.json", "{broken"),
         1, "{root}/slots/{p}-a-prod.json: not valid JSON", audited="failed"),
    Case("slot-file-names-another-project", (*DEPLOY, "{p}-b"),
         plant("slots/{p}-b-prod.json", slot_file("{p}-other")), 1,
         "{root}/slots/{p}-b-prod.json: names '{p}-other'", audited="failed"),
    Case("slot-file-both-active", ("rollback", "{p}-c"),
         plant("slots/{p}-c-prod.json", slot_file("{p}-c", "active", "active")), 1,
         "{root}/slots/{p}-c-prod.json: both slots are active", audited="failed"),
    Case("slot-file-odd-blue-port", ("status", "{p}-d"),
         plant("slots/{p}-d-prod.json", slot_file("{p}-d", port=4101)), 1,
         "{root}/slots/{p}-d-prod.json: blue must hold an even port"),
    Case("slot-file-not-utf8", ("status",), plant("slots/{p}-e-prod.json", b"\xff\x00"),
         1, "{root}/slots/{p}-e-prod.json"),
    # A stray file whose name is no project (a hand-made copy) is the registry's problem, not
    # the operator's input: exit 1 naming the file.
    Case("slot-file-named-no-project", ("status",), plant("slots/Shop-prod.json", "{}"), 1,
         "{root}/slots/Shop-prod.json"),
    Case("locks-a-plain-file", (*DEPLOY, "{p}-f"), plant("locks", "not a directory"), 1,
         "{root}/locks", audited="failed"),
    # Another project's broken file is that project's problem: a new project deploys.
    Case("corrupt-slot-file-of-another-project", (*DEPLOY, "{p}-g"),
         plant("slots/{p}-other-prod.json", "{broken"), 0, ""),
    # --- API keys: exit 2, "Access Denied:"; denials of operations are audited ---------------
    Case("key-empty-flag", (*DEPLOY, "{p}-k", "--api-key", ""), with_keys, 2,
         "Access Denied: an API key is required", audited="denied"),
    Case("key-empty-env", (*DEPLOY, "{p}-k"), with_keys, 2,
         "Access Denied: an API key is required", audited="denied", env={"CODEB_API_KEY": ""}),
    Case("key-blank-env", ("status",), with_keys, 2, "Access Denied: an API key is required",
         env={"CODEB_API_KEY": "   "}),
    Case("key-malformed", ("status", "--api-key", "cb_short"), with_keys, 2,
         "Access Denied: malformed API key"),
    Case("key-shell-characters", ("ports", "--api-key", "$(id);`id`"), with_keys, 2,
         "Access Denied: malformed API key"),
    Case("key-unknown", (*DEPLOY, "{p}-k", "--api-key", "cb_abcdefgh_" + "A" * 32), with_keys,
         2, "Access Denied: unknown API key cb_abcdefgh_...", audited="denied"),
    Case("key-with-newline", (*DEPLOY, "{p}-k", "--api-key", "cb_abcdefgh_\n" + "A" * 32),
         with_keys, 2, "Access Denied: malformed API key", audited="denied"),
    Case("key-revoked", ("promote", "{p}-k", "--api-key", "{revoked}"), with_keys, 2,
         "was revoked", audited="denied"),
    Case("key-viewer-deploys", (*DEPLOY, "{p}-k", "--api-key", "{viewer}"), with_keys, 2,
         "Access Denied: role viewer may not deploy", audited="denied"),
    Case("key-member-cleans-production", ("cleanup", "--force", "--env", "production"),
         with_keys, 2, "Access Denied: role member may not cleanup", audited="denied",
         env={"CODEB_API_KEY": "{member}"}),
    Case("key-member-prunes", ("reconcile", "--prune", "--api-key", "{member}"), with_keys, 2,
         "Access Denied: role member may not"),
    Case("key-viewer-creates-team", ("team", "create", "x", "--api-key", "{viewer}"), with_keys,
         2, "Access Denied: role viewer may not"),
    # --- refused transitions and usage ---------------------------------------------------------
    Case("promote-unknown-project", ("promote", "{p}-t"), None, 2, "Run deploy first",
         audited="refused"),
    Case("rollback-unknown-project", ("rollback", "{p}-t"), None, 2, "No grace slot",
         audited="refused"),
    refused("cleanup-slot-without-force", ("cleanup", "{p}-t", "--slot", "blue"),
            "needs PROJECT and --force"),
    refused("cleanup-slot-purple", ("cleanup", "{p}-t", "--force", "--slot", "purple"),
            "invalid choice: 'purple'"),
    refused("unknown-command", ("deplo", "{p}-t"), "invalid choice: 'deplo'"),
    refused("unknown-option-escape", (*DEPLOY, "{p}-t", "--\x1b[31mred"),
            "unrecognized arguments: --\\x1b[31mred"),
]


# --- snapshots ---------------------------------------------------------------------------------

DIR = "<dir>"


def tree(root: Path) -> dict[str, bytes | str]:
    """Every directory and file under root (and root itself) with the file's bytes."""
    if not root.exists():
        return {}
    found: dict[str, bytes | str] = {".": DIR if root.is_dir() else root.read_bytes()}
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            found[str(path.relative_to(root))] = DIR if path.is_dir() else path.read_bytes()
    return found


def empty_lock_file(rel: str, value: bytes | str | None) -> bool:
    return ((rel in (".", "locks") and value == DIR)
            or (rel.startswith("locks/") and rel.endswith(".lock") and value == b""))


def rows(sqlite: Path) -> dict[str, list[str]] | None:
    """The result column of both history tables; None when the file does not exist."""
    if not sqlite.exists():
        return None
    with sqlite3.connect(f"file:{sqlite}?mode=ro", uri=True) as db:
        out = {}
        for table in ("deployments", "audit_logs"):
            try:
                out[table] = [r for (r,) in db.execute(f"select result from {table}")]
            except sqlite3.OperationalError:  # no schema yet
                out[table] = []
        return out


def codeb_containers(docker_client, prefix: str) -> list[dict]:
    # The low-level list: one call, no inspect per container that a concurrent test may have
    # removed meanwhile (docker's containers.list() raises NotFound then).
    return [c for c in docker_client.api.containers(all=True, filters={"label": "codeb.project"})
            if (c.get("Labels") or {}).get("codeb.project", "").startswith(prefix)]


# --- running the cases ---------------------------------------------------------------------------


@dataclass
class Outcome:
    world: World
    files_before: dict
    rows_before: dict | None
    out: subprocess.CompletedProcess | None = None
    files_after: dict = field(default_factory=dict)
    rows_after: dict | None = None
    containers: list = field(default_factory=list)


@pytest.fixture(scope="module")
def api_keys(tmp_path_factory):
    """Team "ops" with a viewer, a member and a revoked admin key, made once by the CLI."""
    home = tmp_path_factory.mktemp("keys")
    config = home / "config.yaml"
    config.write_text(yaml.safe_dump({"registry": {"root": str(home / "registry")},
                                      "database": {"sqlite_path": str(home / "codeb.sqlite3")}}))

    def cli(*args: str) -> str:
        out = run_cli(*args, config=config)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    cli("team", "create", "ops")
    keys = {role: cli("apikey", "create", "--team", "ops", "--role", role)
            for role in ("viewer", "member")}
    keys["revoked"] = cli("apikey", "create", "--team", "ops", "--role", "admin")
    cli("apikey", "revoke", keys["revoked"][:11])
    return home / "codeb.sqlite3", keys


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory, caddy, docker_host, docker_client, api_keys):
    """Every selected case, run at once: ~90 process starts one after the other outrun the
    time budget on a busy 2-core machine. Each case has its own registry, database and project
    prefix, so they are independent; the test then judges each outcome."""
    selected = [item.callspec.params["case"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")]
    stem = f"h{uuid.uuid4().hex[:5]}"
    prepared: dict[str, Outcome] = {}
    for index, case in enumerate(selected):  # setups and "before" snapshots, in order
        tmp = tmp_path_factory.mktemp(case.name)
        config = tmp / "config.yaml"
        config.write_text(yaml.safe_dump(config_dict(tmp, caddy, docker_host)))
        world = World(tmp=tmp, config=config, root=tmp / "registry", sqlite=tmp / "codeb.sqlite3",
                      prefix=f"{stem}{index:03d}")
        if case.setup is with_keys:
            world.key_db, world.keys = api_keys
        if case.setup is not None:
            case.setup(world)
        prepared[case.name] = Outcome(world, tree(world.root), rows(world.sqlite))

    def run(case: Case) -> None:
        got = prepared[case.name]
        world = got.world
        config = case.config(world)
        got.out = run_cli(*(["--config", str(config)] if config else []),
                          *(world.fill(arg) for arg in case.argv),
                          env={k: world.fill(v) for k, v in case.env.items()})
        got.files_after, got.rows_after = tree(world.root), rows(world.sqlite)
        got.containers = codeb_containers(docker_client, world.prefix)

    try:
        with ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 2)) as pool:
            list(pool.map(run, selected))
        yield prepared
    finally:
        for container in codeb_containers(docker_client, stem):
            docker_client.api.remove_container(container["Id"], force=True)


def _param(case: Case):
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_hostile_input(case: Case, outcomes):
    got = outcomes[case.name]
    world, out = got.world, got.out
    assert out.returncode == case.expect_code, out
    assert not CONTROL.search(out.stdout + out.stderr), f"raw control character: {out}"
    assert world.fill(case.stdout_part) in out.stdout, out.stdout
    before, after = got.files_before, got.files_after
    if case.expect_code == 0:
        assert out.stderr == "", out.stderr
        # It wrote what a deploy writes; what was there before (the planted file) is untouched.
        assert {k: after.get(k) for k in before} == before
        return
    errors = out.stderr.splitlines()
    assert len(errors) == 1 and errors[0].startswith("codeb: "), out.stderr
    assert world.fill(case.expect_message_part) in errors[0], errors[0]

    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    if case.audited:  # past validation: the operation may have taken (and released) its lock
        changed = {k for k in changed if not empty_lock_file(k, after.get(k))}
    assert not changed, {k: (before.get(k), after.get(k)) for k in sorted(changed)}
    assert got.containers == []

    if case.audited is None:
        assert got.rows_after == got.rows_before
        return
    for table in ("deployments", "audit_logs"):
        new = Counter(got.rows_after[table]) - Counter((got.rows_before or {}).get(table, []))
        assert new == Counter({case.audited: 1}), (table, got.rows_after[table])
