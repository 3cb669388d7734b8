"""Snapshots of each screen on a fixed registry: slot files written directly, live polling off,
a fixed clock, so there are no latencies or ages in the pictures."""

from __future__ import annotations

import socket
from datetime import datetime, timedelta, timezone

import pytest

from codeb_tui.domain.model import Environment, HealthRecord, ProjectSlots, Slot, SlotName, SlotState
from codeb_tui.registry.files import FileRegistry, Ssot
from codeb_tui.tui.app import CodebApp
from codeb_tui.tui.operations import OperationRecord

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=timezone.utc)
IMG = "127.0.0.1:5000/demo/app"
# Port ranges no other test or service uses, so the ports report only holds what we put there.
ENVIRONMENTS = {
    "production": {"ports": [31000, 31099], "domain": "{project}.example.test",
                   "preview_domain": "{slot}.{project}.preview.example.test"},
    "staging": {"ports": [31100, 31199], "domain": "{project}.staging.example.test",
                "preview_domain": "{slot}.{project}.staging-preview.example.test"},
    "preview": {"ports": [31200, 31299], "domain": "{project}.pr.example.test",
                "preview_domain": "{slot}.{project}.pr-preview.example.test"},
}


def _slot(name, port, state="empty", tag=None, **kw):
    if state == "empty":
        return Slot(SlotName(name), port)
    return Slot(SlotName(name), port, SlotState(state), image=f"{IMG}:{tag}",
                container_name=f"codeb-x-{name}", deployed_at=NOW - timedelta(hours=3),
                last_health=HealthRecord(True, "HTTP 200", NOW), **kw)


def fixed_registry(root) -> None:
    registry = FileRegistry(root)
    pairs = [
        ProjectSlots("shop", Environment.PRODUCTION, _slot("blue", 31000, "grace", "v1",
                     grace_expires_at=NOW + timedelta(hours=47, minutes=30)),
                     _slot("green", 31001, "active", "v2")),
        ProjectSlots("blog", Environment.PRODUCTION, _slot("blue", 31002, "active", "v1"),
                     _slot("green", 31003, "deployed", "v2")),
        ProjectSlots("api", Environment.STAGING, _slot("blue", 31100, "active", "v1"), _slot("green", 31101)),
        ProjectSlots("api", Environment.PREVIEW, _slot("blue", 31200, "deployed", "v3"), _slot("green", 31201)),
        ProjectSlots("wiki", Environment.PRODUCTION, _slot("blue", 31004), _slot("green", 31005)),
    ]
    ssot = Ssot()
    for pair in pairs:
        registry.write_slots(pair)
        for port in pair.ports:
            ssot.allocated[port] = pair.project
    registry.write_ssot(ssot)


@pytest.fixture
def snapshot_app(make_config, tmp_path):
    def make(**overrides) -> CodebApp:
        # A fixed listen address: the URLs on screen must not follow the session Caddy's port.
        config = make_config(environments=ENVIRONMENTS, caddy__listen="127.0.0.1:18080", **overrides)
        fixed_registry(config.registry.root)
        return CodebApp(config, live=False, clock=lambda: NOW)

    return make


def test_main_80x24(snap_compare, snapshot_app):
    assert snap_compare(snapshot_app(), terminal_size=(80, 24))


def test_main_200x50(snap_compare, snapshot_app):
    assert snap_compare(snapshot_app(), terminal_size=(200, 50))


def test_main_filtered_and_sorted(snap_compare, snapshot_app):
    assert snap_compare(snapshot_app(), terminal_size=(100, 30), press=["slash", "a", "p", "enter", "s", "e"])


def test_main_light_theme(snap_compare, snapshot_app):
    assert snap_compare(snapshot_app(console={"theme": "codeb-light"}), terminal_size=(100, 30))


def test_main_high_contrast_theme(snap_compare, snapshot_app):
    assert snap_compare(snapshot_app(console={"theme": "codeb-high-contrast"}), terminal_size=(100, 30))


def test_promote_confirmation(snap_compare, snapshot_app):
    # rows: api/staging, api/preview, blog/production (sorted by project then env)
    assert snap_compare(snapshot_app(), terminal_size=(100, 30), press=["down", "down", "p"])


def test_rollback_confirmation(snap_compare, snapshot_app):
    assert snap_compare(snapshot_app(), terminal_size=(100, 30), press=["down", "down", "down", "r"])


def test_deploy_picker(snap_compare, snapshot_app):
    # no registry_url: the picker says so and takes free entry (no network in a snapshot)
    assert snap_compare(snapshot_app(), terminal_size=(100, 30), press=["down", "down", "d", "wait:200"])


def test_help_screen(snap_compare, snapshot_app):
    assert snap_compare(snapshot_app(), terminal_size=(120, 40), press=["question_mark"])


def test_operations_screen(snap_compare, snapshot_app):
    app = snapshot_app()
    record = OperationRecord("deploy", "blog", "production", f"{IMG}:v2", id=7, state="failed",
                             error="Image not found", lines=[
                                 "12:00:00 deploy blog (production) 127.0.0.1:5000/demo/app:v2",
                                 "12:00:00 -> pull image",
                                 "12:00:01 <- pull image FAILED (30 ms)",
                                 "12:00:01 failed: Image not found: 127.0.0.1:5000/demo/app:v2. "
                                 "Was it built and pushed? A git push triggers the build."])
    app.operations.append(record)
    assert snap_compare(app, terminal_size=(120, 30), press=["o"])


def test_ports_screen(snap_compare, snapshot_app):
    # a program of nobody's listens inside the production range: a conflict, explained
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 31010))
        listener.listen()
        assert snap_compare(snapshot_app(), terminal_size=(120, 40), press=["t", "wait:1500"])


# --- reconcile and history: the database is fixed too ------------------------------------------


def _database(config, tamper: bool = True, audit: bool = False) -> None:
    """The SQLite database in step with fixed_registry, then (tamper) made to drift: blog's rows
    missing, shop's blue image differing, a stale row for a project no file holds."""
    import asyncio
    from dataclasses import replace

    from codeb_tui.engine.audit import slot_rows
    from codeb_tui.store import AuditRecord, SlotRow, open_store

    async def write() -> None:
        store = open_store(None, config.database.sqlite_path, 3.0)
        await store.connect()
        await store.migrate()
        rows = [row for pair in FileRegistry(config.registry.root).read_all() for row in slot_rows(pair)]
        if tamper:
            rows = [r for r in rows if r.project != "blog"]
            rows = [replace(r, image=f"{IMG}:v0") if (r.project, r.slot) == ("shop", "blue") else r
                    for r in rows]
            rows.append(SlotRow("gone", "staging", "blue", "active", 31102, f"{IMG}:v1"))
        await store.upsert_project_slots(rows)
        if audit:
            steps = {"deploy": ["-> pull image", "<- pull image ok (40 ms)", "-> start container",
                                "<- start container ok (210 ms)", "-> health check",
                                "   healthy: GET /health -> HTTP 200 in 3 ms", "<- health check ok (120 ms)"],
                     "promote": ["-> final health check", "<- final health check ok (5 ms)",
                                 "-> switch proxy", "<- switch proxy ok (20 ms)"],
                     "rollback": ["-> grace slot health check", "<- grace slot health check FAILED (4 ms)"]}
            history = [
                ("deploy", "shop", "production", "empty", "deployed", "succeeded", None, 5, 380.0),
                ("promote", "shop", "production", "deployed", "active", "succeeded", "ops", 4, 95.0),
                ("deploy", "blog", "production", "empty", "deployed", "succeeded", "web", 3, 1450.0),
                ("rollback", "blog", "production", "grace", None, "refused", "web", 2, 12.0),
                ("promote", "blog", "production", "deployed", "active", "succeeded", "ops", 1, 101.0),
            ]
            for n, (action, project, env, before, after, result, team, hours, ms) in enumerate(history):
                at = NOW - timedelta(hours=hours, minutes=7 * n)
                lines = [f"{at:%H:%M:%S} {action} {project} ({env})"]
                lines += [f"{at:%H:%M:%S} {line}" for line in steps[action]]
                lines.append(f"{at:%H:%M:%S} {'done' if result == 'succeeded' else result}")
                await store.record_audit(AuditRecord(
                    operation_id=f"{n:032x}", actor="alice" if team else "root", action=action,
                    project=project, environment=env, from_state=before, to_state=after, result=result,
                    duration_ms=ms, created_at=at, team=team,
                    detail={"slot": "blue", "image": f"{IMG}:v{n}"}, log="\n".join(lines)))
        await store.close()

    asyncio.run(write())


@pytest.fixture
def db_snapshot_app(snapshot_app):
    def make(**kw) -> CodebApp:
        app = snapshot_app()
        _database(app.config, **kw)
        return app

    return make


def test_reconcile_screen(snap_compare, db_snapshot_app):
    # live off: the files against the database only (no containers, proxy or ports in a picture)
    assert snap_compare(db_snapshot_app(), terminal_size=(120, 30), press=["R", "wait:800"])


def test_reconcile_repair_confirmation(snap_compare, db_snapshot_app):
    assert snap_compare(db_snapshot_app(), terminal_size=(120, 30), press=["R", "wait:800", "f"])


def test_history_screen(snap_compare, db_snapshot_app):
    app = db_snapshot_app(tamper=False, audit=True)
    assert snap_compare(app, terminal_size=(120, 35), press=["H", "wait:800", "down"])


def test_history_screen_filtered(snap_compare, db_snapshot_app):
    app = db_snapshot_app(tamper=False, audit=True)
    keys = ["H", "wait:500", *"action:promote since:270m", "enter", "wait:500"]
    assert snap_compare(app, terminal_size=(120, 35), press=keys)
