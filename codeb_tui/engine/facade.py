"""The engine: deploy, promote, rollback and cleanup as async streams of events (seed 3, 4, 7).

The console, the CLI and (later) the HTTP API call these and nothing below them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

from codeb_tui.domain.config import Config
from codeb_tui.domain import events
from codeb_tui.domain.access import Principal
from codeb_tui.engine.access import authorize
from codeb_tui.domain.errors import (
    AccessDenied,
    BadInput,
    HealthCheckFailed,
    OperationFailed,
    ProxyApplyFailed,
    TransitionRefused,
)
from codeb_tui.domain.model import (
    Environment,
    HealthRecord,
    ProjectSlots,
    Slot,
    SlotName,
    SlotState,
    container_name,
    utcnow,
    validate_image_ref,
    validate_project_name,
)
from codeb_tui.engine.operation import OperationRun, run_operation
from codeb_tui.domain.ports import PortSources, allocate_port_pair
from codeb_tui.domain.proxy import build_caddy_config, route_count, wanted_markers
from codeb_tui.infra.docker_engine import ContainerInfo, labels_for
from codeb_tui.infra.host import Host, LocalHost
from codeb_tui.registry.files import FileRegistry, atomic_write_json
from codeb_tui.registry.locks import current_actor
from codeb_tui.store import open_store
from codeb_tui.store.base import AuditRecord, DeploymentRecord, SlotRow, Store, StoreError

REPLACED_SUFFIX = "-replaced"
HEALTH_CONCURRENCY = 32


class Engine:
    def __init__(self, config: Config, host: Host | None = None, actor: str | None = None,
                 api_key: str | None = None) -> None:
        self.config = config
        self.api_key = api_key
        """With a key, every operation is checked against its role (docs/access.md); without
        one, the local operator (shell access to the host) may do everything."""
        self.host = host or LocalHost(config)
        self.registry = FileRegistry(config.registry.root, config.registry.lock_timeout)
        self.actor = actor or current_actor()
        self._store: Store | None = None

    async def aclose(self) -> None:
        if self._store is not None:
            try:
                await self._store.close()
            except StoreError:
                pass
            self._store = None
        await self.host.aclose()

    # the secondary store ---------------------------------------------------------------------
    async def store(self) -> Store:
        """The database, connected and migrated on first use. Raises StoreError when down."""
        if self._store is None:
            db = self.config.database
            store = open_store(db.dsn, db.sqlite_path, db.connect_timeout)
            await store.connect()
            try:
                await store.migrate()
            except StoreError:
                await store.close()
                raise
            self._store = store
        return self._store

    async def _record(self, run: OperationRun, terminal: events.Event) -> None:
        """Epilogue of every operation: file registry first (done by the body), then the
        database. A database failure is a warning, never the operation's failure."""
        ok = isinstance(terminal, events.Finished)
        if ok:
            result = "succeeded"
        elif isinstance(terminal, events.Failed) and terminal.error_type == "AccessDenied":
            result = "denied"
        elif isinstance(terminal, events.Failed) and terminal.exit_code == 2:
            result = "refused"
        else:
            result = "failed"
        now = datetime.now(timezone.utc)
        try:
            store = await self.store()
            if run.project != "*":
                env = Environment(run.environment)
                pair = self.registry.read_slots(run.project, env)
                if pair is not None:
                    await store.upsert_project_slots(slot_rows(pair))
            error = terminal.error if isinstance(terminal, events.Failed) else None
            await store.record_deployment(DeploymentRecord(
                operation_id=run.operation_id, operation=run.operation, project=run.project,
                environment=run.environment, slot=run.slot, image=run.image, result=result,
                started_at=run.started_at, finished_at=now, error=error, actor=run.actor,
            ))
            await store.record_audit(AuditRecord(
                operation_id=run.operation_id, actor=run.actor, team=run.team, action=run.operation,
                project=run.project, environment=run.environment, from_state=run.from_state,
                to_state=run.to_state, result=result, duration_ms=run.elapsed_ms, created_at=now,
                detail={"slot": run.slot, "image": run.image, "error": error},
                log="\n".join(run.lines + [f"{terminal.ts:%H:%M:%S} {terminal.line()}"]),
            ))
        except Exception as exc:  # StoreError, or a registry file turned unreadable meanwhile
            self._store = None
            run.warn(f"database out of sync: {exc}; the file registry is up to date, "
                     "run `codeb reconcile` once the database is back")

    async def _authorize(self, run: OperationRun, environment: str | None) -> None:
        """Check the API key, if one was given, against the operation's role rules."""
        if self.api_key is None:
            return
        try:
            store = await self.store()
        except StoreError as exc:
            raise AccessDenied(f"Access Denied: cannot verify the API key: {exc}") from None
        try:
            principal = await authorize(store, self.api_key, run.operation, environment)
        except AccessDenied as denied:
            if isinstance(denied.principal, Principal):  # a valid key with too small a role
                run.actor, run.team = denied.principal.actor, denied.principal.team
            raise
        run.actor, run.team = principal.actor, principal.team

    # operations ------------------------------------------------------------------------------
    def deploy(self, project: str, image: str, environment: str = "production",
               confirm_grace: bool = False) -> AsyncIterator[events.Event]:
        run = OperationRun("deploy", project, str(environment), self.actor, image=image)
        return run_operation(run, lambda r: self._deploy(r, image, confirm_grace),
                             self._record, detail=image)

    def promote(self, project: str, environment: str = "production") -> AsyncIterator[events.Event]:
        run = OperationRun("promote", project, str(environment), self.actor)
        return run_operation(run, self._promote, self._record)

    def rollback(self, project: str, environment: str = "production") -> AsyncIterator[events.Event]:
        run = OperationRun("rollback", project, str(environment), self.actor)
        return run_operation(run, self._rollback, self._record)

    def cleanup(self, project: str | None = None, environment: str | None = None,
                force: bool = False, slot: str | None = None) -> AsyncIterator[events.Event]:
        run = OperationRun("cleanup", project or "*", str(environment or "*"), self.actor)
        return run_operation(run, lambda r: self._cleanup(r, project, environment, force, slot),
                             self._record)

    # deploy ----------------------------------------------------------------------------------
    async def _deploy(self, run: OperationRun, image: str, confirm_grace: bool) -> tuple[str, dict]:
        project = validate_project_name(run.project)
        env = Environment.parse(run.environment)
        validate_image_ref(image)
        run.environment = env.value
        run.touched = True
        await self._authorize(run, env.value)

        with self.registry.project_lock(project, env, "deploy"):
            async with run.step("read slot registry"):
                pair = self.registry.read_slots(project, env)
                if pair is None:
                    run.log(f"new project: {project} has no {env.value} slots yet")
                    target = None
                else:
                    target = pair.deploy_target()
                    run.log(f"target slot {target.name.value} ({target.state.value}, port {target.port})")
                    if target.state is SlotState.GRACE and not confirm_grace:
                        raise TransitionRefused(
                            f"Slot {target.name.value} of {project} ({env.value}) is in grace "
                            f"(the rollback target, image {target.image}); deploying into it "
                            "destroys the rollback target. Confirm with --yes"
                        )
                    run.from_state = target.state.value

            # A new project needs the ports in use: ask Docker and the host while pulling.
            seen = asyncio.ensure_future(self.seen_ports()) if pair is None else None
            try:
                if self.config.docker.pull:
                    async with run.step("pull image"):
                        await self.host.docker.pull(image)
                        run.log(f"pulled {image}")
            except BaseException:
                if seen is not None:
                    seen.cancel()
                    await asyncio.gather(seen, return_exceptions=True)
                raise

            reserved: tuple[int, int] | None = None
            if pair is None:
                async with run.step("allocate ports"):
                    reserved = await self._reserve_ports(project, env, await seen)
                    run.log(f"allocated blue {reserved[0]}, green {reserved[1]}")
                pair = ProjectSlots(project, env, Slot(SlotName.BLUE, reserved[0]),
                                    Slot(SlotName.GREEN, reserved[1]))
                target = pair.blue
                run.from_state = SlotState.EMPTY.value
            assert target is not None
            run.slot = target.name.value
            name = container_name(project, env, target.name)

            old: ContainerInfo | None = None
            new: ContainerInfo | None = None
            old_was_running = False
            try:
                async with run.step("stop previous container"):
                    stale = await self.host.docker.inspect(name + REPLACED_SUFFIX)
                    if stale is not None:
                        await self.host.docker.remove(stale.id)
                    old = await self.host.docker.inspect(name)
                    if old is None:
                        run.log("slot has no container")
                    else:
                        old_was_running = old.status == "running"
                        await self.host.docker.stop(old.id)
                        # Keep it, under another name, until the new one is healthy.
                        await self.host.docker.rename(old.id, name + REPLACED_SUFFIX)
                        run.log(f"stopped {name} ({old.image}); kept until the new one is healthy")

                async with run.step("start container"):
                    new = await self.host.docker.run_slot(
                        name=name, image=image, port=target.port,
                        labels=labels_for(project, env.value, target.name.value),
                        env={"CODEB_PROJECT": project, "CODEB_ENVIRONMENT": env.value,
                             "CODEB_SLOT": target.name.value},
                    )
                    run.log(f"started {name} ({new.id[:12]}) on port {target.port}")

                async with run.step("health check"):
                    health = await self._wait_healthy(run, new, target.port)

                now = utcnow()
                deployed = target.with_(
                    state=SlotState.DEPLOYED, image=image, container_id=new.id,
                    container_name=name, deployed_at=now, promoted_at=None,
                    grace_expires_at=None, last_health=health,
                )
                after = pair.with_slot(deployed)
                async with run.step("update proxy and registry"):
                    await self._commit(run, None if reserved else pair, after, expected_version=pair.version)
            except BaseException:
                await self._undo_deploy(run, name, new, old, old_was_running, reserved, project)
                raise

            if old is not None:
                await self.host.docker.remove(old.id)
            run.to_state = SlotState.DEPLOYED.value
            url = self.config.preview_url(project, env, target.name.value)
            return (f"{project} ({env.value}) {image} deployed to {target.name.value} "
                    f"on port {target.port}; preview {url}",
                    {"slot": target.name.value, "port": target.port, "image": image,
                     "preview_url": url, "container": name})

    async def _undo_deploy(self, run: OperationRun, name: str, new: ContainerInfo | None,
                           old: ContainerInfo | None, old_was_running: bool,
                           reserved: tuple[int, int] | None, project: str) -> None:
        """Put everything back as it was before the deploy (seed 7.1)."""
        docker = self.host.docker
        try:
            if new is not None:
                logs = (await docker.logs(new.id, tail=5)).strip()
                if logs:
                    run.log("last lines of the new container: " + " | ".join(logs.splitlines()[-5:]),
                            level="error")
                await docker.remove(new.id)
                run.log(f"removed the new container {name}")
            if old is not None:
                await docker.rename(old.id, name)
                if old_was_running:
                    await docker.start(old.id)
                    run.log(f"restarted the previous container {name} ({old.image})")
            if reserved is not None:
                await self._release_ports(project, reserved)
                run.log(f"released ports {reserved[0]}/{reserved[1]}")
        except Exception as exc:
            run.log(f"could not fully restore the previous state: {exc}", level="error")

    async def _wait_healthy(self, run: OperationRun, container: ContainerInfo, port: int):
        """Docker's own health status if the image has one, then GET /health answering 2xx/3xx."""
        timeout = self.config.health.timeout
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        announced = None
        has_docker_health = container.health is not None
        while True:
            # Without a Docker HEALTHCHECK, ask the slot first and inspect only while it does
            # not answer: a container that exited or restarts is a failure at once.
            if not has_docker_health:
                result = await self.host.health.check(port)
                last = result.detail
                if result.ok:
                    return self._healthy(run, result)
            info = await self.host.docker.inspect(container.id)
            if info is None:
                raise HealthCheckFailed(f"Container {container.name} disappeared during the health check")
            if info.status in ("exited", "dead", "restarting") or info.restart_count:
                raise HealthCheckFailed(
                    f"Container {container.name} exited with code {info.exit_code} before becoming healthy"
                )
            if has_docker_health:
                if info.health == "unhealthy":
                    raise HealthCheckFailed(f"Container {container.name}: Docker reports it unhealthy")
                if info.health == "healthy":
                    result = await self.host.health.check(port)
                    last = result.detail
                    if result.ok:
                        return self._healthy(run, result)
                else:
                    last = f"docker health {info.health}"
            if last != announced:
                run.log(f"waiting: {last}")
                announced = last
            if time.monotonic() >= deadline:
                raise HealthCheckFailed(
                    f"Health check failed: {container.name} not healthy within {timeout:g} s (last: {last})"
                )
            await asyncio.sleep(self.config.health.interval)

    def _healthy(self, run: OperationRun, result) -> HealthRecord:
        run.log(f"healthy: GET {self.config.health.path} -> {result.detail} in {result.latency_ms:.0f} ms")
        return HealthRecord(True, result.detail, utcnow(), result.latency_ms)

    async def _check_slot(self, slot: Slot, what: str) -> Any:
        """A final check of a slot that should be serving: its container runs and /health answers."""
        info = await self.host.docker.inspect(slot.container_name or slot.container_id or "")
        if info is None or info.status != "running":
            state = "missing" if info is None else info.status
            raise HealthCheckFailed(f"{what}: container {slot.container_name} is {state}")
        result = await self.host.health.check(slot.port)
        if not result.ok:
            raise HealthCheckFailed(f"{what}: GET {self.config.health.path} on port {slot.port} -> {result.detail}")
        return HealthRecord(True, result.detail, utcnow(), result.latency_ms)

    # ports -----------------------------------------------------------------------------------
    async def seen_ports(self) -> tuple[frozenset[int], frozenset[int]]:
        """Ports of codeb's containers (running or not) and ports listening on the host."""
        containers, listening = await asyncio.gather(
            self.host.docker.list_slot_containers(), self.host.listening_ports())
        return frozenset(c.port for c in containers if c.port is not None), frozenset(listening)

    async def port_sources(self, ssot_ports: set[int] | None = None,
                           seen: tuple[frozenset[int], frozenset[int]] | None = None) -> PortSources:
        if ssot_ports is None:
            ssot_ports = set(self.registry.read_ssot().allocated)
        containers, listening = seen or await self.seen_ports()
        return PortSources(registry=frozenset(ssot_ports), containers=containers, listening=listening)

    async def _reserve_ports(self, project: str, env: Environment,
                             seen: tuple[frozenset[int], frozenset[int]]) -> tuple[int, int]:
        """Allocate and write down a pair. `seen` may be read before the lock is taken: another
        codeb process writes its pair into ssot.json before it starts a container on it, and
        ssot.json is read under the lock."""
        with self.registry.global_lock("ssot", f"allocate ports for {project} ({env.value})"):
            ssot = self.registry.read_ssot()
            sources = await self.port_sources(set(ssot.allocated), seen)
            blue, green = allocate_port_pair(self.config.env(env).ports, sources, env.value)
            ssot.allocated[blue] = project
            ssot.allocated[green] = project
            self.registry.write_ssot(ssot)
            return blue, green

    async def _release_ports(self, project: str, ports: tuple[int, int]) -> None:
        with self.registry.global_lock("ssot", f"release ports of {project}"):
            ssot = self.registry.read_ssot()
            for port in ports:
                if ssot.allocated.get(port) == project:
                    del ssot.allocated[port]
            self.registry.write_ssot(ssot)

    # proxy -----------------------------------------------------------------------------------
    async def _commit(self, run: OperationRun, before: ProjectSlots | None, after: ProjectSlots,
                      expected_version: int) -> ProjectSlots:
        """Switch the proxy to what the registry will be, then write the slot file.

        Under the proxy lock, so two switches never interleave. The config generated from the
        registry is loaded only when it differs from the live one (Caddy reloads on every load);
        then the switch markers are set. A rejected config or a failed write restores the
        previous config and markers."""
        with self.registry.global_lock("proxy", f"{run.operation} {run.project} ({run.environment})"):
            others = [p for p in self.registry.read_all()
                      if (p.project, p.environment) != (after.project, after.environment)]
            config = build_caddy_config(self.config, others + [after])
            backup = await self._load_proxy_config(run, config)
            try:
                await self._set_markers(after.project, after.environment, [after])
                written = self.registry.write_slots(after, expected_version=expected_version)
            except BaseException as exc:
                run.log(f"{exc}; restoring the previous proxy state", level="error")
                await self._set_markers(after.project, after.environment, [before] if before else [])
                if backup is not None:
                    await self._restore_proxy_config(run, backup, exc)
                raise
            if backup is not None:  # a new config went live: keep a copy of what Caddy runs
                atomic_write_json(self.config.caddy.config_dir / "caddy.json", config)
            return written

    async def _load_proxy_config(self, run: OperationRun, config: dict) -> dict | None:
        """Load `config` into Caddy unless it is already live. Returns the backup of what was
        live when a load happened, None when nothing was loaded."""
        caddy = self.host.caddy
        live = await caddy.current()
        if live == config:
            run.log("proxy config unchanged: no reload")
            return None
        backup = live or {"admin": config["admin"]}
        run.log(f"backed up the live proxy config to {self._save_backup(backup)}")
        try:
            await caddy.load(config)
        except ProxyApplyFailed as exc:
            await self._restore_proxy_config(run, backup, exc)
            raise
        run.log(f"proxy config applied ({route_count(config)} routes)")
        return backup

    async def _restore_proxy_config(self, run: OperationRun, backup: dict, cause: BaseException) -> None:
        run.log(f"{cause}; re-applying the previous proxy config", level="error")
        try:
            await self.host.caddy.load(backup)
        except ProxyApplyFailed as again:
            raise ProxyApplyFailed(f"{cause}; re-applying the backup failed too: {again}") from None
        run.log("previous proxy config re-applied")

    async def _set_markers(self, project: str, environment: Environment,
                           pairs: list[ProjectSlots]) -> None:
        """Make the switch markers of one project+environment match `pairs` (file mode). New
        markers are created before stale ones are removed, so there is never a moment with no
        route: while both exist, the route listed first (blue) answers."""
        if self.config.caddy.switch_mode != "file":
            return
        directory = self.config.caddy.markers
        prefix = f"{project}-{environment.suffix}."
        present = {n for n in await self.host.list_files(directory) if n.startswith(prefix)}
        wanted = wanted_markers(pairs)
        for name in sorted(wanted - present):
            await self.host.create_file(directory / name)
        for name in sorted(present - wanted):
            await self.host.remove_file(directory / name)

    def _save_backup(self, config: dict) -> str:
        backups = self.config.caddy.config_dir / "backups"
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        path = backups / f"caddy-{stamp}.json"
        atomic_write_json(path, config)
        for stale in sorted(backups.glob("caddy-*.json"))[: -self.config.caddy.keep_backups]:
            stale.unlink(missing_ok=True)
        return str(path)

    async def apply_proxy(self) -> dict:
        """Make the proxy serve the registry as it is: config and switch markers (reconcile,
        start-up after a Caddy restart)."""
        with self.registry.global_lock("proxy", "apply proxy config"):
            pairs = self.registry.read_all()
            config = build_caddy_config(self.config, pairs)
            await self.host.caddy.load(config)
            if self.config.caddy.switch_mode == "file":
                directory = self.config.caddy.markers
                wanted = wanted_markers(pairs)
                present = await self.host.list_files(directory)
                for name in sorted(wanted - present):
                    await self.host.create_file(directory / name)
                for name in sorted(n for n in present - wanted if n.endswith((".live", ".preview"))):
                    await self.host.remove_file(directory / name)
            atomic_write_json(self.config.caddy.config_dir / "caddy.json", config)
            return config

    # promote and rollback --------------------------------------------------------------------
    def _locked_pair(self, run: OperationRun) -> tuple[str, Environment]:
        project = validate_project_name(run.project)
        env = Environment.parse(run.environment)
        run.environment = env.value
        run.touched = True
        return project, env

    async def _promote(self, run: OperationRun) -> tuple[str, dict]:
        project, env = self._locked_pair(run)
        await self._authorize(run, env.value)
        with self.registry.project_lock(project, env, "promote"):
            pair = self.registry.read_slots(project, env)
            target = pair.in_state(SlotState.DEPLOYED) if pair else None
            if pair is None or target is None:
                states = describe_states(pair)
                raise TransitionRefused(f"Cannot promote {project} ({env.value}): no deployed slot"
                                        f" ({states}). Run deploy first")
            run.slot, run.image = target.name.value, target.image
            run.from_state, run.to_state = SlotState.DEPLOYED.value, SlotState.ACTIVE.value
            async with run.step("final health check"):
                health = await self._check_slot(target, "Health Check Failed")
                run.log(f"{target.name.value} answers {health.detail} in {health.latency_ms:.0f} ms")
            now = utcnow()
            after = pair.with_slot(target.with_(state=SlotState.ACTIVE, promoted_at=now,
                                                grace_expires_at=None, last_health=health))
            previous = pair.active
            if previous is not None:
                after = after.with_slot(previous.with_(
                    state=SlotState.GRACE,
                    grace_expires_at=now + timedelta(hours=self.config.grace_hours)))
            async with run.step("switch proxy"):
                await self._commit(run, pair, after, expected_version=pair.version)
        url = self.config.production_url(project, env)
        kept = (f"; {previous.name.value} ({previous.image}) kept in grace for "
                f"{self.config.grace_hours:g} h") if previous else ""
        return (f"{project} ({env.value}) {target.image} on {target.name.value} is live at {url}{kept}",
                {"slot": target.name.value, "port": target.port, "image": target.image,
                 "url": url, "grace_slot": previous.name.value if previous else None})

    async def _rollback(self, run: OperationRun) -> tuple[str, dict]:
        project, env = self._locked_pair(run)
        await self._authorize(run, env.value)
        with self.registry.project_lock(project, env, "rollback"):
            pair = self.registry.read_slots(project, env)
            grace = pair.in_state(SlotState.GRACE) if pair else None
            if pair is None or grace is None:
                raise TransitionRefused(f"No grace slot: cannot roll back {project} ({env.value})"
                                        f" ({describe_states(pair)})")
            run.slot, run.image = grace.name.value, grace.image
            run.from_state, run.to_state = SlotState.GRACE.value, SlotState.ACTIVE.value
            async with run.step("grace slot health check"):
                try:
                    health = await self._check_slot(grace, "Grace slot unhealthy")
                except HealthCheckFailed as exc:
                    raise TransitionRefused(str(exc)) from None
            now = utcnow()
            after = pair.with_slot(grace.with_(state=SlotState.ACTIVE, promoted_at=now,
                                               grace_expires_at=None, last_health=health))
            current = pair.active
            if current is not None:
                after = after.with_slot(current.with_(
                    state=SlotState.GRACE,
                    grace_expires_at=now + timedelta(hours=self.config.grace_hours)))
            async with run.step("switch proxy"):
                await self._commit(run, pair, after, expected_version=pair.version)
        url = self.config.production_url(project, env)
        return (f"{project} ({env.value}) rolled back to {grace.name.value} ({grace.image}) at {url}",
                {"slot": grace.name.value, "port": grace.port, "image": grace.image, "url": url,
                 "grace_slot": current.name.value if current else None})

    # cleanup ---------------------------------------------------------------------------------
    async def _cleanup(self, run: OperationRun, project: str | None, environment: str | None,
                       force: bool, slot_name: str | None) -> tuple[str, dict]:
        if project is not None:
            validate_project_name(project)
        env_filter = Environment.parse(environment) if environment else None
        chosen = SlotName(slot_name) if slot_name in ("blue", "green") else None
        if slot_name is not None and chosen is None:
            raise BadInput(f"Unknown slot {slot_name!r}: expected blue or green")
        if chosen is not None and (project is None or not force):
            raise BadInput("Cleaning a named slot needs PROJECT and --force")
        run.touched = True
        await self._authorize(run, env_filter.value if env_filter else None)
        now = utcnow()
        cleaned: list[str] = []
        targets = [(p, e) for p, e in self.registry.list_slot_files()
                   if (project is None or p == project) and (env_filter is None or e is env_filter)]
        if project is not None and not targets:
            raise TransitionRefused(f"{project} has no slots"
                                    + (f" in {env_filter.value}" if env_filter else ""))
        for name, env in targets:
            try:
                lock = self.registry.project_lock(name, env, "cleanup")
                lock.__enter__()
            except Exception as exc:
                run.warn(f"skipped {name} ({env.value}): {exc}")
                continue
            try:
                pair = self.registry.read_slots(name, env)
                if pair is None:
                    continue
                for slot in pair.slots():
                    if chosen is not None:
                        if slot.name is not chosen:
                            continue
                        if slot.state is SlotState.ACTIVE:
                            raise TransitionRefused(
                                f"Slot {slot.name.value} of {name} ({env.value}) is active and "
                                "serves production; promote or roll back first")
                        if slot.state is SlotState.EMPTY:
                            raise TransitionRefused(
                                f"Slot {slot.name.value} of {name} ({env.value}) is already empty")
                    elif slot.state is not SlotState.GRACE:
                        continue
                    elif not force and slot.grace_expires_at and slot.grace_expires_at > now:
                        left = slot.grace_expires_at - now
                        run.log(f"{name} ({env.value}) {slot.name.value}: grace has "
                                f"{left.total_seconds() / 3600:.1f} h left; kept")
                        continue
                    async with run.step(f"remove {name} ({env.value}) {slot.name.value}"):
                        after = pair.with_slot(slot.emptied())
                        await self._commit(run, pair, after, expected_version=pair.version)
                        await self.host.docker.remove(slot.container_name or slot.container_id or "")
                        pair = self.registry.read_slots(name, env)
                        run.slot, run.from_state, run.to_state = slot.name.value, slot.state.value, "empty"
                        cleaned.append(f"{name}-{env.suffix}-{slot.name.value}")
                        run.log(f"removed {slot.image} from {name} ({env.value}) {slot.name.value}")
            finally:
                lock.__exit__(None, None, None)
        summary = f"cleaned {len(cleaned)} slot(s)" + (f": {', '.join(cleaned)}" if cleaned else "")
        return summary, {"cleaned": cleaned}

    # queries ---------------------------------------------------------------------------------
    async def status(self, project: str | None = None, environment: str | None = None,
                     live: bool = True) -> list[dict[str, Any]]:
        """One row per slot: the registry, plus live container and health state."""
        if project is not None:
            validate_project_name(project)
        env_filter = Environment.parse(environment) if environment else None
        pairs = [p for p in self.registry.read_all()
                 if (project is None or p.project == project)
                 and (env_filter is None or p.environment is env_filter)]
        containers: dict[str, ContainerInfo] = {}
        if live:
            try:
                containers = {c.name: c for c in await self.host.docker.list_slot_containers()}
            except OperationFailed:
                containers = {}
        slots = [(pair, slot) for pair in pairs for slot in pair.slots()]
        # Bounded: a thousand checks gathered at once queue on the client's connection pool
        # and time out instead of answering.
        gate = asyncio.Semaphore(HEALTH_CONCURRENCY)

        async def check(slot: Slot):
            if not live or slot.state is SlotState.EMPTY:
                return None
            async with gate:
                return await self.host.health.check(slot.port)

        checks = await asyncio.gather(*[check(slot) for _, slot in slots])
        rows = []
        for (pair, slot), check in zip(slots, checks):
            env = pair.environment
            if slot.state is SlotState.ACTIVE:
                url = self.config.production_url(pair.project, env)
            elif slot.state is SlotState.EMPTY:
                url = None
            else:
                url = self.config.preview_url(pair.project, env, slot.name.value)
            info = containers.get(slot.container_name or "")
            rows.append({
                "project": pair.project,
                "environment": env.value,
                "slot": slot.name.value,
                "state": slot.state.value,
                "port": slot.port,
                "image": slot.image,
                "health": ("none" if slot.state is SlotState.EMPTY else
                           "unknown" if check is None else
                           "healthy" if check.ok else "unhealthy"),
                "health_detail": None if check is None else check.detail,
                "latency_ms": None if check is None or check.latency_ms is None
                else round(check.latency_ms, 1),
                "url": url,
                "container": slot.container_name,
                "container_status": info.status if info else ("missing" if live and slot.container_name else None),
                "deployed_at": slot.deployed_at.isoformat() if slot.deployed_at else None,
                "grace_expires_at": slot.grace_expires_at.isoformat() if slot.grace_expires_at else None,
                "version": pair.version,
            })
        return rows

    async def ports_report(self) -> dict[str, Any]:
        """Each environment's range with used and free pairs, and every disagreement between
        ssot.json, codeb's containers and the sockets listening on the host."""
        ssot = self.registry.read_ssot()
        containers = await self.host.docker.list_slot_containers()
        listening = await self.host.listening_ports()
        by_port = {c.port: c for c in containers if c.port is not None}
        running_ports = {c.port for c in containers if c.status == "running"}
        environments = []
        conflicts = []
        for env in Environment:
            low, high = self.config.env(env).ports
            pairs = []
            free = 0
            for port in range(low + low % 2, high, 2):
                owners = {ssot.allocated.get(p) for p in (port, port + 1)} - {None}
                held = [p for p in (port, port + 1) if p in listening and p not in running_ports]
                if not owners and not held and port not in by_port and port + 1 not in by_port:
                    free += 1
                    continue
                pairs.append({"blue": port, "green": port + 1,
                              "project": ", ".join(sorted(o or "?" for o in owners)) or None,
                              "listening": [p for p in (port, port + 1) if p in listening],
                              "containers": [by_port[p].name for p in (port, port + 1) if p in by_port]})
            environments.append({"environment": env.value, "range": [low, high],
                                 "used_pairs": pairs, "free_pairs": free})
        for port in sorted(set(ssot.allocated) | set(by_port) | listening):
            owner = ssot.allocated.get(port)
            container = by_port.get(port)
            in_range = any(lo <= port <= hi for lo, hi in (self.config.env(e).ports for e in Environment))
            if not in_range:
                continue
            if port in listening and port not in running_ports:
                kind = "held_by_unknown_process" if owner else "foreign_listener"
                detail = (f"port {port} is allocated to {owner} in ssot.json but another program "
                          "listens on it" if owner else
                          f"port {port} is not in ssot.json but another program listens on it; "
                          "allocation skips its pair")
                conflicts.append({"port": port, "kind": kind, "detail": detail})
            if container is not None and owner is None:
                conflicts.append({"port": port, "kind": "container_not_in_registry",
                                  "detail": f"container {container.name} uses port {port}, "
                                            "which ssot.json does not allocate"})
            if container is not None and owner and container.labels.get("codeb.project") != owner:
                conflicts.append({"port": port, "kind": "owner_mismatch",
                                  "detail": f"ssot.json gives port {port} to {owner} but container "
                                            f"{container.name} uses it"})
        return {"environments": environments, "conflicts": conflicts}


def describe_states(pair: ProjectSlots | None) -> str:
    if pair is None:
        return "no slots yet"
    return ", ".join(f"{s.name.value} is {s.state.value}" for s in pair.slots())


def slot_rows(pair: ProjectSlots) -> list[SlotRow]:
    return [
        SlotRow(project=pair.project, environment=pair.environment.value, slot=s.name.value,
                state=s.state.value, port=s.port, image=s.image, container_id=s.container_id,
                deployed_at=s.deployed_at, promoted_at=s.promoted_at,
                grace_expires_at=s.grace_expires_at, version=pair.version)
        for s in pair.slots()
    ]


def dumps_event(event: events.Event) -> str:
    return json.dumps(event.to_json(), default=str)
