"""Switching traffic: the Caddy config generated from the registry, and the switch markers.

In `file` mode (the default) a promote or rollback never reloads Caddy: every production host
routes to both slots, each route gated by a marker file Caddy checks per request, and a switch
creates one marker and removes the other. The config itself is loaded only when it differs from
the live one (a new project+environment), with a backup that is restored if Caddy refuses it.
A switch that keeps the project's ports first asks Caddy for the project's routes alone (by
their @id) and, when they are as built, sets the markers without reading the other projects'
slot files or Caddy's whole config.
Everything here runs under the proxy lock, so two switches never interleave.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from codeb_tui.domain.errors import ProxyApplyFailed
from codeb_tui.domain.model import LOCAL_HOST, Environment, ProjectSlots
from codeb_tui.domain.proxy import (
    SERVER_NAME,
    build_caddy_config,
    live_parts,
    project_markers,
    route_count,
    route_tag_prefix,
    routes_of,
    wanted_markers,
)
from codeb_tui.domain.config import Config
from codeb_tui.engine.context import Context
from codeb_tui.engine.hosts import labelled, on_hosts
from codeb_tui.engine.operation import OperationRun
from codeb_tui.infra.caddy import decode as caddy_decode
from codeb_tui.infra.caddy import encode as caddy_encode
from codeb_tui.infra.host import Host
from codeb_tui.registry.files import CorruptFile, atomic_write_json


async def commit(ctx: Context, run: OperationRun, before: ProjectSlots | None,
                 after: ProjectSlots, expected_version: int) -> ProjectSlots:
    """Switch the proxy of every host of the project to what the registry will be, then write
    the slot file.

    A rejected config or a failed write restores the previous config and markers; on a
    project with several hosts, a host that fails part-way has every host switched back, and
    the error names it. The slot file changes only when every host switched."""
    registry = ctx.registry
    async with registry.global_lock("proxy", f"{run.operation} {run.project} ({run.environment})",
                                    actor=run.actor, on_wait=run.log):
        names = after.hosts
        routes_kept = _routes_kept(ctx, before, after)
        registry_read: asyncio.Future | None = None  # all slot files: once, for the full path
        switched: dict[str, HostSwitch] = {}

        async def switch_one(host: Host) -> None:
            nonlocal registry_read
            # Recorded before anything happens: a host that fails part-way is undone too.
            switched[host.name] = done = HostSwitch(host, None)
            if routes_kept and await _runs_as_built(ctx, host, after):
                # The usual switch: neither the other projects' slot files nor Caddy's whole
                # config (~300 kB with 200 projects) is needed, only the markers.
                run.log(f"{_label(ctx, host)}proxy routes unchanged: no reload")
                await _set_markers(ctx, host, after.project, after.environment, [after])
                return
            # What Caddy runs is asked while the registry is read (the proxy lock keeps other
            # codeb processes from changing it meanwhile): the two longest waits of this path.
            live_text = asyncio.ensure_future(host.caddy.current_text())
            if registry_read is None:
                registry_read = asyncio.ensure_future(registry.aread_all_readable())
            try:
                pairs, corrupt = await registry_read
            except BaseException:
                live_text.cancel()
                await asyncio.gather(live_text, return_exceptions=True)
                raise
            wanted = [p for p in pairs
                      if (p.project, p.environment) != (after.project, after.environment)]
            await _switch_host(ctx, run, done, wanted + [after], corrupt, after, live_text)

        try:
            await on_hosts(ctx, names, switch_one)
            written = await registry.awrite_slots(after, expected_version=expected_version)
        except BaseException as exc:
            run.log(f"{exc}; restoring the previous proxy state", level="error")
            if labelled(names):
                back = await asyncio.gather(
                    *[_switch_back(ctx, run, done, before, after, exc)
                      for done in switched.values()], return_exceptions=True)
                for done, failed in zip(switched.values(), back):
                    if isinstance(failed, BaseException):
                        run.log(f"{done.host.name}: could not switch back: {failed}",
                                level="error")
            else:
                await _switch_back(ctx, run, switched.get(LOCAL_HOST, HostSwitch(ctx.host, None)),
                                   before, after, exc)
            raise
        for done in switched.values():
            if done.backup is not None:  # a new config went live: keep a copy of what Caddy runs
                await _write_json(_live_copy(ctx, done.host.name), done.config)
        run.written.append(written)
        return written


def _routes_kept(ctx: Context, before: ProjectSlots | None, after: ProjectSlots) -> bool:
    """In file mode a project's routes follow its ports and hosts, not its slot states: a switch
    that keeps them changes no route, wherever Caddy runs them as built."""
    return (ctx.config.caddy.switch_mode == "file" and before is not None
            and before.hosts == after.hosts and before.ports == after.ports)


async def _runs_as_built(ctx: Context, host: Host, pair: ProjectSlots) -> bool:
    """Whether `host`'s Caddy runs the routes of `pair`, and the server around them, exactly as
    build_caddy_config makes them: a few small GETs at once instead of the whole config. Not
    so (Caddy restarted empty, a route edited by hand, a config change): the full path."""
    parts = live_parts(ctx.proxy_config(host.name), pair)
    live = await asyncio.gather(*[host.caddy.part(path) for path, _ in parts])
    return all(found == built for found, (_, built) in zip(live, parts))


@dataclass
class HostSwitch:
    """What a switch did on one host's proxy, for its undo."""

    host: Host
    backup: dict | None
    """The config live before, when a new one was loaded."""
    config: dict | None = None


async def _switch_host(ctx: Context, run: OperationRun, done: HostSwitch,
                       pairs: list[ProjectSlots], corrupt: list[CorruptFile],
                       after: ProjectSlots, live_text: Awaitable[bytes]) -> None:
    """One host's proxy: the config of the projects on it (loaded only if it changed), then the
    project's switch markers. `done` records the backup as soon as a config is loaded.
    `live_text`: what the host's Caddy answered to GET /config/, asked beforehand."""
    host = done.host
    view = ctx.proxy_config(host.name)
    pairs = on_host(pairs, host.name)
    built = None if corrupt else _file_mode_config(host.name, view, pairs)
    live_text = await live_text
    if built is not None and live_text == built.text:
        # The usual switch: Caddy runs exactly this config; no ~300 kB JSON parsed or compared.
        run.log(f"{_label(ctx, host)}proxy config unchanged: no reload")
        done.config = built.config
    else:
        live = caddy_decode(live_text)
        done.config = (built.config if built is not None
                       else build_caddy_config(view, pairs, _kept_routes(live, corrupt)))
        done.backup = await _load_if_changed(ctx, run, host, done.config, live)
    await _set_markers(ctx, host, after.project, after.environment, [after])


@dataclass(frozen=True)
class _Built:
    view: Config
    key: tuple
    config: dict
    text: bytes  # as Caddy's GET /config/ answers it


_built: dict[str, _Built] = {}
"""The last file-mode config built per host, with what it was built from. In file mode it
depends only on the config and which project+environments (and ports) exist, not on slot
states: a promote or rollback reuses it instead of rebuilding routes for every project."""


def _file_mode_config(host: str, view: Config, pairs: list[ProjectSlots]) -> _Built | None:
    if view.caddy.switch_mode != "file":
        return None  # reload mode: the routes follow slot states, so every switch builds
    key = tuple(sorted((p.project, p.environment.value, *(s.port for s in p.slots()))
                       for p in pairs))
    built = _built.get(host)
    if built is None or built.key != key or not (built.view is view or built.view == view):
        config = build_caddy_config(view, pairs)
        built = _built[host] = _Built(view, key, config, caddy_encode(config))
    return built


async def _switch_back(ctx: Context, run: OperationRun, done: HostSwitch,
                       before: ProjectSlots | None, after: ProjectSlots,
                       cause: BaseException) -> None:
    """Undo one host's part of a switch: markers as before, the previous config if one was
    loaded."""
    await _set_markers(ctx, done.host, after.project, after.environment,
                       [before] if before else [])
    if done.backup is not None:
        await _restore(ctx, run, done.host, done.backup, cause)


def on_host(pairs: list[ProjectSlots], host: str) -> list[ProjectSlots]:
    """The project+environments whose slots run on `host` (its proxy routes only those)."""
    return [p for p in pairs if host in p.hosts]


def _live_copy(ctx: Context, host: str) -> Path:
    """Where the copy of what a host's Caddy runs is kept."""
    name = "caddy.json" if host == LOCAL_HOST else f"caddy@{host}.json"
    return ctx.config.caddy.config_dir / name


async def apply_proxy(ctx: Context, actor: str) -> dict:
    """Make the proxy of every host serve the registry as it is: config and switch markers
    (reconcile, start-up after a Caddy restart). Returns the local host's config."""
    async with ctx.registry.global_lock("proxy", "apply proxy config", actor=actor):
        pairs, corrupt = await ctx.registry.aread_all_readable()
        names = [LOCAL_HOST, *sorted({h for p in pairs for h in p.hosts} - {LOCAL_HOST})]
        configs = await on_hosts(ctx, names, lambda host: _apply_on(ctx, host, pairs, corrupt))
        return configs[0]


async def _apply_on(ctx: Context, host: Host, pairs: list[ProjectSlots],
                    corrupt: list[CorruptFile]) -> dict:
    view = ctx.proxy_config(host.name)
    pairs = on_host(pairs, host.name)
    config = build_caddy_config(view, pairs, _kept_routes(await host.caddy.current(), corrupt))
    await host.caddy.load(config)
    if ctx.config.caddy.switch_mode == "file":
        directory = view.caddy.markers
        wanted = wanted_markers(pairs)
        kept = tuple(f"{route_tag_prefix(c.project, c.environment)}." for c in corrupt)
        present = {n for n in await host.list_files(directory) if not n.startswith(kept)}
        for name in sorted(wanted - present):
            await host.create_file(directory / name)
        for name in sorted(n for n in present - wanted if n.endswith((".live", ".preview"))):
            await host.remove_file(directory / name)
    await _write_json(_live_copy(ctx, host.name), config)
    return config


async def proxy_serves_codeb(ctx: Context, host: Host | None = None) -> bool | None:
    """Whether Caddy (on `host`, the local one by default) carries codeb's server (False: it
    answers but was restarted empty, or someone loaded another config; None: it does not
    answer). The registry is then not being served: `reconcile --repair` loads it again."""
    try:
        live = await (host or ctx.host).caddy.current()
    except ProxyApplyFailed:
        return None
    try:
        return SERVER_NAME in live["apps"]["http"]["servers"]
    except (KeyError, TypeError):
        return False


def _kept_routes(live: dict | None, corrupt: list[CorruptFile]) -> list[dict]:
    """A slot file that cannot be read must not take its project offline: its routes stay as
    Caddy has them until the file is restored."""
    return routes_of(live, {route_tag_prefix(c.project, c.environment) for c in corrupt})


async def _load_if_changed(ctx: Context, run: OperationRun, host: Host, config: dict,
                           live: dict | None) -> dict | None:
    """Load `config` into `host`'s Caddy unless it is already `live`. Returns the backup of what
    was live when a load happened, None when nothing was loaded."""
    label = _label(ctx, host)
    if live == config:
        run.log(f"{label}proxy config unchanged: no reload")
        return None
    backup = live or {"admin": config["admin"]}
    run.log(f"{label}backed up the live proxy config to "
            f"{await _save_backup(ctx, host.name, backup)}")
    try:
        await host.caddy.load(config)
    except ProxyApplyFailed as exc:
        await _restore(ctx, run, host, backup, exc)
        raise
    run.log(f"{label}proxy config applied ({route_count(config)} routes)")
    return backup


async def _restore(ctx: Context, run: OperationRun, host: Host, backup: dict,
                   cause: BaseException) -> None:
    label = _label(ctx, host)
    run.log(f"{label}{cause}; re-applying the previous proxy config", level="error")
    try:
        await host.caddy.load(backup)
    except ProxyApplyFailed as again:
        raise ProxyApplyFailed(f"{cause}; re-applying the backup failed too: {again}") from None
    run.log(f"{label}previous proxy config re-applied")


def _label(ctx: Context, host: Host) -> str:
    """Messages about a remote host's proxy name it; the local one's read as they always did."""
    return "" if host is ctx.host else f"{host.name}: "


async def _set_markers(ctx: Context, host: Host, project: str, environment: Environment,
                       pairs: list[ProjectSlots]) -> None:
    """Make the switch markers of one project+environment on `host` match `pairs` (file mode).
    New markers are created before stale ones are removed, so there is never a moment with no
    route: while both exist, the route listed first (blue) answers."""
    if ctx.config.caddy.switch_mode != "file":
        return
    directory = ctx.proxy_config(host.name).caddy.markers
    wanted = wanted_markers(pairs)
    # The names a project+environment can have are known: no listing of the folder (over
    # SFTP a round trip and ~2 ms of CPU for a few hundred names). Creating one that exists
    # changes nothing; removing one that does not neither.
    await asyncio.gather(*[host.create_file(directory / name) for name in sorted(wanted)])
    await asyncio.gather(*[host.remove_file(directory / name)
                           for name in sorted(project_markers(project, environment) - wanted)])


async def _save_backup(ctx: Context, host: str, config: dict) -> str:
    caddy = ctx.config.caddy
    backups = caddy.config_dir / "backups"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    kind = "caddy" if host == LOCAL_HOST else f"caddy@{host}"
    path = backups / f"{kind}-{stamp}.json"

    def save() -> None:
        atomic_write_json(path, config)
        for stale in sorted(backups.glob(f"{kind}-*.json"))[: -caddy.keep_backups]:
            stale.unlink(missing_ok=True)

    await asyncio.to_thread(save)
    return str(path)


async def _write_json(path, data) -> None:
    await asyncio.to_thread(atomic_write_json, path, data)
