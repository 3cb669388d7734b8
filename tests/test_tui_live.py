"""The live console at scale, against the real registry, health endpoints and file-system events:
what another process writes reaches the table by inotify (no stat poll), the rows on screen
are checked before the others, and a health change is drawn in place. Figures (how fast, how
much CPU) are in bench/console.py, never asserted here."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

from codeb_tui.domain.model import Environment, ProjectSlots, Slot, SlotName, SlotState
from codeb_tui.domain.status import Health
from codeb_tui.engine.facade import Engine
from codeb_tui.registry.files import FileRegistry
from codeb_tui.tui.app import CodebApp
from codeb_tui.tui.widgets.slot_table import SlotTable
from test_tui_pilot import until

REPO = Path(__file__).resolve().parent.parent
IMAGE = "127.0.0.1:5000/live/app"

WRITE_SLOT_FILE = """
import sys
from codeb_tui.domain.model import Environment
from codeb_tui.registry.files import FileRegistry
registry = FileRegistry(sys.argv[1])
pair = registry.read_slots(sys.argv[2], Environment.PRODUCTION)
registry.write_slots(pair.with_slot(pair.green.with_(image=sys.argv[3])))
"""


def free_pair() -> int:
    """An even port whose odd neighbour is free too (a blue+green pair nobody listens on)."""
    for port in range(28000, 29000, 2):
        socks = []
        try:
            for p in (port, port + 1):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port pair in 28000-28999")


def write_pairs(root: Path, names: list[str], first_port: int) -> list[ProjectSlots]:
    registry = FileRegistry(root)
    pairs = []
    for i, name in enumerate(names):
        port = first_port + 2 * i
        pair = ProjectSlots(
            name, Environment.PRODUCTION,
            Slot(SlotName.BLUE, port, SlotState.ACTIVE, image=f"{IMAGE}:v1",
                 container_name=f"codeb-{name}-prod-blue"),
            Slot(SlotName.GREEN, port + 1, SlotState.DEPLOYED, image=f"{IMAGE}:v2",
                 container_name=f"codeb-{name}-prod-green"))
        registry.write_slots(pair)
        pairs.append(pair)
    return pairs


def drawn(table: SlotTable, key: str) -> str:
    """The text DataTable renders for the row `key` now (what the terminal gets)."""
    y = table.header_height + table.get_row_index(key)
    return table.render_line(y - int(table.scroll_y)).text


class RecordingEngine(Engine):
    """The real engine; each check_slots call's slots are kept, in the order asked."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.checked: list[list[tuple[str, str]]] = []

    async def check_slots(self, principal, slots):
        self.checked.append([(s.project, s.slot.value) for s in slots])
        return await super().check_slots(principal, slots)


async def test_an_outside_write_reaches_the_table_by_file_events(make_config, prefix):
    # a stat fallback every hour: only a file-system event can bring the change in time
    config = make_config(console={"registry_watch_interval": 3600})
    project = f"{prefix}-ext"
    write_pairs(config.registry.root, [project], free_pair())
    engine = Engine(config)
    try:
        app = CodebApp(config, engine=engine)
        async with app.run_test(size=(160, 30)) as pilot:
            main = app.screen
            table = main.query_one(SlotTable)
            key = f"{project}/production"
            await until(pilot, lambda: key in [r.key for r in main.shown], what="the row")
            await until(pilot, lambda: app.registry_watcher is not None, what="the watcher")
            await pilot.pause(0.3)  # the watcher's inotify watch is in place
            assert app.registry_watcher.mode == "events"

            # another process rewrites the slot file (new image tag on green)
            subprocess.run([sys.executable, "-c", WRITE_SLOT_FILE, str(config.registry.root),
                            project, f"{IMAGE}:v9"], check=True, cwd=REPO, timeout=30)
            await until(pilot, lambda: main.shown[0].green.image == f"{IMAGE}:v9",
                        timeout=10, what="the outside write in the table")
            await until(pilot, lambda: " v9 " in drawn(table, key), timeout=5,
                        what="the new tag drawn")
            assert app.registry_watcher.mode == "events"
    finally:
        await engine.aclose()


async def test_rows_on_screen_are_checked_first_and_the_sweep_reaches_all(make_config, prefix):
    config = make_config()
    names = [f"{prefix}-{i:02d}" for i in range(60)]
    write_pairs(config.registry.root, names, 28200)  # answering or not: checked either way
    engine = RecordingEngine(config)
    try:
        app = CodebApp(config, engine=engine)
        async with app.run_test(size=(100, 24)) as pilot:
            main = app.screen
            table = main.query_one(SlotTable)
            await until(pilot, lambda: len(main.shown) == 60, what="every row")
            await until(pilot, lambda: engine.checked, what="the first check")
            on_screen = [key for key in table.visible_keys()]
            assert 0 < len(on_screen) < 30, on_screen  # most rows are below the screen
            first = engine.checked[0]
            expected = [(row.split("/")[0], slot) for row in on_screen for slot in ("blue", "green")]
            # the first call starts with every slot on screen, before any hidden one
            assert first[:len(expected)] == expected
            assert len(first) < 120  # the rest comes in slices, not in one burst

            # the sweep reaches every slot, hidden rows included
            await until(pilot, lambda: all(s.checked_at is not None for s in app.session.status),
                        timeout=20, what="every slot checked")
            assert Health.UNKNOWN not in {s.health for s in app.session.status}

            # at the end of the table: the selected row (now the last) leads the next checks
            table.move_cursor(row=len(names) - 1)  # as the arrow keys would, scrolling along
            await until(pilot, lambda: table.visible_keys() and table.visible_keys() != on_screen,
                        what="the scroll")
            assert f"{names[-1]}/production" in table.visible_keys()
            calls = len(engine.checked)
            await until(pilot, lambda: any(call[:1] == [(names[-1], "blue")]
                                           for call in engine.checked[calls:]),
                        timeout=5, what="a check led by the last row")
    finally:
        await engine.aclose()


async def test_a_health_change_on_screen_is_drawn_in_place(make_config, prefix):
    config = make_config()
    project = f"{prefix}-hc"
    port = free_pair()
    write_pairs(config.registry.root, [project], port)
    engine = Engine(config)
    server = None
    try:
        app = CodebApp(config, engine=engine)
        async with app.run_test(size=(160, 30)) as pilot:
            main = app.screen
            table = main.query_one(SlotTable)
            key = f"{project}/production"
            await until(pilot, lambda: main.shown and main.shown[0].blue.health is Health.UNHEALTHY,
                        what="the first check (refused)")
            await until(pilot, lambda: "✗refused" in drawn(table, key), timeout=5,
                        what="refused drawn")

            async def answer(reader, writer):
                try:
                    while await reader.readuntil(b"\r\n\r\n"):
                        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        await writer.drain()
                except (asyncio.IncompleteReadError, ConnectionError):
                    pass
                writer.close()

            server = await asyncio.start_server(answer, "127.0.0.1", port)
            await until(pilot, lambda: main.shown[0].blue.health is Health.HEALTHY,
                        timeout=10, what="the blue slot healthy")
            await until(pilot, lambda: "✓" in drawn(table, key), timeout=5, what="healthy drawn")
            line = drawn(table, key)
            assert line.count("✗refused") == 1  # green still refused, blue healthy
    finally:
        if server is not None:
            server.close()
        await engine.aclose()
