"""The file registry: the primary source of truth (docs/architecture.md, "The registry
format").

    <root>/ssot.json                    {"ports": {"used": [...], "allocated": {"4100": "a"}}}
    <root>/slots/<project>-<suffix>.json both slots of one project+environment, versioned
    <root>/locks/                       flock files (one per project+environment, one for ssot)

Every write goes to a temporary file, is fsynced and renamed over the target, so a reader sees
the old file or the new one, never half of one. A file that does not parse or does not have the
expected shape raises `RegistryCorrupt` naming it; nothing is written over it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from codeb_tui.domain.durable import atomic_write
from codeb_tui.domain.errors import RegistryCorrupt
from codeb_tui.domain.model import (
    HOST_NAME_RE,
    LOCAL_HOST,
    PROJECT_NAME_RE,
    Environment,
    HealthRecord,
    ProjectSlots,
    Slot,
    SlotName,
    SlotState,
    from_iso,
    slot_to_dict,
    to_iso,
    utcnow,
    validate_project_name,
)
from codeb_tui.registry.locks import LockWaiting, file_lock, is_locked

SLOT_FILE_FORMAT = 1


@dataclass(frozen=True)
class CorruptFile:
    project: str
    environment: Environment
    error: str


@dataclass
class Ssot:
    """ssot.json: which ports are taken and by which project. Unknown top-level keys survive."""

    allocated: dict[int, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def used(self) -> list[int]:
        return sorted(self.allocated)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.extra,
            "ports": {
                "used": self.used,
                "allocated": {str(p): self.allocated[p] for p in self.used},
            },
        }


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


def _read_json(path: Path) -> Any | None:
    text = _read_text(path)
    return None if text is None else _parse_json(path, text)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise RegistryCorrupt(f"{path}: not UTF-8 text; fix or restore it by hand") from None
    except OSError as exc:
        raise RegistryCorrupt(f"{path}: cannot read: {exc.strerror}") from None


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise RegistryCorrupt(f"{path}: not valid JSON ({exc}); fix or restore it by hand") from None


class FileRegistry:
    def __init__(self, root: Path, lock_wait: float = 0.0) -> None:
        self.root = Path(root)
        self.lock_wait = lock_wait
        self._parsed: dict[Path, tuple[str, ProjectSlots]] = {}  # see read_slots

    # paths -----------------------------------------------------------------------------------
    @property
    def ssot_path(self) -> Path:
        return self.root / "ssot.json"

    @property
    def slots_dir(self) -> Path:
        return self.root / "slots"

    def slot_path(self, project: str, environment: Environment) -> Path:
        validate_project_name(project)
        return self.slots_dir / f"{project}-{environment.suffix}.json"

    def lock_path(self, name: str) -> Path:
        return self.root / "locks" / f"{name}.lock"

    # locks -----------------------------------------------------------------------------------
    def project_lock(self, project: str, environment: Environment, purpose: str,
                     actor: str | None = None, on_wait: LockWaiting | None = None):
        """The project+environment lock every operation holds while it runs (async with)."""
        return file_lock(
            self.lock_path(f"{project}-{environment.suffix}"),
            purpose=f"{purpose} {project} ({environment.value})",
            what=f"{project} ({environment.value})",
            wait=self.lock_wait, actor=actor, on_wait=on_wait,
        )

    def global_lock(self, name: str, purpose: str, wait: float = 30.0,
                    actor: str | None = None, on_wait: LockWaiting | None = None):
        """Short critical sections shared by all projects: port allocation, proxy switching."""
        return file_lock(self.lock_path(name), purpose=purpose, what=f"the {name} registry",
                         wait=wait, actor=actor, on_wait=on_wait)

    def project_busy(self, project: str, environment: Environment) -> bool:
        """Whether an operation holds the project+environment lock right now."""
        return is_locked(self.lock_path(f"{project}-{environment.suffix}"))

    # ssot.json -------------------------------------------------------------------------------
    def read_ssot(self) -> Ssot:
        data = _read_json(self.ssot_path)
        if data is None:
            return Ssot()
        path = self.ssot_path
        if not isinstance(data, dict) or not isinstance(data.get("ports", {}), dict):
            raise RegistryCorrupt(f"{path}: expected {{\"ports\": {{\"used\": [...], \"allocated\": {{...}}}}}}")
        ports = data.get("ports", {})
        allocated_raw = ports.get("allocated", {})
        used_raw = ports.get("used", [])
        if not isinstance(allocated_raw, dict) or not isinstance(used_raw, list):
            raise RegistryCorrupt(f"{path}: ports.used must be a list and ports.allocated a mapping")
        allocated: dict[int, str] = {}
        for key, owner in allocated_raw.items():
            if not (isinstance(key, str) and key.isdigit() and isinstance(owner, str)):
                raise RegistryCorrupt(f"{path}: ports.allocated entry {key!r}: {owner!r} is not port: project")
            allocated[int(key)] = owner
        for port in used_raw:
            if not isinstance(port, int) or isinstance(port, bool):
                raise RegistryCorrupt(f"{path}: ports.used holds {port!r}, not a port number")
            # A port listed as used without an owner is still taken: keep it, owner unknown.
            allocated.setdefault(port, "")
        extra = {k: v for k, v in data.items() if k != "ports"}
        return Ssot(allocated=allocated, extra=extra)

    def write_ssot(self, ssot: Ssot) -> None:
        atomic_write_json(self.ssot_path, ssot.to_json())

    # slot files ------------------------------------------------------------------------------
    def read_slots(self, project: str, environment: Environment) -> ProjectSlots | None:
        path = self.slot_path(project, environment)
        text = _read_text(path)
        if text is None:
            return None
        # A file whose text is what it was when last parsed is not parsed again: a switch reads
        # every slot file for the proxy config, and parsing is most of that cost. The text
        # itself is compared (not stat times, which are coarse: two writes within one clock tick
        # can reuse an inode with the same size and times).
        known = self._parsed.get(path)
        if known is not None and known[0] == text:
            return known[1]
        pair = parse_slot_file(path, _parse_json(path, text), project, environment)
        self._parsed[path] = (text, pair)
        return pair

    def write_slots(self, slots: ProjectSlots, expected_version: int | None = None) -> ProjectSlots:
        """Write one slot file, bumping its version. The caller holds the project lock; the
        version check still catches a hand edit made while the operation ran."""
        path = self.slot_path(slots.project, slots.environment)
        current = self.read_slots(slots.project, slots.environment)
        on_disk = current.version if current else 0
        if expected_version is not None and on_disk != expected_version:
            raise RegistryCorrupt(
                f"{path}: changed while the operation ran (version {on_disk}, expected "
                f"{expected_version}); nothing was written"
            )
        written = replace(slots, version=on_disk + 1, updated_at=utcnow())
        atomic_write_json(path, slot_file_json(written))
        return written

    def remove_slots(self, project: str, environment: Environment) -> None:
        self.slot_path(project, environment).unlink(missing_ok=True)

    def list_slot_files(self) -> list[tuple[str, Environment]]:
        """Every project+environment that has a slot file, sorted."""
        return [(project, env) for project, env, stray in self._listed() if not stray]

    def _listed(self) -> list[tuple[str, Environment, bool]]:
        """(project, environment, stray) of every `<name>-<suffix>.json` in slots/; stray when
        the name is no project name (a hand-made copy): never read, never written."""
        found: list[tuple[str, Environment, bool]] = []
        if not self.slots_dir.is_dir():
            return found
        suffixes = {env.suffix: env for env in Environment}
        for path in sorted(self.slots_dir.glob("*.json")):
            stem = path.stem
            for suffix, env in suffixes.items():
                if stem.endswith("-" + suffix):
                    project = stem[: -len(suffix) - 1]
                    found.append((project, env, not PROJECT_NAME_RE.fullmatch(project)))
                    break
        return found

    def _stray(self, project: str, environment: Environment) -> RegistryCorrupt:
        path = self.slots_dir / f"{project}-{environment.suffix}.json"
        return RegistryCorrupt(f"{path}: not a codeb slot file ({project!r} is no project name); "
                               "move it out of the registry")

    def read_all(self) -> list[ProjectSlots]:
        pairs = []
        for project, env, stray in self._listed():
            if stray:
                raise self._stray(project, env)
            if (slots := self.read_slots(project, env)) is not None:
                pairs.append(slots)
        return pairs

    def read_all_readable(self) -> tuple[list[ProjectSlots], list[CorruptFile]]:
        """Every slot file that parses, and the ones that do not (each with its error), so that
        one broken project never stops the others (proxy config, reconcile)."""
        pairs: list[ProjectSlots] = []
        corrupt: list[CorruptFile] = []
        for project, env, stray in self._listed():
            try:
                if stray:
                    raise self._stray(project, env)
                pair = self.read_slots(project, env)
            except RegistryCorrupt as exc:
                corrupt.append(CorruptFile(project, env, str(exc)))
                continue
            if pair is not None:
                pairs.append(pair)
        return pairs, corrupt

    def any_slot_in_use(self) -> bool:
        """Whether some readable slot file has a slot that is not empty: read file by file, up
        to the first such one (all-empty files, a first deploy under way or killed, have
        nothing for the proxy to serve)."""
        for project, env, stray in self._listed():
            try:
                pair = None if stray else self.read_slots(project, env)
            except RegistryCorrupt:
                continue
            if pair is not None and any(s.state is not SlotState.EMPTY for s in pair.slots()):
                return True
        return False


    # the same, off the event loop ----------------------------------------------------------
    # The engine runs on the console's (or the server's) loop: a file read or an fsync'd write
    # goes to a worker thread so that drawing and other requests never wait on the disk.
    async def aread_slots(self, project: str, environment: Environment) -> ProjectSlots | None:
        return await asyncio.to_thread(self.read_slots, project, environment)

    async def aread_all(self) -> list[ProjectSlots]:
        return await asyncio.to_thread(self.read_all)

    async def aread_all_readable(self) -> tuple[list[ProjectSlots], list[CorruptFile]]:
        return await asyncio.to_thread(self.read_all_readable)

    async def aany_slot_in_use(self) -> bool:
        return await asyncio.to_thread(self.any_slot_in_use)

    async def awrite_slots(self, slots: ProjectSlots, expected_version: int | None = None) -> ProjectSlots:
        return await asyncio.to_thread(self.write_slots, slots, expected_version)

    async def aread_ssot(self) -> Ssot:
        return await asyncio.to_thread(self.read_ssot)

    async def awrite_ssot(self, ssot: Ssot) -> None:
        await asyncio.to_thread(self.write_ssot, ssot)


def slot_file_json(slots: ProjectSlots) -> dict[str, Any]:
    data = {
        "format": SLOT_FILE_FORMAT,
        "project": slots.project,
        "environment": slots.environment.value,
        "version": slots.version,
        "updated_at": to_iso(slots.updated_at),
        "slots": {slot.name.value: slot_to_dict(slot) for slot in slots.slots()},
    }
    if not slots.local_only:  # absent means ["local"]: files of local projects stay as they were
        data["hosts"] = list(slots.hosts)
    return data


def parse_slot_file(path: Path, data: Any, project: str, environment: Environment) -> ProjectSlots:
    def bad(why: str) -> RegistryCorrupt:
        return RegistryCorrupt(f"{path}: {why}; fix or restore it by hand")

    if not isinstance(data, dict):
        raise bad("expected a JSON object")
    if data.get("project") != project or data.get("environment") != environment.value:
        raise bad(f"names {data.get('project')!r}/{data.get('environment')!r}, "
                  f"expected {project!r}/{environment.value!r}")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise bad("version must be a non-negative integer")
    raw_slots = data.get("slots")
    if not isinstance(raw_slots, dict) or set(raw_slots) != {"blue", "green"}:
        raise bad("slots must hold exactly 'blue' and 'green'")
    parsed = {}
    for name in ("blue", "green"):
        parsed[name] = _parse_slot(raw_slots[name], SlotName(name), bad)
    if parsed["blue"].port % 2 or parsed["green"].port != parsed["blue"].port + 1:
        raise bad("blue must hold an even port and green the next odd one")
    active = [s for s in parsed.values() if s.state is SlotState.ACTIVE]
    if len(active) > 1:
        raise bad("both slots are active")
    try:
        updated_at = from_iso(data.get("updated_at"))
    except (TypeError, ValueError):
        raise bad("updated_at is not an ISO timestamp") from None
    hosts = data.get("hosts", [LOCAL_HOST])
    if (not isinstance(hosts, list) or not hosts or len(set(hosts)) != len(hosts)
            or not all(isinstance(h, str) and HOST_NAME_RE.fullmatch(h) for h in hosts)):
        raise bad("hosts must be a non-empty list of distinct host names")
    for slot in parsed.values():
        if slot.container_ids and {h for h, _ in slot.container_ids} - set(hosts):
            raise bad(f"slot {slot.name.value} has containers on hosts the file does not list")
    return ProjectSlots(project, environment, parsed["blue"], parsed["green"], version, updated_at,
                        tuple(hosts))


def _parse_slot(raw: Any, name: SlotName, bad) -> Slot:
    if not isinstance(raw, dict):
        raise bad(f"slot {name.value} must be an object")
    try:
        state = SlotState(raw.get("state"))
    except ValueError:
        raise bad(f"slot {name.value} has unknown state {raw.get('state')!r}") from None
    port = raw.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise bad(f"slot {name.value} port must be a port number")
    for key in ("image", "container_id", "container_name"):
        if raw.get(key) is not None and not isinstance(raw.get(key), str):
            raise bad(f"slot {name.value} {key} must be a string")
    ids = raw.get("container_ids", {})
    if not isinstance(ids, dict) or not all(isinstance(v, str) for v in ids.values()):
        raise bad(f"slot {name.value} container_ids must map host names to container ids")
    if state is not SlotState.EMPTY and not raw.get("image"):
        raise bad(f"slot {name.value} is {state.value} but has no image")
    try:
        times = {k: from_iso(raw.get(k)) for k in ("deployed_at", "promoted_at", "grace_expires_at")}
        health = raw.get("last_health")
        last_health = None
        if health is not None:
            last_health = HealthRecord(
                ok=bool(health["ok"]),
                detail=str(health.get("detail", "")),
                checked_at=from_iso(health["checked_at"]),
                latency_ms=health.get("latency_ms"),
            )
    except (TypeError, ValueError, KeyError):
        raise bad(f"slot {name.value} has a malformed timestamp or health record") from None
    return Slot(
        name=name,
        port=port,
        state=state,
        image=raw.get("image"),
        container_id=raw.get("container_id"),
        container_name=raw.get("container_name"),
        last_health=last_health,
        container_ids=tuple(ids.items()),
        **times,
    )
