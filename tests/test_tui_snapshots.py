"""Snapshots of each screen on a fixed registry: slot files written directly, live polling off,
a fixed clock, so there are no latencies or ages in the pictures."""

from __future__ import annotations

import socket
from datetime import datetime, timedelta, timezone

import pytest

from codeb_tui.core.model import Environment, HealthRecord, ProjectSlots, Slot, SlotName, SlotState
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
