"""The history store's life cycle: connect and migrate on first use, reconnect after a
failure, and keep what could not be written in the journal until it can be.

Writes go file registry first (done by the operation), then here. A database that is down
never fails an operation: its deployment and audit rows go to a durable journal beside the
registry and are replayed, idempotently by operation id, on the next successful connection and
by reconcile.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from codeb_tui.domain.config import Config
from codeb_tui.store import Store, StoreError, open_store
from codeb_tui.store.base import AuditRecord, DeploymentRecord, SlotRow
from codeb_tui.store.journal import Journal, ReplayResult


def journal_path(registry_root: Path) -> Path:
    return Path(registry_root) / "journal" / "history.jsonl"


class History:
    def __init__(self, config: Config) -> None:
        self._database = config.database
        self.journal = Journal(journal_path(config.registry.root))
        self._store: Store | None = None
        self._connecting = asyncio.Lock()
        self.last_replay: ReplayResult | None = None

    @property
    def description(self) -> str:
        db = self._database
        if self._store is not None:
            return self._store.description
        if db.dsn:
            try:
                return open_store(db.dsn, db.sqlite_path, db.connect_timeout).description
            except StoreError:
                return "postgresql (unparsable DSN)"
        return f"sqlite {db.sqlite_path}"

    async def store(self) -> Store:
        """The database, connected and migrated on first use (the journal replayed then).
        Raises StoreError when it is down."""
        if self._store is not None:
            return self._store
        async with self._connecting:  # two callers at once open one connection
            if self._store is None:
                db = self._database
                store = open_store(db.dsn, db.sqlite_path, db.connect_timeout)
                try:
                    await store.connect()
                    await store.migrate()
                except BaseException:
                    await _close_quietly(store)
                    raise
                self._store = store
                await self.replay()
        return self._store

    async def forget(self) -> None:
        """The connection failed: drop it, so that the next use reconnects (and replays)."""
        store, self._store = self._store, None
        if store is not None:
            await _close_quietly(store)

    async def replay(self) -> ReplayResult | None:
        """Write the journal's rows into the connected database (no-op when empty)."""
        if self._store is None or not await asyncio.to_thread(self.journal.count):
            return None
        self.last_replay = await self.journal.replay(self._store)
        return self.last_replay

    async def pending(self) -> int:
        """Rows kept in the journal, not yet in the database."""
        return await asyncio.to_thread(self.journal.count)

    async def record(self, deployment: DeploymentRecord | None, audit: AuditRecord | None,
                     slots: list[SlotRow], patience: float | None = None) -> str | None:
        """Write an operation's rows. Returns None, or the warning to show when the database
        could not take them (they are then in the journal). With `patience`, a database not
        connected yet gets that many seconds to connect (a refusal must not wait for a
        database that accepts connections and never answers)."""
        try:
            if patience is not None and self._store is None:
                try:
                    store = await asyncio.wait_for(self.store(), patience)
                except TimeoutError:
                    raise StoreError(f"{self.description}: no answer within {patience:g} s") from None
            else:
                store = await self.store()
            if slots:
                await store.upsert_project_slots(slots)
            if deployment is not None:
                await store.record_deployment(deployment)
            if audit is not None:
                await store.record_audit(audit)
            return None
        except StoreError as exc:
            await self.forget()
            await asyncio.to_thread(self.journal.append, deployment, audit)
            return (f"database out of sync: {exc}; the file registry is up to date and the "
                    "history is kept in the journal until the database is back "
                    "(`codeb reconcile --repair` replays it)")

    async def aclose(self) -> None:
        await self.forget()


async def _close_quietly(store: Store) -> None:
    try:
        await store.close()
    except StoreError:
        pass
