"""Switching traffic: the Caddy config generated from the registry, and the switch markers.

In `file` mode (the default) a promote or rollback never reloads Caddy: every production host
routes to both slots, each route gated by a marker file Caddy checks per request, and a switch
creates one marker and removes the other. The config itself is loaded only when it differs from
the live one (a new project+environment), with a backup that is restored if Caddy refuses it.
Everything here runs under the proxy lock, so two switches never interleave.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from codeb_tui.domain.errors import ProxyApplyFailed
from codeb_tui.domain.model import Environment, ProjectSlots
from codeb_tui.domain.proxy import (
    SERVER_NAME,
    build_caddy_config,
    route_count,
    route_tag_prefix,
    routes_of,
    wanted_markers,
)
from codeb_tui.engine.context import Context
from codeb_tui.engine.operation import OperationRun
from codeb_tui.registry.files import CorruptFile, atomic_write_json


async def commit(ctx: Context, run: OperationRun, before: ProjectSlots | None,
                 after: ProjectSlots, expected_version: int) -> ProjectSlots:
    """Switch the proxy to what the registry will be, then write the slot file.

    A rejected config or a failed write restores the previous config and markers."""
    registry = ctx.registry
    async with registry.global_lock("proxy", f"{run.operation} {run.project} ({run.environment})",
                                    actor=run.actor, on_wait=run.log):
        pairs, corrupt = await registry.aread_all_readable()
        others = [p for p in pairs if (p.project, p.environment) != (after.project, after.environment)]
        live = await ctx.host.caddy.current()
        config = build_caddy_config(ctx.config, others + [after], _kept_routes(live, corrupt))
        backup = await _load_if_changed(ctx, run, config, live)
        try:
            await _set_markers(ctx, after.project, after.environment, [after])
            written = await registry.awrite_slots(after, expected_version=expected_version)
        except BaseException as exc:
            run.log(f"{exc}; restoring the previous proxy state", level="error")
            await _set_markers(ctx, after.project, after.environment, [before] if before else [])
            if backup is not None:
                await _restore(ctx, run, backup, exc)
            raise
        if backup is not None:  # a new config went live: keep a copy of what Caddy runs
            await _write_json(ctx.config.caddy.config_dir / "caddy.json", config)
        run.written.append(written)
        return written


async def apply_proxy(ctx: Context, actor: str) -> dict:
    """Make the proxy serve the registry as it is: config and switch markers (reconcile,
    start-up after a Caddy restart)."""
    async with ctx.registry.global_lock("proxy", "apply proxy config", actor=actor):
        pairs, corrupt = await ctx.registry.aread_all_readable()
        config = build_caddy_config(ctx.config, pairs,
                                    _kept_routes(await ctx.host.caddy.current(), corrupt))
        await ctx.host.caddy.load(config)
        if ctx.config.caddy.switch_mode == "file":
            directory = ctx.config.caddy.markers
            wanted = wanted_markers(pairs)
            kept = tuple(f"{route_tag_prefix(c.project, c.environment)}." for c in corrupt)
            present = {n for n in await ctx.host.list_files(directory) if not n.startswith(kept)}
            for name in sorted(wanted - present):
                await ctx.host.create_file(directory / name)
            for name in sorted(n for n in present - wanted if n.endswith((".live", ".preview"))):
                await ctx.host.remove_file(directory / name)
        await _write_json(ctx.config.caddy.config_dir / "caddy.json", config)
        return config


async def proxy_serves_codeb(ctx: Context) -> bool | None:
    """Whether Caddy carries codeb's server (False: it answers but was restarted empty, or
    someone loaded another config; None: it does not answer). The registry is then not being
    served: `reconcile --repair` loads it again."""
    try:
        live = await ctx.host.caddy.current()
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


async def _load_if_changed(ctx: Context, run: OperationRun, config: dict,
                           live: dict | None) -> dict | None:
    """Load `config` into Caddy unless it is already `live`. Returns the backup of what was live
    when a load happened, None when nothing was loaded."""
    caddy = ctx.host.caddy
    if live == config:
        run.log("proxy config unchanged: no reload")
        return None
    backup = live or {"admin": config["admin"]}
    run.log(f"backed up the live proxy config to {await _save_backup(ctx, backup)}")
    try:
        await caddy.load(config)
    except ProxyApplyFailed as exc:
        await _restore(ctx, run, backup, exc)
        raise
    run.log(f"proxy config applied ({route_count(config)} routes)")
    return backup


async def _restore(ctx: Context, run: OperationRun, backup: dict, cause: BaseException) -> None:
    run.log(f"{cause}; re-applying the previous proxy config", level="error")
    try:
        await ctx.host.caddy.load(backup)
    except ProxyApplyFailed as again:
        raise ProxyApplyFailed(f"{cause}; re-applying the backup failed too: {again}") from None
    run.log("previous proxy config re-applied")


async def _set_markers(ctx: Context, project: str, environment: Environment,
                       pairs: list[ProjectSlots]) -> None:
    """Make the switch markers of one project+environment match `pairs` (file mode). New
    markers are created before stale ones are removed, so there is never a moment with no
    route: while both exist, the route listed first (blue) answers."""
    if ctx.config.caddy.switch_mode != "file":
        return
    directory = ctx.config.caddy.markers
    prefix = f"{route_tag_prefix(project, environment)}."
    present = {n for n in await ctx.host.list_files(directory) if n.startswith(prefix)}
    wanted = wanted_markers(pairs)
    for name in sorted(wanted - present):
        await ctx.host.create_file(directory / name)
    for name in sorted(present - wanted):
        await ctx.host.remove_file(directory / name)


async def _save_backup(ctx: Context, config: dict) -> str:
    caddy = ctx.config.caddy
    backups = caddy.config_dir / "backups"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    path = backups / f"caddy-{stamp}.json"

    def save() -> None:
        atomic_write_json(path, config)
        for stale in sorted(backups.glob("caddy-*.json"))[: -caddy.keep_backups]:
            stale.unlink(missing_ok=True)

    await asyncio.to_thread(save)
    return str(path)


async def _write_json(path, data) -> None:
    await asyncio.to_thread(atomic_write_json, path, data)
