"""The console driven by its keys against the real services: deploy, promote and rollback, then
the registry and what Caddy routes are checked. Also: outside changes, locks, config checks."""

from __future__ import annotations

import asyncio
import time

import pytest

from codeb_tui.engine.facade import Engine
from codeb_tui.domain.access import Principal
from codeb_tui.domain.errors import ConfigError
from codeb_tui.domain.model import Environment
from codeb_tui.tui.app import CodebApp
from codeb_tui.tui.commands import OperationCommands
from codeb_tui.tui.screens.confirm import ConfirmModal
from codeb_tui.tui.screens.deploy import DeployModal
from codeb_tui.tui.screens.main import MainScreen
from codeb_tui.tui.widgets.slot_table import SlotTable
from conftest import LOCAL, collect, image, terminal, through_caddy
from test_tui_snapshots import ENVIRONMENTS, fixed_registry

from codeb_tui.domain import events


async def until(pilot, predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


async def served(pilot, host: str, text: str, timeout: float = 3.0) -> str:
    """What Caddy answers for `host`, waited for until it contains `text`. Right after an
    operation ends, a request sometimes got "no site for this host" for a few ms while the
    console polled (reported to the engine owner); the wait keeps the test about the result."""
    deadline = time.monotonic() + timeout
    while True:
        body = await asyncio.to_thread(lambda: through_caddy(host).text)
        if text in body or time.monotonic() > deadline:
            return body
        await pilot.pause(0.05)


async def test_deploy_promote_rollback_by_keys(make_config, prefix):
    config = make_config()
    project = f"{prefix}-tui"
    engine = Engine(config)
    try:
        assert isinstance(terminal(await collect(engine.deploy(LOCAL, project, image("v1")))), events.Finished)
        assert isinstance(terminal(await collect(engine.promote(LOCAL, project))), events.Finished)
        app = CodebApp(config, engine=engine)
        async with app.run_test(size=(120, 40)) as pilot:
            main = app.screen
            assert isinstance(main, MainScreen)
            await until(pilot, lambda: f"{project}/production" in [r.key for r in main.shown], what="the row")

            # deploy v2 through the image picker (free entry)
            await pilot.press("d")
            await until(pilot, lambda: isinstance(app.screen, DeployModal), what="the image picker")
            app.screen.query_one("#image").value = image("v2")
            await pilot.press("enter")
            await until(pilot, lambda: app.operations and not app.operations[-1].running, what="deploy")
            record = app.operations[-1]
            assert record.state == "succeeded", record.lines
            assert any("health check" in line for line in record.lines)
            pair = engine.context.registry.read_slots(project, Environment.PRODUCTION)
            assert (pair.green.state.value, pair.green.image) == ("deployed", image("v2"))
            assert "v1" in await served(pilot, f"{project}.prod.test", "v1")

            # promote: a production confirmation wants the project name typed
            await pilot.press("p")
            await until(pilot, lambda: isinstance(app.screen, ConfirmModal), what="the confirmation")
            body = str(app.screen.query_one("#dialog-body").render())
            assert "green" in body and image("v2") in body and "-> grace" in body
            await pilot.press("enter")  # nothing typed: refused, still open
            assert isinstance(app.screen, ConfirmModal)
            await pilot.press(*project, "enter")
            await until(pilot, lambda: not app.operations[-1].running and app.operations[-1].operation == "promote",
                        what="promote")
            assert app.operations[-1].state == "succeeded", app.operations[-1].lines
            pair = engine.context.registry.read_slots(project, Environment.PRODUCTION)
            assert (pair.green.state.value, pair.blue.state.value) == ("active", "grace")
            assert "v2" in await served(pilot, f"{project}.prod.test", "v2")

            # rollback
            await pilot.press("r")
            await until(pilot, lambda: isinstance(app.screen, ConfirmModal), what="the confirmation")
            await pilot.press(*project, "enter")
            await until(pilot, lambda: not app.operations[-1].running and app.operations[-1].operation == "rollback",
                        what="rollback")
            assert app.operations[-1].state == "succeeded", app.operations[-1].lines
            pair = engine.context.registry.read_slots(project, Environment.PRODUCTION)
            assert (pair.blue.state.value, pair.green.state.value) == ("active", "grace")
            assert "v1" in await served(pilot, f"{project}.prod.test", "v1")

            # each operation kept its log, in the operations screen too
            assert [r.operation for r in app.operations] == ["deploy", "promote", "rollback"]
            await pilot.press("o")
            await pilot.pause()
            assert app.screen.query_one("#ops-list").option_count == 3
    finally:
        await engine.aclose()


async def test_outside_changes_locks_and_failures_are_shown(make_config, prefix):
    config = make_config()
    project = f"{prefix}-out"
    engine = Engine(config)
    try:
        app = CodebApp(config, engine=engine)
        async with app.run_test(size=(100, 30)) as pilot:
            main = app.screen
            # another process (here: the engine, outside the console) deploys: shown within 2 s
            assert isinstance(terminal(await collect(engine.deploy(LOCAL, project, image("v1")))), events.Finished)
            seen = time.monotonic()
            # the row may already show the port allocation written midway: wait for the end
            await until(pilot, lambda: [(r.key, r.blue.state) for r in main.shown] == [
                (f"{project}/production", "deployed")], timeout=2.0, what="the outside deploy")
            assert time.monotonic() - seen < 2.0

            # a lock held by someone else: the failure names the holder
            async with engine.context.registry.project_lock(project, Environment.PRODUCTION,
                                                            "deploy (by a colleague)"):
                app.start_operation("deploy", project, "production", image=image("v2"))
                await until(pilot, lambda: not app.operations[-1].running, what="the refusal")
            record = app.operations[-1]
            assert record.state == "refused"
            assert "locked" in record.error and "deploy (by a colleague)" in record.error and "pid" in record.error

            # a failing image: shown, never swallowed; the registry is untouched
            app.start_operation("deploy", project, "production", image=image("nope-missing"))
            await until(pilot, lambda: not app.operations[-1].running, what="the failure")
            assert app.operations[-1].state == "failed"
            assert "Image not found" in app.operations[-1].error
            log_text = "\n".join(main.query_one("#oplog").lines)
            assert "Image not found" in log_text
            pair = engine.context.registry.read_slots(project, Environment.PRODUCTION)
            assert pair.blue.image == image("v1")
    finally:
        await engine.aclose()


def test_console_config_is_checked(make_config):
    with pytest.raises(ConfigError, match="console.keymap.nope"):
        CodebApp(make_config(console={"keymap": {"nope": "x"}}), live=False)
    with pytest.raises(ConfigError, match="console.theme"):
        CodebApp(make_config(console={"theme": "no-such-theme"}), live=False)


async def test_keymap_remaps_a_binding(make_config):
    app = CodebApp(make_config(console={"keymap": {"ports": "f5"}}), live=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("t")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)
        await pilot.press("f5")
        await pilot.pause()
        assert type(app.screen).__name__ == "PortsScreen"


async def test_actions_follow_the_principals_role(make_config):
    """Keys a role may not use are not offered (footer, palette) and say why when pressed."""
    config = make_config(environments=ENVIRONMENTS)
    fixed_registry(config.registry.root)

    async def offered(principal) -> tuple[dict[str, set[str]], str, list[str], list[str]]:
        app = CodebApp(config, principal=principal, live=False)
        said: list[str] = []
        app.notify = lambda message, **kw: said.append(message)  # type: ignore[method-assign]
        async with app.run_test(size=(120, 30)) as pilot:
            main = app.screen
            await until(pilot, lambda: main.shown, what="the rows")
            keys = {}
            for row in ("api/staging", "blog/production"):
                main.query_one(SlotTable).move_cursor(row=[r.key for r in main.shown].index(row))
                await pilot.pause()
                keys[row] = {a.binding.action for a in main.active_bindings.values()}
            await pilot.press("p")  # on blog/production
            await pilot.pause()
            opened = type(app.screen).__name__
            await pilot.press("escape")
            commands = [text for text, _, _ in OperationCommands(main, None)._commands()]
        return keys, opened, said, commands

    keys, opened, said, commands = await offered(Principal.operator("vera", "web", "viewer"))
    for row in keys.values():
        assert {"deploy", "deploy_new", "promote", "rollback", "cleanup", "reconcile"}.isdisjoint(row)
        assert {"logs", "filter", "ports", "history"} <= row
    assert opened == "MainScreen"
    assert said == ["Access Denied: ssh:vera (role viewer, team web) may not promote in production"]
    assert not [c for c in commands if c.startswith(("/we:promote", "/we:deploy", "/we:reconcile"))]
    assert "/we:logs blog (production)" in commands and "/we:history (audit trail)" in commands

    # a member cleans up outside production only
    keys, opened, said, commands = await offered(Principal.operator("mo", "web", "member"))
    assert "cleanup" in keys["api/staging"] and "cleanup" not in keys["blog/production"]
    assert {"deploy", "promote", "reconcile"} <= keys["blog/production"]
    assert opened == "ConfirmModal" and not said
    assert "/we:cleanup api (staging)" in commands and "/we:cleanup blog (production)" not in commands
