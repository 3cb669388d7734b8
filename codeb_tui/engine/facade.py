"""The engine's facade: everything a front end (the CLI, the console, the API, the SSH console)
may ask for, and nothing else.

Every public method takes the `Principal` asking. This is the one place that checks it, takes
the project lock and writes the deployment and audit rows; the procedures (deploy, switch,
cleanup, status, the port book, proxy switching, reconcile) do the work and never call back in.
Operations are async generators of typed events that always end with `Finished` or `Failed`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone

from codeb_tui.domain import events
from codeb_tui.domain.access import (
    NewApiKey,
    Principal,
    generate_api_key,
    key_prefix,
    validate_key_name,
    validate_role,
    validate_team_name,
)
from codeb_tui.domain.config import Config
from codeb_tui.domain.errors import AccessDenied, BadInput
from codeb_tui.domain.model import (
    Environment,
    ProjectSlots,
    SlotName,
    container_name,
    validate_image_ref,
    validate_project_name,
)
from codeb_tui.domain.status import HostState, PortsReport, SlotStatus
from codeb_tui.domain.hosts import HostCheck, HostInfo, HostKeyOffer
from codeb_tui.engine import cleanup as cleanup_procedure
from codeb_tui.engine import deploy as deploy_procedure
from codeb_tui.engine import host_status, port_book, proxy_switch, recovery, switch
from codeb_tui.engine import host_checks
from codeb_tui.engine import reconcile as reconcile_procedure
from codeb_tui.engine import status as status_procedure
from codeb_tui.engine.access import admit
from codeb_tui.engine.audit import REFUSAL_PATIENCE, record_operation
from codeb_tui.engine.context import Context
from codeb_tui.engine.history import History
from codeb_tui.engine.operation import OperationRun, run_operation
from codeb_tui.engine.reconcile import ReconcileReport
from codeb_tui.infra.host import Host, LocalHost
from codeb_tui.infra.image_registry import ImageRegistry
from codeb_tui.registry.files import FileRegistry
from codeb_tui.registry.locks import current_actor, describe_holder, is_locked, read_holder
from codeb_tui.registry.watch import RegistryWatcher
from codeb_tui.store import Store, StoreError, StoreRefused, load_migrations, open_store
from codeb_tui.store.base import ApiKeyRow, AuditRecord, TeamRow


def local_principal() -> Principal:
    """The operator at this machine's shell."""
    return Principal.local(current_actor())


@dataclass(frozen=True)
class ServicesState:
    """Whether each service answered just now."""

    docker: bool
    caddy: bool
    database: bool
    proxy_empty: bool = False
    """Caddy answers but does not carry codeb's routes (restarted empty): nothing is served
    until `reconcile --repair` loads them again."""


@dataclass(frozen=True)
class RunningOperation:
    """An operation holding a project lock, as its lock file names it."""

    project: str
    environment: Environment
    what: str
    """The lock's purpose: `deploy shop (production)`."""
    step: str | None
    actor: str
    since: datetime | None


def _parsed_time(value: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


@dataclass(frozen=True)
class DbStatus:
    backend: str
    where: str
    version: int
    latest: int
    pending: tuple[tuple[int, str], ...]  # (version, name)


@dataclass(frozen=True)
class DbMigration:
    backend: str
    where: str
    description: str
    applied: tuple[int, ...]
    version: int


@dataclass(frozen=True)
class TeamSummary:
    team: TeamRow
    active_keys: int


NOTHING_TO_SERVE_KEPT = 30.0
"""Seconds an answer of "no slot in use" stands (see Engine._something_to_serve)."""


class Engine:
    def __init__(self, config: Config, host: Host | None = None) -> None:
        self.config = config
        self._ctx = Context(
            config=config,
            registry=FileRegistry(config.registry.root, config.registry.lock_timeout),
            host=host or LocalHost(config),
            history=History(config),
        )
        url = config.docker.registry_url
        self._images = ImageRegistry(url) if url else None
        self._containers = status_procedure.ContainerListing()
        self._nothing_to_serve_until = 0.0

    @property
    def context(self) -> Context:
        """The parts below the facade, for tests and benches that check the files or the
        database directly. Front ends use the methods, never this."""
        return self._ctx

    async def aclose(self) -> None:
        await self._ctx.aclose()

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # the checks every call goes through -----------------------------------------------------
    async def _admit(self, principal: Principal, action: str,
                     environment: str | None = None) -> Principal:
        return await admit(principal, action, environment, self._ctx.history.store)

    async def _admit_run(self, run: OperationRun, principal: Principal, action: str,
                         environment: str | None) -> None:
        """Inside an operation: a denial is audited under the principal's team when known."""
        try:
            checked = await self._admit(principal, action, environment)
        except AccessDenied as denied:
            if isinstance(denied.principal, Principal):
                run.actor, run.team = denied.principal.actor, denied.principal.team
            raise
        run.actor, run.team = checked.actor, checked.team

    @asynccontextmanager
    async def _lock(self, run: OperationRun, project: str, env: Environment):
        async with self._ctx.registry.project_lock(project, env, run.operation, actor=run.actor,
                                                   on_wait=run.log) as holder:
            run.on_step = holder.note_step  # other consoles read the step from the lock file
            try:
                yield
            finally:
                run.on_step = None

    def _operation(self, principal: Principal, operation: str, project: str, environment: str,
                   body: Callable[[OperationRun], Awaitable[tuple[str, dict]]],
                   detail: str = "", image: str | None = None) -> AsyncIterator[events.Event]:
        run = OperationRun(operation, project, environment, principal.actor, image=image)
        run.team = principal.team
        return run_operation(run, body, self._record, detail=detail)

    async def _record(self, run: OperationRun, terminal: events.Event) -> None:
        await record_operation(self._ctx, run, terminal)

    async def _recover(self, run: OperationRun, project: str,
                       env: Environment) -> ProjectSlots | None:
        """Finish or undo what an interrupted operation left of this project+environment,
        before this one changes anything (docs/architecture.md, "Faults"). Returns the slot
        file as read: recovery changes containers only, never the file."""
        pair = await self._ctx.registry.aread_slots(project, env)
        done = await recovery.recover(self._ctx, run.log, project, env, pair)
        for line in done:
            run.warn(f"an earlier operation on {project} ({env.value}) was interrupted: {line}")
        return pair

    @staticmethod
    def _validated(run: OperationRun) -> tuple[str, Environment]:
        project = validate_project_name(run.project)
        env = Environment.parse(run.environment)
        run.environment = env.value
        return project, env

    # operations ------------------------------------------------------------------------------
    def deploy(self, principal: Principal, project: str, image: str,
               environment: str = "production", confirm_grace: bool = False,
               hosts: list[str] | None = None) -> AsyncIterator[events.Event]:
        """`hosts`: where a first deploy puts the project (--host); default config
        `projects.<name>.hosts`, else the local host. Later deploys go where its slot file says."""
        async def body(run: OperationRun) -> tuple[str, dict]:
            name, env = self._validated(run)
            validate_image_ref(image)
            for host in hosts or ():
                self._ctx.host_named(host)  # an unknown host is bad input, refused first
            run.touched = True
            await self._admit_run(run, principal, "deploy", env.value)
            async with self._lock(run, name, env):
                await self._recover(run, name, env)
                return await deploy_procedure.deploy(self._ctx, run, name, env, image, confirm_grace,
                                                     tuple(hosts) if hosts else None)

        return self._operation(principal, "deploy", project, str(environment), body,
                               detail=image, image=image)

    def promote(self, principal: Principal, project: str,
                environment: str = "production") -> AsyncIterator[events.Event]:
        return self._switch(principal, "promote", switch.promote, project, environment)

    def rollback(self, principal: Principal, project: str,
                 environment: str = "production") -> AsyncIterator[events.Event]:
        return self._switch(principal, "rollback", switch.rollback, project, environment)

    def _switch(self, principal: Principal, operation: str, procedure, project: str,
                environment: str) -> AsyncIterator[events.Event]:
        async def body(run: OperationRun) -> tuple[str, dict]:
            name, env = self._validated(run)
            run.touched = True
            await self._admit_run(run, principal, operation, env.value)
            async with self._lock(run, name, env):
                pair = await self._recover(run, name, env)
                return await procedure(self._ctx, run, name, env, pair)

        return self._operation(principal, operation, project, str(environment), body)

    def cleanup(self, principal: Principal, project: str | None = None,
                environment: str | None = None, force: bool = False,
                slot: str | None = None) -> AsyncIterator[events.Event]:
        async def body(run: OperationRun) -> tuple[str, dict]:
            if project is not None:
                validate_project_name(project)
            env_filter = Environment.parse(environment) if environment else None
            if env_filter is not None:
                run.environment = env_filter.value
            chosen = SlotName(slot) if slot in ("blue", "green") else None
            if slot is not None and chosen is None:
                raise BadInput(f"Unknown slot {slot!r}: expected blue or green")
            if chosen is not None and (project is None or not force):
                raise BadInput("Cleaning a named slot needs PROJECT and --force")
            run.touched = True
            await self._admit_run(run, principal, "cleanup",
                                  env_filter.value if env_filter else None)
            return await cleanup_procedure.cleanup(
                self._ctx, run, lambda p, e: self._lock(run, p, e), project, env_filter, force,
                chosen)

        return self._operation(principal, "cleanup", project or "*", str(environment or "*"),
                               body, detail=slot or "")

    # queries ---------------------------------------------------------------------------------
    async def status(self, principal: Principal, project: str | None = None,
                     environment: str | None = None, live: bool = True) -> list[SlotStatus]:
        """One record per slot: the registry, plus (live) container state and health."""
        if project is not None:
            validate_project_name(project)
        env_filter = Environment.parse(environment) if environment else None
        await self._admit(principal, "status", env_filter.value if env_filter else None)
        return await status_procedure.status(self._ctx, project, env_filter, live)

    async def check_slots(self, principal: Principal,
                          slots: Sequence[SlotStatus]) -> list[SlotStatus]:
        """Check these slots now: the records with fresh health (and container state, from a
        listing at most CONTAINERS_MAX_AGE old, sooner for a container it lacks), the registry
        not read again. Checks start in the order given: pass the slots on screen first."""
        for env in {s.environment for s in slots}:
            await self._admit(principal, "status", env.value)
        return await status_procedure.check(self._ctx, slots, self._containers)

    async def host_states(self, principal: Principal) -> list[HostState]:
        """Whether each host (`local` and every host of the config) answers, each within its
        request timeout; a host known down answers at once while it is asked again in the
        background (the console's top bar)."""
        await self._admit(principal, "status")
        return await host_status.host_states(self._ctx, self._ctx.host_names())

    def host_names(self) -> list[str]:
        """`local` and every host of the config."""
        return self._ctx.host_names()

    # `codeb host list | check | trust` (engine/host_checks.py) ---------------------------------
    async def hosts(self, principal: Principal) -> list[HostInfo]:
        await self._admit(principal, "host.check")
        return host_checks.host_list(self._ctx)

    async def check_hosts(self, principal: Principal,
                          names: Sequence[str] | None = None) -> list[HostCheck]:
        """Each host (all when `names` is empty) asked at once: reachable, Docker and Caddy
        versions, latency; a host that is down is reported, never waited on past its timeouts."""
        await self._admit(principal, "host.check")
        return await host_checks.check_hosts(self._ctx, list(names or []))

    async def host_key(self, principal: Principal, name: str) -> HostKeyOffer:
        """The SSH key host `name` offers and what known_hosts records for it."""
        await self._admit(principal, "host.trust")
        return await host_checks.host_key(self._ctx, name)

    async def trust_host(self, principal: Principal, name: str, fingerprint: str) -> HostKeyOffer:
        """Record host `name`'s key in known_hosts, if it still offers `fingerprint` (the one
        the operator confirmed). Audited."""
        checked = await self._admit(principal, "host.trust")
        offer = await host_checks.trust_host(self._ctx, name, fingerprint)
        await self.audit_event(checked.actor, checked.team, "host.trust", "success",
                               {"host": name, "fingerprint": fingerprint,
                                "known_hosts": offer.known_hosts})
        return offer

    async def ports(self, principal: Principal, host: str | None = None) -> PortsReport:
        """The port book as seen on `host` (its containers and listening sockets; the local
        host by default): the pairs are given out once for every host."""
        await self._admit(principal, "ports")
        return await port_book.ports_report(self._ctx, self._ctx.host_named(host) if host else None)

    async def reconcile(self, principal: Principal, repair: bool = False, prune: bool = False,
                        projects: list[str] | None = None, live: bool = True) -> ReconcileReport:
        action = "reconcile.prune" if prune else "reconcile.repair" if repair else "reconcile"
        checked = await self._admit(principal, action)
        return await reconcile_procedure.reconcile(
            self._ctx, checked.actor, repair=repair, prune=prune, projects=projects, live=live)

    async def history(self, principal: Principal, *, project: str | None = None,
                      action: str | None = None, team: str | None = None,
                      since: datetime | None = None, until: datetime | None = None,
                      limit: int = 100) -> list[AuditRecord]:
        """The audit trail, newest first (StoreError when the database is down)."""
        await self._admit(principal, "history")
        store = await self._ctx.history.store()
        try:
            return await store.list_audit(project, action, limit, team=team, since=since,
                                          until=until)
        except StoreError:
            await self._ctx.history.forget()
            raise

    # what the console shows beside the slots --------------------------------------------------
    async def services(self, principal: Principal) -> ServicesState:
        await self._admit(principal, "status")
        host = self._ctx.host

        async def database() -> bool:
            try:
                store = await self._ctx.history.store()
                await store.schema_version()
                return True
            except Exception:  # noqa: BLE001 - down, whatever the reason
                await self._ctx.history.forget()
                return False

        docker, serves, db = await asyncio.gather(
            host.docker.ping(), proxy_switch.proxy_serves_codeb(self._ctx), database())
        empty = serves is False and await self._something_to_serve()
        return ServicesState(docker, serves is not None, db, proxy_empty=empty)

    async def proxy_empty(self, principal: Principal) -> bool:
        """Whether Caddy answers without codeb's routes while a slot should be served (a
        restart)."""
        await self._admit(principal, "status")
        serves = await proxy_switch.proxy_serves_codeb(self._ctx)
        return serves is False and await self._something_to_serve()

    async def _something_to_serve(self) -> bool:
        # Asked only when Caddy looks empty. "Nothing" is kept for a while: the console asks
        # every few seconds, and an installation with thousands of slot files and none in use
        # would read them all each time (6 % of a core); a first deploy loads Caddy's config
        # itself, so an empty Caddy is no news until then.
        if time.monotonic() < self._nothing_to_serve_until:
            return False
        if await self._ctx.registry.aany_slot_in_use():
            return True
        self._nothing_to_serve_until = time.monotonic() + NOTHING_TO_SERVE_KEPT
        return False

    def lock_holder(self, project: str, environment: Environment) -> str | None:
        """Who holds the project+environment lock and since when, None when free."""
        registry = self._ctx.registry
        if not registry.project_busy(project, environment):
            return None
        return describe_holder(registry.lock_path(f"{project}-{environment.suffix}"))

    def running_operations(self) -> list[RunningOperation]:
        """Every operation holding a project lock right now, in any process (another console,
        an SSH session, the API, the CLI): a listing of the lock folder and one record each."""
        registry = self._ctx.registry
        by_suffix = {env.suffix: env for env in Environment}
        found = []
        try:
            names = sorted(p.name for p in (registry.root / "locks").glob("*.lock"))
        except OSError:
            return []
        for name in names:
            project, _, suffix = name[:-len(".lock")].rpartition("-")
            env = by_suffix.get(suffix)
            path = registry.lock_path(name[:-len(".lock")])
            if env is None or not project or not is_locked(path):
                continue
            holder = read_holder(path) or {}
            found.append(RunningOperation(project, env, holder.get("purpose", "?"),
                                          holder.get("step"), holder.get("user", "?"),
                                          _parsed_time(holder.get("since"))))
        return found

    async def audit_event(self, actor: str, team: str | None, action: str, result: str,
                          detail: dict, log: str = "") -> str | None:
        """One audit row that belongs to no operation: the SSH server's refusals (with the
        key's fingerprint) and the end of a console session. Returns the warning when the row
        went to the journal instead of the database."""
        now = datetime.now(timezone.utc)
        row = AuditRecord(operation_id=uuid.uuid4().hex, actor=actor, team=team, action=action,
                          project=None, environment=None, from_state=None, to_state=None,
                          result=result, duration_ms=0.0, created_at=now, detail=detail, log=log)
        try:
            return await self._ctx.history.record(None, row, [], REFUSAL_PATIENCE)
        except OSError as exc:
            return f"audit row not recorded: {exc}"

    def watch_registry(self) -> RegistryWatcher:
        """Changes to slot files and lock files made by anyone, as they happen (`async for`
        over it: `RegistryChanges` batches); file-system events, a slow stat without them."""
        return RegistryWatcher(self._ctx.registry, self.config.console.registry_watch_interval)

    async def container_logs(self, principal: Principal, project: str, environment: Environment,
                             slot: SlotName, tail: int = 200) -> AsyncIterator[str]:
        """The slot container's log lines, following until the caller stops."""
        await self._admit(principal, "status", environment.value)
        name = container_name(validate_project_name(project), environment, slot)
        pair = await self._ctx.registry.aread_slots(project, environment)
        host = self._ctx.host_named(pair.hosts[0]) if pair is not None else self._ctx.host
        async for line in host.docker.stream_logs(name, tail=tail):  # its first host's
            yield line

    async def images(self, principal: Principal) -> list[str]:
        """Every `host/repository:tag` the private registry offers (the console's image
        picker); [] when no registry is configured."""
        await self._admit(principal, "status")
        if self._images is None:
            return []
        return await self._images.references()

    @property
    def image_registry_host(self) -> str | None:
        """The registry as image references name it (127.0.0.1:5000), None without one."""
        return self._images.host if self._images else None

    async def apply_proxy(self, principal: Principal) -> dict:
        """Make the proxy serve the registry as it is (start-up after a Caddy restart)."""
        checked = await self._admit(principal, "reconcile.repair")
        return await proxy_switch.apply_proxy(self._ctx, checked.actor)

    # teams, keys and the schema ---------------------------------------------------------------
    async def create_team(self, principal: Principal, name: str) -> TeamRow:
        validate_team_name(name)
        store = await self._admin_store(principal, "team.create")
        return await store.create_team(name)

    async def list_teams(self, principal: Principal) -> list[TeamSummary]:
        store = await self._admin_store(principal, "team.list")
        active: dict[str, int] = {}
        for key in await store.list_api_keys(None):
            if key.revoked_at is None:
                active[key.team] = active.get(key.team, 0) + 1
        return [TeamSummary(t, active.get(t.name, 0)) for t in await store.list_teams()]

    async def create_api_key(self, principal: Principal, team: str, role: str,
                             name: str = "") -> tuple[NewApiKey, ApiKeyRow]:
        role = validate_role(role)
        name = validate_key_name(name)
        store = await self._admin_store(principal, "apikey.create")
        new = generate_api_key()
        return new, await store.create_api_key(team, name, role, new.key_hash, new.prefix)

    async def list_api_keys(self, principal: Principal, team: str | None = None) -> list[ApiKeyRow]:
        store = await self._admin_store(principal, "apikey.list")
        if team is not None and team not in {t.name for t in await store.list_teams()}:
            raise BadInput(f"team {team} does not exist")
        return await store.list_api_keys(team)

    async def revoke_api_key(self, principal: Principal, prefix_or_id: str) -> ApiKeyRow:
        wanted = prefix_or_id.strip()
        prefix = key_prefix(wanted)
        if prefix is None and not wanted.isdigit():
            raise BadInput(f"not an API key prefix: {wanted!r} (expected cb_xxxxxxxx, the "
                           "8 characters after cb_, or the key's id)")
        store = await self._admin_store(principal, "apikey.revoke")
        return await store.revoke_api_key(prefix or wanted)

    async def _admin_store(self, principal: Principal, action: str) -> Store:
        """The database, up to date (as every operation brings it), after the check."""
        store = await self._ctx.history.store()
        await self._admit(principal, action)
        return store

    async def db_status(self, principal: Principal) -> DbStatus:
        """Schema version and pending migrations; never creates an SQLite file to say so."""
        store = self._raw_store()
        try:
            migrations = load_migrations(store.kind)
            latest = migrations[-1].version if migrations else 0
            path = getattr(store, "path", None)
            if (store.kind == "sqlite" and path is not None and not path.exists()
                    and principal.api_key is None):
                version = 0  # admit() of a local principal needs no database
                await self._admit(principal, "db.status")
            else:
                await store.connect()
                await admit(principal, "db.status", None, _connected(store))
                version = await store.schema_version()
            pending = tuple((m.version, m.name) for m in migrations if m.version > version)
            return DbStatus(store.kind, _where(store), version, latest, pending)
        finally:
            await _close(store)

    async def db_migrate(self, principal: Principal) -> DbMigration:
        store = self._raw_store()
        try:
            await store.connect()
            await admit(principal, "db.migrate", None, _connected(store))
            applied = await store.migrate()
            version = await store.schema_version()
            return DbMigration(store.kind, _where(store), store.description, tuple(applied), version)
        finally:
            await _close(store)

    def _raw_store(self) -> Store:
        db = self.config.database
        return open_store(db.dsn, db.sqlite_path, db.connect_timeout)


def _connected(store: Store) -> Callable[[], Awaitable[Store]]:
    async def get() -> Store:
        return store
    return get


async def _close(store: Store) -> None:
    try:
        await store.close()
    except StoreError:
        pass


def _where(store: Store) -> str:
    return store.description.split(" ", 1)[1] if " " in store.description else store.description


def dumps_event(event: events.Event) -> str:
    return json.dumps(event.to_json(), default=str)


__all__ = ["DbMigration", "DbStatus", "Engine", "Principal", "RunningOperation", "ServicesState", "StoreError",
           "StoreRefused", "TeamSummary", "dumps_event", "local_principal"]
