"""The console in bad moments (real Docker, registry, Caddy and SQLite): it never freezes while
one of its operations waits for locks another process holds, and it says when Caddy came back
empty and repairs it."""

from __future__ import annotations

from codeb_tui.domain import events
from codeb_tui.engine.facade import Engine
from codeb_tui.tui.app import CodebApp
from codeb_tui.tui.screens.help import HelpScreen
from codeb_tui.tui.screens.main import MainScreen
import httpx

from codeb_tui.tui.screens.confirm import ConfirmModal
from codeb_tui.tui.screens.reconcile import ReconcileScreen
from conftest import LOCAL, LoopStalls, through_caddy, collect, image, locks_held_elsewhere, terminal
from test_tui_pilot import until


async def test_the_console_answers_while_its_operation_waits_for_locks(make_config, prefix):
    config = make_config(registry__lock_timeout=30)
    project = f"{prefix}-held"
    engine = Engine(config)
    try:
        assert isinstance(terminal(await collect(engine.deploy(LOCAL, project, image("v1")))),
                          events.Finished)
        app = CodebApp(config, engine=engine)
        async with app.run_test(size=(120, 35)) as pilot:
            await until(pilot, lambda: f"{project}/production" in [r.key for r in app.screen.shown],
                        what="the row")
            root = engine.context.registry.root
            with locks_held_elsewhere(root, 10, f"{project}-prod", "proxy") as holder:
                record = app.start_operation("promote", project, "production")
                await until(pilot, lambda: any("waiting up to" in line for line in record.lines),
                            what="the wait to be shown")
                # Keys are answered while the promote waits: the help screen opens and closes.
                await pilot.press("question_mark")
                await until(pilot, lambda: isinstance(app.screen, HelpScreen), timeout=2,
                            what="the help screen")
                await pilot.press("escape")
                await until(pilot, lambda: isinstance(app.screen, MainScreen), timeout=2,
                            what="the main screen")
                main = app.screen
                # The loop's worst stall over the rest of the wait (drawing a new screen is the
                # console's own cost, not the wait's).
                with LoopStalls() as stalls:
                    sort = main.sort
                    await pilot.press("s")
                    await until(pilot, lambda: main.sort != sort, timeout=1, what="the sort key")
                    assert record.running and holder.poll() is None  # still waiting
                    await until(pilot, lambda: holder.poll() is not None, timeout=15,
                                what="the colleague to let go")
            await until(pilot, lambda: not record.running, timeout=30, what="the promote")
            assert record.state == "succeeded", record.lines
            waiting = next(line for line in record.lines if "waiting up to" in line)
            assert "deploy by a colleague" in waiting and "colleague" in waiting and "s ago" in waiting
            assert stalls.worst < 0.1, f"the console's event loop stalled: {stalls.gaps}"
    finally:
        await engine.aclose()


async def test_caddy_restarted_empty_is_shown_and_repaired_from_the_console(make_config, prefix,
                                                                           caddy):
    config = make_config()
    project = f"{prefix}-cold"
    engine = Engine(config)
    try:
        for stream in (engine.deploy(LOCAL, project, image("v1")), engine.promote(LOCAL, project)):
            assert isinstance(terminal(await collect(stream)), events.Finished)
        # What a Caddy restarted without its config answers with: nothing.
        httpx.post(f"{caddy['admin']}/load", json={"admin": {"listen": caddy["admin"].split("//")[1]}},
                   timeout=5, trust_env=False).raise_for_status()
        app = CodebApp(config, engine=engine)
        async with app.run_test(size=(120, 35)) as pilot:
            main = app.screen
            top = main.query_one("#topbar-text")
            await until(pilot, lambda: "caddy has no routes" in str(top.render()), timeout=15,
                        what="the top bar to say Caddy is empty")
            await pilot.press("R")
            await until(pilot, lambda: isinstance(app.screen, ReconcileScreen), what="reconcile")
            screen = app.screen
            await until(pilot, lambda: screen.report is not None, timeout=15, what="the scan")
            assert any(d.kind.value == "proxy_drift" for d in screen.report.drift)
            await pilot.press("f")
            await until(pilot, lambda: isinstance(app.screen, ConfirmModal), what="the confirmation")
            await pilot.press("shift+tab", "enter")
            await until(pilot, lambda: screen.report is not None and screen.report.in_sync,
                        timeout=15, what="the repair")
            assert through_caddy(f"{project}.prod.test").text.startswith("healthy v1 slot=blue")
            await pilot.press("escape")
            await until(pilot, lambda: "caddy has no routes" not in str(top.render()), timeout=15,
                        what="the top bar to clear")
    finally:
        await engine.aclose()
