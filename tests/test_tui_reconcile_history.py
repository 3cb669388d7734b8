"""The console's reconcile, history, new-deploy and container-logs screens, driven by their keys
against the real services (Docker, the image registry, the session's Caddy, SQLite)."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime, timezone

from codeb_tui.domain import events
from codeb_tui.engine.facade import Engine
from codeb_tui.domain.model import Environment
from codeb_tui.tui.app import CodebApp
from codeb_tui.tui.history_query import QueryError, parse_query
from codeb_tui.tui.screens.confirm import ConfirmModal
from codeb_tui.tui.screens.history import HistoryScreen
from codeb_tui.tui.screens.logs import LogsScreen
from codeb_tui.tui.screens.main import MainScreen
from codeb_tui.tui.screens.new_deploy import NewDeployModal
from codeb_tui.tui.screens.reconcile import ReconcileScreen
from codeb_tui.tui.widgets.drift_badge import DriftBadge
from conftest import LOCAL, collect, image, terminal
from test_tui_pilot import until


async def _deploy(engine: Engine, project: str, tag: str = "v1", env: str = "production") -> None:
    assert isinstance(terminal(await collect(engine.deploy(LOCAL, project, image(tag), env))), events.Finished)


def _delete_rows(sqlite_path, project: str) -> int:
    with sqlite3.connect(sqlite_path) as db:
        cur = db.execute("DELETE FROM project_slots WHERE project_id = "
                         "(SELECT id FROM projects WHERE name = ?)", (project,))
        return cur.rowcount


async def test_reconcile_shows_missing_rows_and_repairs_after_confirming(make_config, prefix):
    config = make_config()
    project = f"{prefix}-rec"
    engine = Engine(config)
    try:
        await _deploy(engine, project)
        assert _delete_rows(config.database.sqlite_path, project) == 2  # blue and green rows
        app = CodebApp(config, engine=engine)
        async with app.run_test(size=(140, 40)) as pilot:
            badge = app.screen.query_one(DriftBadge)
            await until(pilot, lambda: badge.count == 2, what="the drift badge")
            assert badge.has_class("-drift") and "drift 2" in str(badge.render())

            await pilot.press("R")
            await until(pilot, lambda: isinstance(app.screen, ReconcileScreen) and app.screen.report
                        is not None, what="the scan")
            screen = app.screen
            mine = [d for d in screen.report.drift if d.project == project]
            assert {(d.kind.value, d.slot, d.fixable, d.fixed) for d in mine} == {
                ("missing_row", "blue", True, False), ("missing_row", "green", True, False)}
            table = screen.query_one("#reconcile-table")
            cells = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
            assert ["missing_row", project, "production", "blue", "fixable"] in [c[:5] for c in cells]

            # repair asks first, saying what will change; cancelling changes nothing
            await pilot.press("f")
            await until(pilot, lambda: isinstance(app.screen, ConfirmModal), what="the confirmation")
            body = str(app.screen.query_one("#dialog-body").render())
            assert "2 row(s) to fix" in body and "2 missing" in body and "prune key P" in body
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is screen, what="back to reconcile")
            store = await engine.context.history.store()
            assert not [r for r in await store.list_slots() if r.project == project]

            await pilot.press("f")
            await until(pilot, lambda: isinstance(app.screen, ConfirmModal), what="the confirmation")
            await pilot.click("#confirm")
            await until(pilot, lambda: screen.report is not None and screen.report.repair and not screen.running,
                        what="the repair")
            mine = [d for d in screen.report.drift if d.project == project]
            assert mine and all(d.fixed for d in mine)
            rows = [r for r in await store.list_slots() if r.project == project]
            assert sorted((r.slot, r.state) for r in rows) == [("blue", "deployed"), ("green", "empty")]

            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, MainScreen) and not badge.count,
                        what="the badge to clear")
            assert not badge.has_class("-drift")
    finally:
        await engine.aclose()


async def test_history_lists_filters_and_shows_logs(make_config, prefix):
    config = make_config()
    project = f"{prefix}-his"
    engine = Engine(config)
    try:
        await _deploy(engine, project)
        assert isinstance(terminal(await collect(engine.promote(LOCAL, project))), events.Finished)
        await _deploy(engine, project, "v2")
        app = CodebApp(config, engine=engine)
        async with app.run_test(size=(140, 40)) as pilot:
            await pilot.press("H")
            await until(pilot, lambda: isinstance(app.screen, HistoryScreen) and app.screen.records,
                        what="the history")
            screen = app.screen
            assert [(r.action, r.project) for r in screen.records] == [
                ("deploy", project), ("promote", project), ("deploy", project)]
            log = "\n".join(screen.query_one("#history-log").lines)
            assert "deploy" in log and image("v2") in log and "health check" in log

            # The search line has the focus when the screen opens: typing searches.
            await pilot.press(*f"project:{project} action:promote", "enter")
            await until(pilot, lambda: [r.action for r in screen.records] == ["promote"], what="the filter")
            log = "\n".join(screen.query_one("#history-log").lines)
            assert f"promote {project} (production) succeeded" in log and "switch proxy" in log

            # a query that does not parse is said on the screen
            await pilot.press("slash", "ctrl+u", *"since:yesterday", "enter")
            await until(pilot, lambda: screen.error is not None, what="the query error")
            assert "not a time" in screen.error and screen.has_class("-error")

            # an operation of this console ending while the screen is open appears in it
            await pilot.press("slash", "ctrl+u", "enter")
            await until(pilot, lambda: len(screen.records) == 3, what="all rows again")
            app.start_operation("promote", project, "production")
            await until(pilot, lambda: len(screen.records) == 4, what="the new operation")
            assert screen.records[0].action == "promote"
    finally:
        await engine.aclose()


async def test_history_with_the_database_down_says_so(make_config):
    config = make_config(database={"dsn": "postgresql://postgres@127.0.0.1:5999/x", "connect_timeout": 1})
    app = CodebApp(config, live=False)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("H")
        await until(pilot, lambda: isinstance(app.screen, HistoryScreen) and app.screen.error, what="the error")
        title = str(app.screen.query_one("#history-title").render())
        assert "database is unreachable" in title
        assert "unreachable" in "\n".join(app.screen.query_one("#history-log").lines)


async def test_new_project_deploy_from_the_console(make_config, prefix):
    config = make_config()
    project = f"{prefix}-new"
    engine = Engine(config)
    try:
        app = CodebApp(config, engine=engine)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("n")
            await until(pilot, lambda: isinstance(app.screen, NewDeployModal), what="the dialog")
            modal = app.screen
            # a name the engine refuses: said in the dialog, which stays open
            await pilot.press(*"Bad_Name", "enter")
            error = str(modal.query_one("#new-deploy-error").render())
            assert "Invalid project name 'Bad_Name'" in error and app.screen is modal
            modal.query_one("#project").value = project
            await pilot.press("enter")  # on to the environment
            await pilot.press("right", "right", "enter")  # preview
            modal.query_one("#image").value = image("v1")
            modal.query_one("#image").focus()
            await pilot.press("enter")
            await until(pilot, lambda: app.operations and not app.operations[-1].running, what="deploy")
            record = app.operations[-1]
            assert (record.operation, record.project, record.environment, record.state) == (
                "deploy", project, "preview", "succeeded"), record.lines
            pair = engine.context.registry.read_slots(project, Environment.PREVIEW)
            assert (pair.blue.state.value, pair.blue.image) == ("deployed", image("v1"))
            await until(pilot, lambda: f"{project}/preview" in [r.key for r in app.screen.shown], what="the row")

            # an image the registry lacks: the engine's failure is shown, nothing crashes
            await pilot.press("n")
            await until(pilot, lambda: isinstance(app.screen, NewDeployModal), what="the dialog")
            app.screen.query_one("#project").value = f"{project}-2"
            app.screen.query_one("#image").value = image("nope-missing")
            app.screen.query_one("#image").focus()
            await pilot.press("enter")
            await until(pilot, lambda: app.operations[-1].project == f"{project}-2"
                        and not app.operations[-1].running, what="the failure")
            assert app.operations[-1].state == "failed" and "Image not found" in app.operations[-1].error
            assert engine.context.registry.read_slots(f"{project}-2", Environment.PRODUCTION) is None
    finally:
        await engine.aclose()


async def test_container_logs_stream_into_the_logs_screen(make_config, prefix, docker_client):
    config = make_config()
    project = f"{prefix}-log"
    engine = Engine(config)
    try:
        await _deploy(engine, project)
        app = CodebApp(config, engine=engine)
        async with app.run_test(size=(120, 30)) as pilot:
            main = app.screen
            await until(pilot, lambda: main.shown, what="the row")
            await pilot.press("l")
            await until(pilot, lambda: isinstance(app.screen, LogsScreen), what="the logs screen")
            log = app.screen.query_one("#container-log")
            # the start line the container printed before the screen opened
            await until(pilot, lambda: any("slot=blue" in line for line in log.lines), timeout=10,
                        what="the container's first line")
            # a line written now arrives while the screen follows the container
            container = docker_client.containers.get(f"codeb-{project}-prod-blue")
            await asyncio.to_thread(container.exec_run,
                                    ["/bin/busybox", "sh", "-c", "echo streamed-now >/proc/1/fd/1"])
            await until(pilot, lambda: any("streamed-now" in line for line in log.lines), timeout=10,
                        what="the streamed line")
    finally:
        await engine.aclose()


def test_history_query_syntax():
    now = datetime(2026, 1, 15, 12, 0, tzinfo=timezone.utc)
    q = parse_query("project:shop action:promote team:ops since:2h until:2026-01-15T11:30 limit:5", now)
    assert (q.project, q.action, q.team, q.limit) == ("shop", "promote", "ops", 5)
    assert q.since == datetime(2026, 1, 15, 10, 0, tzinfo=timezone.utc)
    assert q.until == datetime(2026, 1, 15, 11, 30, tzinfo=timezone.utc)
    assert parse_query("blog", now).project == "blog"
    assert parse_query("since:1w", now).since == datetime(2026, 1, 8, 12, 0, tzinfo=timezone.utc)
    assert parse_query("", now).filters()["limit"] == 200
    for bad, words in (("colour:red", "unknown key"), ("since:soon", "not a time"), ("project:", "missing"),
                       ("since:1h until:2h", "before"), ("limit:0", "limit"), ("a b", "twice")):
        try:
            parse_query(bad, now)
        except QueryError as exc:
            assert words in str(exc), (bad, exc)
        else:
            raise AssertionError(f"{bad!r} parsed")
