"""Changes to the registry made by anyone (another console, the CLI, CI through the API, a hand
edit), told by file-system events: inotify through watchfiles, so an idle console costs
nothing per slot file. Where inotify cannot be had (no watches left, a file system without
events), a slow stat of every file stands in."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from codeb_tui.domain.model import Environment
from codeb_tui.registry.files import FileRegistry

log = logging.getLogger(__name__)

DEBOUNCE_MS = 100
"""Events this close together come as one batch (an operation writes a file several times)."""
STEP_MS = 50
"""How often the watcher thread looks for events and for the stop signal."""
_SUFFIXES = {env.suffix: env for env in Environment}


@dataclass(frozen=True)
class RegistryChanges:
    """What changed since the last batch. `rescan`: anything may have changed (the stat
    fallback, or a file outside slots/ and locks/): read everything again."""

    slot_files: frozenset[tuple[str, Environment]] = frozenset()
    locks: frozenset[tuple[str, Environment]] = frozenset()
    rescan: bool = False


def _project_of(name: str, extension: str) -> tuple[str, Environment] | None:
    """("shop", production) for `shop-prod<extension>`; None for other files (temporaries of
    the atomic writes start with a dot)."""
    if name.startswith(".") or not name.endswith(extension):
        return None
    project, _, suffix = name[: -len(extension)].rpartition("-")
    env = _SUFFIXES.get(suffix)
    return (project, env) if project and env else None


def _changes(registry: FileRegistry, paths: set[str]) -> RegistryChanges:
    slots, locks = set(), set()
    for raw in paths:
        path = Path(raw)
        if path.parent == registry.slots_dir:
            if (key := _project_of(path.name, ".json")) is not None:
                slots.add(key)
        elif path.parent == registry.root / "locks":
            if (key := _project_of(path.name, ".lock")) is not None:
                locks.add(key)
    return RegistryChanges(frozenset(slots), frozenset(locks))


def _relevant(registry: FileRegistry):
    watched = (str(registry.slots_dir), str(registry.root / "locks"))

    def keep(_change: object, raw: str) -> bool:
        folder, _, name = raw.rpartition(os.sep)
        return folder in watched and not name.startswith(".")

    return keep


class RegistryWatcher:
    """Each batch of changes to slot files and lock files, as it happens (`async for`), until
    the caller stops iterating. `mode` says how they are noticed: "events" (inotify) or "stat"
    (every `fallback_interval` seconds, when the machine gives no events)."""

    def __init__(self, registry: FileRegistry, fallback_interval: float) -> None:
        self.registry = registry
        self.fallback_interval = fallback_interval
        self.mode = "events"

    async def __aiter__(self) -> AsyncIterator[RegistryChanges]:
        registry = self.registry
        try:
            from watchfiles import awatch  # loads only for the console

            for folder in (registry.slots_dir, registry.root / "locks"):
                folder.mkdir(parents=True, exist_ok=True)  # inotify watches what exists
            events = awatch(registry.slots_dir, registry.root / "locks",
                            watch_filter=_relevant(registry), debounce=DEBOUNCE_MS, step=STEP_MS,
                            recursive=False, force_polling=False)
            batch = await anext(events)  # the watcher starts here: a refusal shows at once
        except (OSError, RuntimeError, ImportError) as exc:
            self.mode = "stat"
            log.warning("registry: no file-system events (%s); checking files every %.1f s",
                        exc, self.fallback_interval)
            async for changes in _stat_poll(registry, self.fallback_interval):
                yield changes
            return
        try:
            while True:
                yield _changes(registry, {raw for _, raw in batch})
                batch = await anext(events)
        finally:
            await events.aclose()


async def _stat_poll(registry: FileRegistry, interval: float) -> AsyncIterator[RegistryChanges]:
    before = await asyncio.to_thread(signature, registry)
    while True:
        await asyncio.sleep(interval)
        now = await asyncio.to_thread(signature, registry)
        if now != before:
            before = now
            yield RegistryChanges(rescan=True)


def signature(registry: FileRegistry) -> tuple:
    """mtimes and sizes of slot files and lock files: one stat per file."""
    sig = []
    for folder in (registry.slots_dir, registry.root / "locks"):
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    st = entry.stat()
                    sig.append((entry.name, st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            continue
    return tuple(sorted(sig))
