"""Long work shown as it happens: an image pull's progress (layers, bytes) and the health wait's
seconds, through the engine, the CLI on a terminal and with --json, and the console.

The `big` demo image (scripts/build_images.sh: 4 layers of 27 MiB of random data) is removed
from the Docker engine's store first, so that every deploy here really pulls it. No other test
uses that tag. The big deploys go to staging: a new project's free ports are read while it pulls,
and production's first pair is the one other test sessions on this machine take most."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import docker
import pytest

from codeb_tui.domain import events
from codeb_tui.engine.facade import Engine
from codeb_tui.tui.app import CodebApp
from codeb_tui.tui.screens.operations import OperationsScreen
from codeb_tui.tui.widgets.operation_progress import OperationProgress
from conftest import LOCAL, REPO, collect, image, terminal
from test_tui_pilot import until

BIG = image("big")
MIN_BYTES = 100_000_000


@pytest.fixture
def big_absent(docker_client, prefix):
    """Make the next deploy of `big` pull every layer: no container may hold them (this test's
    own are removed)."""

    def remove() -> None:
        for container in docker_client.containers.list(all=True, filters={"ancestor": BIG}):
            if container.labels.get("codeb.project", "").startswith(prefix):
                container.remove(force=True)
        users = docker_client.containers.list(all=True, filters={"ancestor": BIG})
        assert not users, (f"containers still use {BIG}: {[c.name for c in users]}; these tests "
                           "pull it cold: deploy another image into those slots (the demo's "
                           "picker offers `big` too)")
        try:
            docker_client.images.remove(BIG, force=True)
        except docker.errors.ImageNotFound:
            pass
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(BIG)

    return remove


def assert_full_pull(progress: list[events.PullProgress]) -> None:
    """Bytes only grow, up to the whole image (>= 100 MB), every layer done at the end."""
    assert len(progress) >= 2, progress
    downloaded = [p.downloaded for p in progress]
    assert downloaded == sorted(downloaded), downloaded
    assert all(0.0 <= p.fraction <= 1.0 for p in progress)
    assert progress[0].fraction < 1.0 and progress[0].layers_done < progress[0].layers
    last = progress[-1]
    assert last.total >= MIN_BYTES and last.downloaded == last.total == last.extracted, last
    assert last.layers >= 4 and last.layers_done == last.layers and last.fraction == 1.0, last
    assert last.image == BIG and last.step == "pull image"
    assert "layers" in last.line() and "MB" in last.line()


async def test_engine_streams_pull_progress_then_nothing_when_present(engine, prefix, big_absent):
    big_absent()
    project = f"{prefix}-big"
    evs = await collect(engine.deploy(LOCAL, project, BIG, "staging"))
    assert isinstance(terminal(evs), events.Finished), evs[-1]
    progress = [e for e in evs if isinstance(e, events.PullProgress)]
    assert_full_pull(progress)
    # Inside the pull step, before the "pulled" line; each is also plain JSON.
    kinds = [(type(e).__name__, getattr(e, "step", None)) for e in evs]
    first, last = evs.index(progress[0]), evs.index(progress[-1])
    assert kinds[first - 1] == ("StepStarted", "pull image")
    assert isinstance(evs[last + 1], events.Log) and evs[last + 1].message == f"pulled {BIG}"
    assert json.loads(json.dumps(progress[-1].to_json(), default=str))["event"] == "pull_progress"

    # Present now: the pull asks the registry and reports no progress at all.
    evs = await collect(engine.deploy(LOCAL, project, BIG, "staging"))
    assert isinstance(terminal(evs), events.Finished), evs[-1]
    assert "pull image" in [e.step for e in evs if isinstance(e, events.StepStarted)]
    assert not [e for e in evs if isinstance(e, events.PullProgress)]


async def test_health_wait_reports_seconds_out_of_the_timeout(engine, prefix):
    # `slow` answers only after 8 s: the gate waits, and says how long out of how long.
    evs = await collect(engine.deploy(LOCAL, f"{prefix}-slow", image("slow")))
    assert isinstance(terminal(evs), events.Finished), evs[-1]
    waits = [e for e in evs if isinstance(e, events.HealthWait)]
    assert len(waits) >= 2, waits
    elapsed = [w.elapsed_s for w in waits]
    assert elapsed == sorted(elapsed) and elapsed[-1] >= 5.0, elapsed
    timeout = engine.context.config.health.timeout
    assert all(w.timeout_s == timeout and w.step == "health check" for w in waits)
    assert all(abs(w.fraction - w.elapsed_s / timeout) < 1e-9 for w in waits)
    assert re.fullmatch(rf"   health check: \d+\.\d s of {timeout:g} s \(.+\)", waits[-1].line())
    # Transient: the operation's recorded log keeps the step lines, not each second.
    history = await engine.history(LOCAL, project=f"{prefix}-slow")
    assert history and "health check" in history[0].log and " s of " not in history[0].log


def run_on_terminal(*args: str, columns: int = 120) -> tuple[int, str]:
    """`codeb ARGS` with a pseudo-terminal as stdin, stdout and stderr: what a person sees."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([sys.executable, "-m", "codeb_tui.cli", *args], stdin=slave,
                            stdout=slave, stderr=slave, cwd=REPO, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    return proc.wait(timeout=120), b"".join(chunks).decode(errors="replace")


PULL_LINE = re.compile(r"\r\[([#-]{20})\] pull image: (\d+)/(\d+) layers, ([\d.]+)/([\d.]+) MB")


def test_cli_draws_a_progress_line_on_a_terminal_and_json_lines_with_json(
        config_file, prefix, big_absent):
    config = str(config_file())
    big_absent()
    code, out = run_on_terminal("deploy", f"{prefix}-a", "--image", BIG, "--env", "staging",
                                "--config", config)
    assert code == 0, out
    drawn = PULL_LINE.findall(out)
    assert len(drawn) >= 2, out
    assert float(drawn[-1][4]) >= MIN_BYTES / 1e6 and drawn[-1][0] == "#" * 20, drawn[-1]
    assert all(len(line) <= 119 for line in re.findall(r"\r(\[[#-]{20}\][^\r\n\x1b]*)", out))
    # Each drawing is erased before the next line: what stays on the screen is the plain log.
    assert "\r\x1b[K   pulled " + BIG in out
    assert "done: " in out

    big_absent()
    code, out = run_on_terminal("deploy", f"{prefix}-b", "--image", BIG, "--env", "staging",
                                "--json", "--config", config)
    assert code == 0, out
    lines = out.replace("\r\n", "\n").strip().split("\n")
    records = [json.loads(line) for line in lines]  # every line, even on a terminal
    assert records[0]["event"] == "started" and records[-1]["event"] == "finished"
    assert_full_pull([events.PullProgress(**{k: v for k, v in r.items() if k not in ("event", "ts")})
                      for r in records if r["event"] == "pull_progress"])


async def test_console_shows_the_pull_as_a_bar_in_the_operation_line(make_config, prefix, big_absent):
    big_absent()
    config = make_config()
    project = f"{prefix}-tui"
    engine = Engine(config)
    try:
        app = CodebApp(config, engine=engine)
        async with app.run_test(size=(120, 40)) as pilot:
            main = app.screen
            widget = main.query_one(OperationProgress)
            assert not widget.display
            seen: list[tuple[float, str, str]] = []

            def watch() -> bool:
                if widget.display:
                    seen.append((widget.query_one("#progress-bar").progress,
                                 str(widget.query_one("#progress-what").render()),
                                 str(widget.query_one("#progress-figures").render())))
                return bool(app.operations) and not app.operations[-1].running

            app.start_operation("deploy", project, "staging", image=BIG)
            await until(pilot, watch, timeout=120, what="the deploy of the big image")
            assert app.operations[-1].state == "succeeded", app.operations[-1].lines
            pulls = [s for s in seen if s[1] == f"[{project}/staging] pull image"]
            assert pulls, seen
            assert any(0 < bar for bar, _, _ in pulls), pulls
            assert re.search(r"\d+/\d+ layers, [\d.]+/[\d.]+ MB", pulls[-1][2]), pulls
            # Gone when its step ended; never written into the operations log.
            assert not widget.display
            log_text = "\n".join(main.query_one("#oplog").lines)
            assert f"pulled {BIG}" in log_text and "layers," not in log_text

            # The health wait of `slow` (8 s), on the operations screen this time.
            app.start_operation("deploy", f"{project}2", "production", image=image("slow"))
            await pilot.press("o")
            await until(pilot, lambda: isinstance(app.screen, OperationsScreen), what="the screen")
            bar = app.screen.query_one(OperationProgress)
            figures = bar.query_one("#progress-figures")
            await until(pilot, lambda: bar.display and re.fullmatch(
                r"[1-9]\d*\.\d s of 15 s \(.+\)", str(figures.render())), timeout=30,
                what="the health wait's seconds")
            assert str(bar.query_one("#progress-what").render()) == \
                f"[{project}2/production] health check"
            assert bar.query_one("#progress-bar").progress > 0
            await until(pilot, lambda: not app.operations[-1].running, timeout=60, what="the deploy")
            assert app.operations[-1].state == "succeeded" and not bar.display
    finally:
        await engine.aclose()


async def test_hosts_pulling_at_once_share_the_line_until_the_step_ends():
    """A project on two hosts pulls on both at once: the line names the step and the hosts,
    the bar is the slowest host's, and the step's end (unlabelled, "pull image") clears both."""
    from textual.app import App

    from codeb_tui.cli.render import progress_text
    from codeb_tui.tui.operations import OperationRecord

    common = dict(operation="deploy", project="shop", environment="production", operation_id="x")

    def pull(host: str, done: int) -> events.PullProgress:
        return events.PullProgress(**common, step=f"{host}: pull image", image=BIG, layers=6,
                                   layers_done=done, downloaded=done * 10, extracted=0,
                                   total=60, fraction=done / 6)

    class Line(App):
        def compose(self):
            yield OperationProgress()

    record = OperationRecord("deploy", "shop", "production")
    async with Line().run_test() as pilot:
        widget = pilot.app.query_one(OperationProgress)
        record.add(events.StepStarted(**common, step="pull image"))
        for event in (pull("web2", 1), pull("web1", 3), pull("web2", 2)):
            record.add(event)
        widget.show(record)
        assert widget.display
        assert str(widget.query_one("#progress-what").render()) == \
            "[shop/production] pull image on 2 hosts"
        assert str(widget.query_one("#progress-figures").render()) == "web1 50%, web2 33%"
        assert widget.query_one("#progress-bar").progress == 33  # the slowest host's

        record.add(events.StepFinished(**common, step="pull image", ok=True, duration_ms=1.0))
        assert record.progress is None
        widget.show(record)
        assert not widget.display

    # The CLI's line on a terminal draws the same summary; a step of another name ends nothing.
    board = events.ProgressBoard()
    for event in (pull("web1", 6), pull("web2", 3)):
        board.update(event)
    assert progress_text(board.summary(), 80) == \
        "[##########----------] pull image on 2 hosts: web1 100%, web2 50%"
    assert not board.update(events.StepFinished(**common, step="web1: health check", ok=True,
                                                duration_ms=1.0))
    assert board.update(events.StepFinished(**common, step="pull image", ok=True, duration_ms=1.0))
    assert board.summary() is None
