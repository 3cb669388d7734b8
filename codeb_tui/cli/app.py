"""The `codeb` command group: each command turns its options into one call of the engine
facade and prints the answer (render.py); every failure is left to errors.guarded."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import click

from codeb_tui.cli import remote, render
from codeb_tui.cli.errors import Choice, Group
from codeb_tui.cli.startup import collector_paused
from codeb_tui.domain import events
from codeb_tui.domain.access import ROLES, Principal
from codeb_tui.domain.config import Config, load_config, parse_config
from codeb_tui.domain.errors import EXIT_FAILED, EXIT_OK, ConfigError
from codeb_tui.engine.facade import Engine, local_principal

API_KEY_ENV = "CODEB_API_KEY"


@dataclass(frozen=True)
class Session:
    """What every command needs besides its own arguments."""

    config: Config
    principal: Principal
    as_json: bool


def _remember(key: str, given: Callable[[object], bool]):
    def callback(ctx: click.Context, param: click.Parameter, value: object) -> None:
        if given(value):  # ctx.meta is shared: a copy after the subcommand overrides
            ctx.meta[key] = value
    return callback


_COMMON = (
    click.option("--config", metavar="FILE", expose_value=False,
                 callback=_remember("config", lambda v: v is not None),
                 help="config file (default: $CODEB_CONFIG, then ~/.config/codeb/config.yaml)"),
    click.option("--json", is_flag=True, expose_value=False, callback=_remember("json", bool),
                 help="one JSON object per line"),
    # An explicitly empty key is still a key (refused), hence `is not None` here and the
    # environment read by hand: click takes an empty variable for an unset one.
    click.option("--api-key", metavar="KEY", expose_value=False,
                 callback=_remember("api_key", lambda v: v is not None),
                 help=f"API key (default: ${API_KEY_ENV}); its role must allow the command"),
    click.option("--server", metavar="URL", expose_value=False,
                 callback=_remember("server", lambda v: v is not None),
                 help=f"ask a remote `codeb serve` (default: ${remote.SERVER_ENV}); "
                      f"{', '.join(remote.OFFERED)}"),
)


def common_options(fn):
    """--config, --json, --api-key and --server, accepted before and after the subcommand."""
    for option in reversed(_COMMON):
        fn = option(fn)
    return fn


def session() -> Session:
    meta = click.get_current_context().meta
    key = meta.get("api_key", os.environ.get(API_KEY_ENV))
    principal = local_principal() if key is None else Principal.with_api_key(key)
    config = meta.get("config")
    if config == "":  # `--config "$UNSET"`: never the defaults (/opt/codeb/registry) instead
        raise ConfigError("--config: expected a file name, got ''")
    return Session(load_config(config), principal, bool(meta.get("json")))


def config_listening_on(section: str, listen: str | None) -> Config:
    """The session's config, with `<section>.listen` replaced by a server's --listen (validated
    as the config key it overrides)."""
    config = session().config
    if listen is None:
        return config
    data = config.model_dump()
    data[section]["listen"] = listen
    return parse_config(data, source=config.source)


def run(work: Callable[[Engine, Session], Awaitable[int | None]], s: Session | None = None) -> int:
    """Run `work` with an engine closed on every way out; None from it means done (0)."""
    s = s or session()
    url = remote.server_url()

    async def main() -> int | None:
        async with (remote.RemoteEngine(url) if url else Engine(s.config)) as engine:
            return await work(engine, s)

    code = asyncio.run(main())
    return EXIT_OK if code is None else code


def operation(start: Callable[[Engine, Principal], AsyncIterator[events.Event]]) -> int:
    return run(lambda engine, s: render.print_stream(start(engine, s.principal), s.as_json))


def command(group: click.Group, name: str, text: str, description: str | None = None):
    def register(fn):
        return group.command(name, help=description or text, short_help=text)(common_options(fn))
    return register


def env_option(default: str | None = "production"):
    return click.option("--env", default=default, metavar="ENV",
                        help="production | staging | preview")


@click.group(cls=Group, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]},
             help="Blue-green deploys of Docker containers behind Caddy.")
@common_options
@click.pass_context
def codeb(ctx: click.Context) -> int | None:
    if ctx.invoked_subcommand is None:
        return _console(session())
    return None


def _console(s: Session) -> int:
    try:
        with collector_paused():  # the console pauses it again until its first frame
            from codeb_tui.tui.app import run_console
    except ImportError:  # the console is optional for headless installs
        return run(lambda engine, s: _show_status(engine, s, None, None), s)
    return run_console(s.config, s.principal)


# --- operations --------------------------------------------------------------------------------


@command(codeb, "deploy", "deploy an image into the idle slot")
@click.argument("project")
@click.option("--image", required=True, metavar="IMAGE")
@env_option()
@click.option("--yes", is_flag=True, help="confirm deploying into a grace slot")
@click.option("--host", "hosts", multiple=True, metavar="NAME",
              help="a host of a first deploy (repeatable; default: config projects.<name>.hosts, "
                   "else local)")
def deploy(project: str, image: str, env: str, yes: bool, hosts: tuple[str, ...]) -> int:
    return operation(lambda engine, who: engine.deploy(who, project, image, env,
                                                       confirm_grace=yes,
                                                       hosts=list(hosts) or None))


def _switch_command(name: str, text: str) -> None:
    @command(codeb, name, text)
    @click.argument("project")
    @env_option()
    def switch(project: str, env: str) -> int:
        return operation(lambda engine, who: getattr(engine, name)(who, project, env))


_switch_command("promote", "send production traffic to the deployed slot")
_switch_command("rollback", "send production traffic back to the grace slot")


@command(codeb, "cleanup", "empty expired grace slots")
@click.argument("project", required=False)
@env_option(default=None)
@click.option("--force", is_flag=True, help="also grace slots that have not expired")
@click.option("--slot", type=Choice(["blue", "green"]),
              help="with PROJECT and --force: this slot")
def cleanup(project: str | None, env: str | None, force: bool, slot: str | None) -> int:
    return operation(lambda engine, who: engine.cleanup(who, project, env, force=force, slot=slot))


# --- queries -----------------------------------------------------------------------------------


async def _show_status(engine: Engine, s: Session, project: str | None, env: str | None) -> None:
    slots, empty = await asyncio.gather(engine.status(s.principal, project, env),
                                        engine.proxy_empty(s.principal))
    render.emit(s.as_json, {"slots": [slot.to_json() for slot in slots], "proxy_empty": empty},
                lambda: render.status_text(slots))
    if empty:
        render.warn(["Caddy answers without codeb's routes (restarted empty?): nothing is served; "
                     "run `codeb reconcile --repair`"])


@command(codeb, "status", "every slot with its live health")
@click.argument("project", required=False)
@env_option(default=None)
def status(project: str | None, env: str | None) -> int:
    return run(lambda engine, s: _show_status(engine, s, project, env))


@command(codeb, "ports", "port ranges, allocations and conflicts")
@click.option("--host", metavar="NAME", default=None,
              help="whose containers and listening sockets (default: local)")
def ports(host: str | None) -> int:
    async def work(engine: Engine, s: Session) -> None:
        report = await engine.ports(s.principal, host)
        render.emit(s.as_json, report.to_json(), render.ports_text(report))
    return run(work)


@command(codeb, "reconcile",
         "compare the slot files with the database, containers and proxy; --repair fixes",
         "The slot files are the truth. Lists every disagreement with the database, codeb's "
         "containers, Caddy's live routes and the ports in use. --repair brings the database "
         "in line with the files and re-applies the proxy config; --prune removes containers "
         "no slot references. PROJECT: only these projects (names or shell patterns such as "
         "'shop-*'). Exit 1 while drift remains.")
@click.argument("projects", nargs=-1, metavar="[PROJECT]...")
@click.option("--repair", is_flag=True,
              help="fix the database from the files and re-apply the proxy config")
@click.option("--prune", is_flag=True,
              help="remove codeb-labelled containers that no slot references")
@click.option("--db-only", is_flag=True,
              help="compare the files with the database only (skip Docker, Caddy, ports)")
def reconcile(projects: tuple[str, ...], repair: bool, prune: bool, db_only: bool) -> int:
    async def work(engine: Engine, s: Session) -> int:
        report = await engine.reconcile(s.principal, repair=repair, prune=prune,
                                        projects=list(projects) or None, live=not db_only)
        render.emit(s.as_json, report.to_json(), render.reconcile_text(report))
        return EXIT_OK if report.in_sync else EXIT_FAILED
    return run(work)


# --- teams, API keys, the schema ---------------------------------------------------------------
# Run locally they need no key (the operator has a shell on the host); given a key, its role
# must allow the command (admin for teams and keys).


@codeb.group(help="teams (API keys belong to a team)")
def team() -> None:
    pass


@command(team, "create", "create a team", "create a team (NAME: lower-case letters, digits "
         "and '-')")
@click.argument("name")
def team_create(name: str) -> int:
    async def work(engine: Engine, s: Session) -> None:
        row = await engine.create_team(s.principal, name)
        render.emit(s.as_json, {"team": render.team_json(row)}, f"created team {row.name}")
    return run(work)


@command(team, "list", "every team with its number of active keys")
def team_list() -> int:
    async def work(engine: Engine, s: Session) -> None:
        teams = await engine.list_teams(s.principal)
        render.emit(s.as_json, {"teams": [render.team_json(t.team, t.active_keys) for t in teams]},
                    render.teams_text(teams))
    return run(work)


@codeb.group(help="API keys: create (shown once), list, revoke")
def apikey() -> None:
    pass


@command(apikey, "create", "create an API key; it is printed once")
@click.option("--team", "team_name", required=True, metavar="TEAM")
@click.option("--role", required=True, type=Choice(ROLES))
@click.option("--name", default="", help="what the key is for (e.g. github-actions)")
def apikey_create(team_name: str, role: str, name: str) -> int:
    async def work(engine: Engine, s: Session) -> None:
        new, row = await engine.create_api_key(s.principal, team_name, role, name)
        render.print_new_key(s.as_json, new.key, row)
    return run(work)


@command(apikey, "list", "keys: prefix, team, role, created, revoked")
@click.option("--team", "team_name", metavar="TEAM")
def apikey_list(team_name: str | None) -> int:
    async def work(engine: Engine, s: Session) -> None:
        keys = await engine.list_api_keys(s.principal, team_name)
        render.emit(s.as_json, {"api_keys": [render.key_json(k) for k in keys]},
                    render.keys_text(keys, team_name))
    return run(work)


@command(apikey, "revoke", "revoke a key by its prefix",
         "revoke a key by its prefix (PREFIX: cb_xxxxxxxx, xxxxxxxx or the key's id)")
@click.argument("prefix", metavar="PREFIX")
def apikey_revoke(prefix: str) -> int:
    async def work(engine: Engine, s: Session) -> None:
        row = await engine.revoke_api_key(s.principal, prefix)
        render.emit(s.as_json, {"revoked": render.key_json(row)},
                    f"revoked API key cb_{row.prefix} (team {row.team}, role {row.role})")
    return run(work)


@codeb.group(help="the database schema: status, migrate")
def db() -> None:
    pass


@command(db, "migrate", "apply the pending migrations")
def db_migrate() -> int:
    async def work(engine: Engine, s: Session) -> None:
        done = await engine.db_migrate(s.principal)
        render.emit(s.as_json, {"backend": done.backend, "where": done.where,
                                "applied": list(done.applied), "version": done.version},
                    render.db_migrate_text(done))
    return run(work)


@command(db, "status", "backend, schema version, pending migrations")
def db_status() -> int:
    async def work(engine: Engine, s: Session) -> None:
        state = await engine.db_status(s.principal)
        render.emit(s.as_json, {"backend": state.backend, "where": state.where,
                                "version": state.version, "latest": state.latest,
                                "pending": [v for v, _ in state.pending]},
                    render.db_status_text(state))
    return run(work)
