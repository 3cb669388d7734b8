"""Reconciliation: the slot files against the database and against the world (docs/architecture.md).

The slot files are the truth. `reconcile()` reads them once, reads the database with one query,
lists codeb's containers with one Docker call, reads Caddy's live config once and the port
report once, and compares everything as dictionaries, so 10,000 slots take well under the 2 s
budget. With `repair=True` it brings the database in line with the files (one transaction) and
re-applies the proxy config generated from the files; with `prune=True` it removes codeb-labelled
containers that no slot references. What it cannot fix (a stopped container, another program on a
slot's port) it says plainly.

A project+environment whose lock is held by a running operation is skipped for the container
checks (a deploy in flight briefly has an unreferenced container and a stopped old one).
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from codeb_tui.engine import port_book, proxy_switch, recovery
from codeb_tui.engine.audit import slot_rows
from codeb_tui.engine.context import Context
from codeb_tui.domain.errors import CodebError
from codeb_tui.domain.model import LOCAL_HOST, Environment, ProjectSlots, SlotState, container_name
from codeb_tui.domain.proxy import live_routes
from codeb_tui.domain.status import PortConflictKind, PortsReport
from codeb_tui.infra.docker_engine import (
    LABEL_ENVIRONMENT,
    LABEL_INSTALLATION,
    LABEL_PROJECT,
    LABEL_SLOT,
    ContainerInfo,
)
from codeb_tui.infra.host import Host
from codeb_tui.registry.files import Ssot
from codeb_tui.store.base import AuditRecord, SlotRow, StoreError

# SlotRow fields compared between a file and the database, in SlotRow's order.
COMPARED_FIELDS = tuple(f.name for f in fields(SlotRow)
                        if f.name not in ("project", "environment", "slot"))

SlotKey = tuple[str, str, str]  # (project, environment, slot)


class DriftKind(StrEnum):
    MISSING_ROW = "missing_row"
    STALE_ROW = "stale_row"
    FIELD_MISMATCH = "field_mismatch"
    ORPHAN_CONTAINER = "orphan_container"
    MISSING_CONTAINER = "missing_container"
    PROXY_DRIFT = "proxy_drift"
    PORT_CONFLICT = "port_conflict"
    DATABASE_UNREACHABLE = "database_unreachable"
    DOCKER_UNREACHABLE = "docker_unreachable"
    PROXY_UNREACHABLE = "proxy_unreachable"
    CORRUPT_FILE = "corrupt_file"
    HISTORY_NOT_REPLAYED = "history_not_replayed"
    STOPPED_CONTAINER = "stopped_container"
    LEAKED_PORTS = "leaked_ports"


@dataclass
class Drift:
    kind: DriftKind
    project: str | None
    environment: str | None
    slot: str | None
    detail: str
    fixable: bool
    fixed: bool = False
    field: str | None = None  # field_mismatch: the SlotRow field
    file_value: Any = None
    db_value: Any = None
    container: str | None = None  # orphan_container / missing_container: its name
    container_id: str | None = None
    port: int | None = None  # proxy_drift / port_conflict
    host: str | None = None
    """The remote host a container, route or port drift is on (None: this machine)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value, "project": self.project, "environment": self.environment,
            "slot": self.slot, "detail": self.detail, "fixable": self.fixable, "fixed": self.fixed,
            "field": self.field, "file_value": _plain(self.file_value),
            "db_value": _plain(self.db_value), "container": self.container,
            "container_id": self.container_id, "port": self.port, "host": self.host,
        }


@dataclass
class ReconcileReport:
    drift: list[Drift] = field(default_factory=list)
    repair: bool = False
    prune: bool = False
    database: str | None = None
    checked: dict[str, int] = field(default_factory=dict)
    busy: list[str] = field(default_factory=list)  # project (env) skipped: operation running
    errors: list[str] = field(default_factory=list)  # repairs that were tried and failed
    timings_ms: dict[str, float] = field(default_factory=dict)
    elapsed_ms: float = 0.0

    @property
    def remaining(self) -> list[Drift]:
        return [d for d in self.drift if not d.fixed]

    @property
    def in_sync(self) -> bool:
        return not self.remaining

    def of_kind(self, kind: DriftKind | str) -> list[Drift]:
        return [d for d in self.drift if d.kind == kind]

    def summary(self) -> dict[str, Any]:
        by_kind: dict[str, int] = {}
        for d in self.drift:
            by_kind[d.kind.value] = by_kind.get(d.kind.value, 0) + 1
        return {
            "in_sync": self.in_sync,
            "drift": len(self.drift),
            "fixed": sum(d.fixed for d in self.drift),
            "remaining": len(self.remaining),
            "unfixable": sum(not d.fixable for d in self.remaining),
            "by_kind": by_kind,
            "repair": self.repair,
            "prune": self.prune,
            "database": self.database,
            "checked": self.checked,
            "busy": self.busy,
            "errors": self.errors,
            "elapsed_ms": round(self.elapsed_ms, 1),
        }

    def to_json(self) -> dict[str, Any]:
        return {"drift": [d.to_json() for d in self.drift], "summary": self.summary()}


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return value


def _shown(value: Any) -> str:
    return "(none)" if value is None else str(_plain(value))


def _scope(patterns: Sequence[str] | None) -> Callable[[str | None], bool]:
    """Which projects this run looks at: all, or those matching a shell pattern ('shop-*')."""
    if not patterns:
        return lambda project: True
    exact = {p for p in patterns if not any(ch in p for ch in "*?[")}
    globs = [p for p in patterns if p not in exact]

    def in_scope(project: str | None) -> bool:
        if project is None:
            return False
        return project in exact or any(fnmatch.fnmatchcase(project, g) for g in globs)

    return in_scope


_PROJECT_RE = r"(?P<project>[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?)"


def _host_patterns(ctx: Context) -> list[tuple[re.Pattern[str], str]]:
    """(regex, environment): recover the project from a host name of the configured domains."""
    patterns = []
    for env in Environment:
        env_config = ctx.config.env(env)
        for template in (env_config.domain, env_config.preview_domain):
            host = urlsplit(f"http://{template}").hostname or template
            regex = re.escape(host)
            regex = regex.replace(re.escape("{project}"), _PROJECT_RE, 1)
            regex = regex.replace(re.escape("{project}"), "(?P=project)")
            regex = regex.replace(re.escape("{slot}"), "(?:blue|green)")
            regex = regex.replace(re.escape("{env}"), re.escape(env.value))
            patterns.append((re.compile(f"^{regex}$"), env.value))
    return patterns


@dataclass(frozen=True)
class LiveRoute:
    hosts: tuple[str, ...]
    port: int | None  # the reverse_proxy upstream's port
    route_id: str | None
    marker: tuple[str, tuple[str, ...]] | None  # Caddy `file` matcher: (root, try_files)


def _parse_live_routes(config: dict[str, Any] | None) -> list[LiveRoute]:
    """The routes of Caddy's live config, in the order Caddy tries them."""
    found: list[LiveRoute] = []
    if not isinstance(config, dict):
        return found
    servers = (((config.get("apps") or {}).get("http") or {}).get("servers") or {})

    def upstream_port(handlers: list[Any]) -> int | None:
        for handler in handlers or []:
            if not isinstance(handler, dict):
                continue
            if handler.get("handler") == "reverse_proxy":
                for upstream in handler.get("upstreams") or []:
                    dial = str((upstream or {}).get("dial", ""))
                    port = dial.rsplit(":", 1)[-1]
                    if port.isdigit():
                        return int(port)
            if handler.get("handler") == "subroute":
                for route in handler.get("routes") or []:
                    port = upstream_port((route or {}).get("handle") or [])
                    if port is not None:
                        return port
        return None

    for server in servers.values():
        for route in (server or {}).get("routes") or []:
            if not isinstance(route, dict):
                continue
            for match in route.get("match") or [{}]:
                if not isinstance(match, dict) or not match.get("host"):
                    continue
                marker = None
                if isinstance(match.get("file"), dict):
                    spec = match["file"]
                    marker = (str(spec.get("root", "")),
                              tuple(str(t) for t in spec.get("try_files") or []))
                found.append(LiveRoute(tuple(str(h).lower() for h in match["host"]),
                                       upstream_port(route.get("handle") or []),
                                       route.get("@id"), marker))
    return found


async def _live_proxy(ctx: Context, host: Host | None = None
                      ) -> dict[str, tuple[int | None, str | None]]:
    """host -> (port, route @id) as traffic flows right now: Caddy's live config (on `host`,
    the local one by default), each route gated by a `file` matcher taken only if its marker
    file exists (switch_mode file)."""
    host = host or ctx.host
    routes = _parse_live_routes(await host.caddy.current())
    roots = sorted({r.marker[0] for r in routes if r.marker is not None})
    listed = await asyncio.gather(*[host.list_files(Path(root)) for root in roots])
    present = dict(zip(roots, listed))
    live: dict[str, tuple[int | None, str | None]] = {}
    for route in routes:
        if route.marker is not None:
            root, names = route.marker
            if not any(name.lstrip("/") in present.get(root, set()) for name in names):
                continue
        for host in route.hosts:
            live.setdefault(host, (route.port, route.route_id))
    return live


def _expected_proxy(ctx: Context, all_pairs: list[ProjectSlots],
                    host: str = LOCAL_HOST) -> dict[str, tuple[int, str]]:
    """host name -> (port, tag) as traffic should flow for the files, in either switch mode,
    through the proxy on `host`."""
    return live_routes(ctx.proxy_config(host), all_pairs)


async def _fetch_host(ctx: Context, name: str) -> list[tuple[Any, BaseException | None]]:
    """A remote host's containers, live routes and ports, each within its request timeout."""
    spec = ctx.config.hosts.get(name)
    timeout = spec.request_timeout + spec.connect_timeout if spec is not None else 5.0

    async def bounded(make) -> Any:
        host = ctx.host_named(name)
        return await asyncio.wait_for(make(host), timeout)

    return list(await asyncio.gather(
        _guard(bounded(lambda host: host.docker.list_slot_containers())),
        _guard(bounded(lambda host: _live_proxy(ctx, host))),
        _guard(bounded(lambda host: port_book.ports_report(ctx, host)))))


async def _guard(coro) -> tuple[Any, BaseException | None]:
    """The result, or the error: one source being down never stops the others' checks."""
    try:
        return await coro, None
    except Exception as exc:  # noqa: BLE001 - reported as the source being unreachable
        return None, exc


async def _database_rows(ctx: Context) -> tuple[Any, list[SlotRow]]:
    store = await ctx.history.store()
    try:
        return store, await store.list_slots()
    except StoreError:
        await ctx.history.forget()  # the next use reconnects
        raise


async def reconcile(ctx: Context, actor: str, repair: bool = False, prune: bool = False,
                    projects: Sequence[str] | None = None, live: bool = True) -> ReconcileReport:
    """Compare the slot files with the database, codeb's containers, Caddy's live config and
    the ports listening on the host; with `repair`, fix the database and the proxy; with
    `prune`, remove orphan containers. `projects` limits the run to names or shell patterns;
    `live=False` skips Docker, Caddy and the port check (database only)."""
    started = time.perf_counter()
    report = ReconcileReport(repair=repair, prune=prune)
    in_scope = _scope(projects)
    registry = ctx.registry
    lap = time.perf_counter()

    # 1. The database, Docker, Caddy and the port report are fetched all at once while the
    # files are read (once, in a worker thread: the console keeps drawing meanwhile).
    waits: list[Any] = [_guard(_database_rows(ctx)), _guard(registry.aread_ssot())]
    if live:
        waits += [_guard(ctx.host.docker.list_slot_containers()),
                  _guard(_live_proxy(ctx)),
                  _guard(port_book.ports_report(ctx))]
    fetching = asyncio.gather(*waits)
    try:
        all_pairs, corrupt_files = await registry.aread_all_readable()
    except BaseException:
        fetching.cancel()
        # retrieved, so a cancelled run (the console's drift check) logs no "never retrieved"
        fetching.add_done_callback(lambda f: f.cancelled() or f.exception())
        raise
    report.timings_ms["read_files"] = (time.perf_counter() - lap) * 1000
    results = await fetching
    report.timings_ms["read_and_fetch"] = (time.perf_counter() - lap) * 1000  # overlapped
    lap = time.perf_counter()

    # 2. A corrupt file is reported; its rows and containers are left alone.
    corrupt = {(bad.project, bad.environment.value) for bad in corrupt_files}
    for bad in corrupt_files:
        if in_scope(bad.project):
            report.drift.append(Drift(
                DriftKind.CORRUPT_FILE, bad.project, bad.environment.value, None,
                f"{bad.error}. Its database rows and containers were not compared; cannot fix: "
                "restore the file by hand", fixable=False))
    pairs = [p for p in all_pairs if in_scope(p.project)]
    file_rows: dict[SlotKey, SlotRow] = {}
    for pair in pairs:
        for row in slot_rows(pair):
            file_rows[(row.project, row.environment, row.slot)] = row
    report.checked.update(slot_files=len(pairs), slots=len(file_rows))

    # 3. Files against the database.
    store = None
    db_drift: dict[SlotKey, list[Drift]] = {}
    (db_result, db_error) = results[0]
    if db_error is not None:
        report.database = ctx.history.description
        report.drift.append(Drift(
            DriftKind.DATABASE_UNREACHABLE, None, None, None,
            f"The database is unreachable ({db_error}); the files were not compared with it. "
            "cannot fix: start the database (or correct database.dsn), then reconcile again",
            fixable=False))
    else:
        store, db_rows = db_result
        report.database = store.description
        db_map = {(r.project, r.environment, r.slot): r for r in db_rows if in_scope(r.project)}
        report.checked["db_rows"] = len(db_map)
        for key, frow in file_rows.items():
            drow = db_map.get(key)
            project, environment, slot = key
            if drow is None:
                db_drift.setdefault(key, []).append(Drift(
                    DriftKind.MISSING_ROW, project, environment, slot,
                    f"The database has no row for {project} ({environment}) {slot}, which the "
                    f"files show {frow.state} on port {frow.port}", fixable=True))
            elif drow != frow:
                for name in COMPARED_FIELDS:
                    fv, dv = getattr(frow, name), getattr(drow, name)
                    if fv != dv:
                        db_drift.setdefault(key, []).append(Drift(
                            DriftKind.FIELD_MISMATCH, project, environment, slot,
                            f"{project} ({environment}) {slot}: {name} is {_shown(fv)} in the "
                            f"files but {_shown(dv)} in the database", fixable=True,
                            field=name, file_value=fv, db_value=dv))
        for key in db_map.keys() - file_rows.keys():
            project, environment, slot = key
            if (project, environment) in corrupt:
                continue
            db_drift.setdefault(key, []).append(Drift(
                DriftKind.STALE_ROW, project, environment, slot,
                f"The database has a row for {project} ({environment}) {slot} "
                f"({db_map[key].state}, port {db_map[key].port}) but no slot file holds it",
                fixable=True))
        for key in sorted(db_drift):
            report.drift.extend(db_drift[key])

    # ssot.json: readable, and every allocation held by a slot file of its project.
    ssot, ssot_error = results[1]
    if ssot_error is not None:
        report.drift.append(Drift(
            DriftKind.CORRUPT_FILE, None, None, None,
            f"{ssot_error}. New projects cannot be given ports until it is restored; cannot fix: "
            "restore the file by hand", fixable=False))
    else:
        _check_allocations(ctx, report, all_pairs, corrupt, in_scope, ssot)

    # History kept in the journal while the database was down (replayed on every new
    # connection; a repair tries once more).
    pending = await ctx.history.pending()
    if pending:
        drift = Drift(
            DriftKind.HISTORY_NOT_REPLAYED, None, None, None,
            f"{pending} operation(s) of history kept in the journal during a database outage "
            "are not in the database yet", fixable=store is not None)
        report.drift.append(drift)
        if repair and store is not None:
            replayed = await ctx.history.replay()
            if replayed is not None and replayed.error:
                report.errors.append(f"replaying the history journal failed: {replayed.error}")
            drift.fixed = await ctx.history.pending() == 0

    # 4. Containers, proxy and ports, on each host: the local one, then every remote host a
    # project lives on (asked all at once, each within its request timeout).
    if live:
        # Read, never written here: without an id no container can carry it, so none is ours.
        installation = results[1][0].extra.get(port_book.INSTALLATION_KEY) if results[1][0] else None
        remote = sorted({h for p in all_pairs for h in p.hosts} - {LOCAL_HOST})
        fetched = [(LOCAL_HOST, results[2:5]),
                   *zip(remote, await asyncio.gather(*[_fetch_host(ctx, n) for n in remote]))]
        report.timings_ms["fetch_hosts"] = (time.perf_counter() - lap) * 1000
        for name, (containers, proxy, ports) in fetched:
            on = [p for p in all_pairs if name in p.hosts]
            first = len(report.drift)
            _check_containers(ctx, report, on, [p for p in pairs if name in p.hosts], in_scope,
                              corrupt, installation, *containers, host=name)
            _check_proxy(ctx, report, on, in_scope, corrupt, *proxy, host=name)
            elsewhere = {s.port for p in all_pairs if name not in p.hosts for s in p.slots()}
            _check_ports(report, on, in_scope, results[1][0], *ports, host=name,
                         elsewhere=elsewhere)
            if name != LOCAL_HOST:
                for drift in report.drift[first:]:
                    drift.host, drift.detail = name, f"{name}: {drift.detail}"
    report.timings_ms["compare"] = (time.perf_counter() - lap) * 1000

    # 5. Repairs.
    if repair or prune:
        lap = time.perf_counter()
        if repair and store is not None and db_drift:
            await _repair_database(ctx, report, store, db_drift)
        if repair:
            proxy = [d for d in report.of_kind(DriftKind.PROXY_DRIFT) if d.fixable]
            if proxy:
                try:
                    await proxy_switch.apply_proxy(ctx, actor)
                    for d in proxy:
                        d.fixed = True
                except CodebError as exc:
                    report.errors.append(f"re-applying the proxy config failed: {exc}")
        if repair:
            await _release_leaked_ports(ctx, actor, report)
        if prune:
            await _prune(ctx, actor, report)
        if repair:
            await _restore_containers(ctx, actor, report)
        report.timings_ms["repair"] = (time.perf_counter() - lap) * 1000
    report.elapsed_ms = (time.perf_counter() - started) * 1000
    if (repair or prune) and store is not None:
        await _audit(actor, report, store)
    return report


async def _audit(actor: str, report: ReconcileReport, store: Any) -> None:
    """A repair or a prune changes things: it goes into the audit trail like any operation."""
    fixed = [d for d in report.drift if d.fixed]
    action = "reconcile.prune" if report.prune else "reconcile.repair"
    lines = [f"{d.kind.value} {d.project or '-'} {d.environment or '-'} {d.slot or '-'}: "
             f"{'fixed' if d.fixed else 'left'}: {d.detail}" for d in report.drift]
    try:
        await store.record_audit(AuditRecord(
            operation_id=uuid.uuid4().hex, actor=actor, action=action, project=None,
            environment=None, from_state=None, to_state=None,
            result="failed" if report.errors else "succeeded", duration_ms=report.elapsed_ms,
            created_at=datetime.now(timezone.utc),
            detail={"fixed": len(fixed), "remaining": len(report.remaining), "errors": report.errors},
            log="\n".join(lines + report.errors),
        ))
    except StoreError as exc:
        report.errors.append(f"could not write the audit row: {exc}")


def _busy(ctx: Context, project: str, environment: str | None) -> bool:
    try:
        env = Environment.parse(environment or "")
    except CodebError:
        return False
    return ctx.registry.project_busy(project, env)


def _check_containers(ctx: Context, report: ReconcileReport, all_pairs: list[ProjectSlots],
                      pairs: list[ProjectSlots], in_scope, corrupt: set[tuple[str, str]],
                      installation: str | None, containers: list[ContainerInfo] | None,
                      error: BaseException | None, host: str = LOCAL_HOST) -> None:
    """Each non-empty slot's container, known by the id its slot file records, must run under
    its name; a container of this installation that no slot references is an orphan.
    Containers of other installations sharing the Docker engine are not looked at."""
    if error is not None or containers is None:
        report.drift.append(Drift(
            DriftKind.DOCKER_UNREACHABLE, None, None, None,
            f"Docker is unreachable ({error}); containers were not checked. cannot fix: "
            "start Docker (or correct docker.endpoint), then reconcile again", fixable=False))
        return
    report.checked[_at("containers", host)] = len(containers)
    by_name = {c.name: c for c in containers}
    by_id = {c.id: c for c in containers}
    referenced: set[str] = set()
    scoped = {(p.project, p.environment) for p in pairs}
    busy: set[tuple[str, str]] = set()
    for pair in all_pairs:
        for slot in pair.slots():
            if slot.state is SlotState.EMPTY:
                continue
            ident = slot.container_on(host)
            found = by_id.get(ident) if ident else by_name.get(slot.container_name or "")
            if found is not None:
                referenced.add(found.id)
            if (pair.project, pair.environment) not in scoped:
                continue
            expected = container_name(pair.project, pair.environment, slot.name)
            if found is not None and found.status == "running" and found.name == expected:
                continue
            env = pair.environment.value
            if _busy(ctx, pair.project, env):
                busy.add((pair.project, env))
                continue
            where = f"{pair.project} ({env}) {slot.name.value} is {slot.state.value} with {slot.image}"
            if found is None:
                report.drift.append(Drift(
                    DriftKind.MISSING_CONTAINER, pair.project, env, slot.name.value,
                    f"{where} but its container {expected} is absent; cannot fix: redeploy "
                    f"{pair.project} or clean the slot", fixable=False,
                    container=expected, port=slot.port))
                continue
            seen = [f"named {found.name}"] if found.name != expected else []
            if found.status != "running":
                seen.append(found.status)
            report.drift.append(Drift(
                DriftKind.STOPPED_CONTAINER, pair.project, env, slot.name.value,
                f"{where} but its container is {' and '.join(seen)}; --repair starts it again "
                f"as {expected}", fixable=True, container=found.name, container_id=found.id,
                port=slot.port))
    for container in containers:
        if container.id in referenced or container.labels.get(LABEL_INSTALLATION) != installation:
            continue
        project = container.labels.get(LABEL_PROJECT)
        if not in_scope(project):
            continue
        env = container.labels.get(LABEL_ENVIRONMENT)
        if (project, env) in corrupt:
            continue  # its slot file cannot be read: said once, as corrupt_file
        if project and _busy(ctx, project, env):
            busy.add((project, env or "?"))
            continue
        report.drift.append(Drift(
            DriftKind.ORPHAN_CONTAINER, project, env, container.labels.get(LABEL_SLOT),
            f"Container {container.name} ({container.image}, {container.status}) carries codeb "
            f"labels for {project} but no slot references it; remove it with --prune",
            fixable=True, container=container.name, container_id=container.id,
            port=container.port))
    report.busy.extend(f"{p} ({e})" for p, e in sorted(busy))


def _check_allocations(ctx: Context, report: ReconcileReport, all_pairs: list[ProjectSlots],
                       corrupt: set[tuple[str, str]], in_scope, ssot: Ssot) -> None:
    """A port ssot.json gives to a project none of whose slot files holds it was leaked (a
    first deploy interrupted before its slot file was written)."""
    held = {(pair.project, slot.port) for pair in all_pairs for slot in pair.slots()}
    unreadable = {project for project, _ in corrupt}
    leaked: dict[str, list[int]] = {}
    for port, owner in sorted(ssot.allocated.items()):
        if owner and (owner, port) not in held and owner not in unreadable and in_scope(owner):
            leaked.setdefault(owner, []).append(port)
    for owner, ports in leaked.items():
        if any(_busy(ctx, owner, env.value) for env in Environment):
            report.busy.append(f"{owner} (ports)")
            continue
        shown = ", ".join(map(str, ports))
        report.drift.append(Drift(
            DriftKind.LEAKED_PORTS, owner, None, None,
            f"ssot.json allocates {shown} to {owner} but no slot file of {owner} holds "
            f"{'them' if len(ports) > 1 else 'it'} (an interrupted first deploy); --repair "
            "releases them", fixable=True, port=ports[0], file_value=ports))


def _check_proxy(ctx: Context, report: ReconcileReport, all_pairs: list[ProjectSlots], in_scope,
                 corrupt: set[tuple[str, str]],
                 live: dict[str, tuple[int | None, str | None]] | None,
                 error: BaseException | None, host: str = LOCAL_HOST) -> None:
    if error is not None or live is None:
        report.drift.append(Drift(
            DriftKind.PROXY_UNREACHABLE, None, None, None,
            f"The proxy's live config could not be read ({error}); routes were not checked. "
            "cannot fix: start Caddy (or correct caddy.admin), then reconcile again",
            fixable=False))
        return
    by_tag: dict[str, tuple[ProjectSlots, Any]] = {}
    for pair in all_pairs:
        for slot in pair.slots():
            tag = f"{pair.project}-{pair.environment.suffix}-{slot.name.value}"
            by_tag[tag] = by_tag[tag + "-preview"] = (pair, slot)
    expected = _expected_proxy(ctx, all_pairs, host)
    report.checked[_at("routes_expected", host)] = len(expected)
    report.checked[_at("routes_live", host)] = len(live)
    for host, (port, tag) in expected.items():
        pair, slot = by_tag[tag.removeprefix("codeb-")]
        if not in_scope(pair.project):
            continue
        live_port, _ = live.get(host, (None, None))
        if live_port == port:
            continue
        role = "preview of the" if tag.endswith("-preview") else "production traffic to the"
        what = (f"{role} {slot.state.value} slot {slot.name.value} of {pair.project} "
                f"({pair.environment.value})")
        if host not in live:
            detail = f"The proxy has no route for {host}; it should send {what} on port {port}"
        else:
            detail = (f"The proxy sends {host} to port {_shown(live_port)}, but it should send "
                      f"{what} on port {port}")
        report.drift.append(Drift(DriftKind.PROXY_DRIFT, pair.project, pair.environment.value,
                                  slot.name.value, detail, fixable=True, port=live_port))
    patterns = _host_patterns(ctx)
    for host, (live_port, route_id) in sorted(live.items()):
        if host in expected:
            continue
        project = environment = None
        for pattern, env in patterns:
            if (m := pattern.match(host)) is not None:
                project, environment = m.group("project"), env
                break
        if project is None and isinstance(route_id, str):
            project = _project_from_tag(route_id)
        if not in_scope(project) or (project, environment) in corrupt:
            continue  # a corrupt slot file is reported once, as corrupt_file
        report.drift.append(Drift(
            DriftKind.PROXY_DRIFT, project, environment, None,
            f"The proxy sends {host} to port {_shown(live_port)}, but no slot in the files "
            "serves that host", fixable=True, port=live_port))


def _at(key: str, host: str) -> str:
    """The `checked` counter of `key` on `host` ("containers", "containers@web1")."""
    return key if host == LOCAL_HOST else f"{key}@{host}"


def _project_from_tag(tag: str) -> str | None:
    tag = tag.removeprefix("codeb-").removesuffix("-preview")
    for suffix in ("prod", "staging", "preview"):
        for slot in ("blue", "green"):
            end = f"-{suffix}-{slot}"
            if tag.endswith(end):
                return tag[: -len(end)]
    return None


def _check_ports(report: ReconcileReport, all_pairs: list[ProjectSlots], in_scope,
                 ssot: Ssot | None, ports: PortsReport | None,
                 error: BaseException | None, host: str = LOCAL_HOST,
                 elsewhere: set[int] = frozenset()) -> None:
    """Ports of `host` another program holds. `elsewhere`: ports of projects on other hosts
    (pairs are given out once for all hosts; on this one they are anybody's)."""
    if error is not None or ports is None:
        return  # Docker unreachable: already reported by the container check
    by_port = {slot.port: (pair, slot) for pair in all_pairs for slot in pair.slots()}
    allocated = ssot.allocated if ssot is not None else {}
    for conflict in ports.conflicts:
        if conflict.kind not in (PortConflictKind.HELD_BY_UNKNOWN_PROCESS,
                                 PortConflictKind.OWNER_MISMATCH):
            continue  # foreign listeners outside codeb's allocations only narrow allocation
        port = conflict.port
        if port in elsewhere or (host != LOCAL_HOST and port not in by_port):
            continue
        pair, slot = by_port.get(port, (None, None))
        project = pair.project if pair else None
        if project is None:
            project = allocated.get(port) or None
        if not in_scope(project):
            continue
        report.drift.append(Drift(
            DriftKind.PORT_CONFLICT, project, pair.environment.value if pair else None,
            slot.name.value if slot else None,
            f"{conflict.detail[0].upper()}{conflict.detail[1:]}; cannot fix: stop that "
            f"program, then redeploy {project or 'the project'} or clean the slot",
            fixable=False, port=port))


async def _repair_database(ctx: Context, report: ReconcileReport, store: Any,
                           db_drift: dict[SlotKey, list[Drift]]) -> None:
    """Upsert every slot row that is missing or differs, delete rows no file holds: one
    transaction. The pairs are read again just before, so a deploy that finished meanwhile is
    not overwritten with what the files said a moment ago."""
    stale = [key for key, drifts in db_drift.items()
             if any(d.kind is DriftKind.STALE_ROW for d in drifts)]
    wanted = {(p, e) for (p, e, _), drifts in db_drift.items()
              if not any(d.kind is DriftKind.STALE_ROW for d in drifts)}
    upserts: list[SlotRow] = []
    for project, environment in sorted(wanted):
        try:
            pair = ctx.registry.read_slots(project, Environment(environment))
        except CodebError as exc:
            report.errors.append(f"{project} ({environment}): not repaired: {exc}")
            continue
        if pair is not None:
            upserts.extend(slot_rows(pair))
    try:
        await store.sync_slot_rows(upserts, stale)
    except StoreError as exc:
        report.errors.append(f"repairing the database failed: {exc}")
        return
    written = {(r.project, r.environment) for r in upserts}
    for key, drifts in db_drift.items():
        if key in stale or key[:2] in written:
            for d in drifts:
                d.fixed = True


async def _prune(ctx: Context, actor: str, report: ReconcileReport) -> None:
    """Remove orphan containers, each under its project lock and only if the slot file still
    does not reference it."""
    for drift in report.of_kind(DriftKind.ORPHAN_CONTAINER):
        ident = drift.container_id or drift.container or ""
        host = ctx.host_named(drift.host or LOCAL_HOST)
        try:
            env = Environment.parse(drift.environment or "")
        except CodebError:
            env = None
        try:
            if drift.project and env is not None:
                async with ctx.registry.project_lock(drift.project, env, "prune orphan container",
                                                     actor=actor):
                    pair = await ctx.registry.aread_slots(drift.project, env)
                    if drift.container_id in recovery.serving_slots(pair, host.name):
                        continue
                    await host.docker.remove(ident)
            else:
                await host.docker.remove(ident)
        except CodebError as exc:
            report.errors.append(f"removing {drift.container} failed: {exc}")
            continue
        drift.fixed = True


async def _release_leaked_ports(ctx: Context, actor: str, report: ReconcileReport) -> None:
    """Give back leaked allocations, checked again under the ssot lock."""
    drifts = [d for d in report.of_kind(DriftKind.LEAKED_PORTS) if d.fixable]
    if not drifts:
        return
    registry = ctx.registry
    try:
        async with registry.global_lock("ssot", "release leaked ports", actor=actor):
            pairs = await registry.aread_all()
            held = {(pair.project, slot.port) for pair in pairs for slot in pair.slots()}
            ssot = await registry.aread_ssot()
            for drift in drifts:
                for port in drift.file_value:
                    if ssot.allocated.get(port) == drift.project and (drift.project, port) not in held:
                        del ssot.allocated[port]
                drift.fixed = True
            await registry.awrite_ssot(ssot)
    except CodebError as exc:
        report.errors.append(f"releasing leaked ports failed: {exc}")
        for drift in drifts:
            drift.fixed = False


async def _restore_containers(ctx: Context, actor: str, report: ReconcileReport) -> None:
    """Start stopped (or renamed-aside) slot containers again under their names, one
    project+environment at a time under its lock (orphans holding a name were pruned first)."""
    keys = sorted({(d.project, d.environment, d.host or LOCAL_HOST)
                   for d in report.of_kind(DriftKind.STOPPED_CONTAINER)
                   if d.fixable and d.project and d.environment})
    for project, environment, host_name in keys:
        env = Environment(environment)
        host = ctx.host_named(host_name)
        drifts = [d for d in report.of_kind(DriftKind.STOPPED_CONTAINER)
                  if (d.project, d.environment, d.host or LOCAL_HOST)
                  == (project, environment, host_name)]
        try:
            async with ctx.registry.project_lock(project, env, "restart slot containers",
                                                 actor=actor):
                pair = await ctx.registry.aread_slots(project, env)
                containers = await host.docker.list_slot_containers(
                    project=project, environment=environment)
                done = await recovery.restore_referenced(
                    ctx, lambda line: None, project, env, pair, containers, start_stopped=True,
                    host=host)
        except CodebError as exc:
            report.errors.append(f"{project} ({environment}): containers not restarted: {exc}")
            continue
        problems = [line for line in done if "cannot" in line or "not healthy" in line]
        report.errors.extend(f"{project} ({environment}): {line}" for line in problems)
        for drift in drifts:
            drift.fixed = not problems
