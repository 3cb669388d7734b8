"""Console bench: 200 projects x 3 environments (1,200 slots, every one answering /health on
loopback with keep-alive, as most frameworks do; with --close each answer closes its connection,
as busybox httpd does), and a registry of 5,000 slot files with no
container at all. Prints figures; asserts nothing.

    source /var/lib/codeb-services/env
    .venv/bin/python bench/console.py [--duration 30] [--projects 200] [--idle-files 5000]

What it prints, with the issue's targets:
- first complete frame in process (App built to the frame with every row drawn)   < 0.8 s
- first complete frame of `codeb` started as a process in a pseudo-terminal
  (fork to the frame showing "600/600 rows", the first row, the log pane, the footer) < 1 s
- check age of each slot (seconds since its last health check) sampled every 0.25 s:
  max and p95 for the rows on screen (< 1 s) and for all (< 5 s)
- CPU of live polling in % of one core (the whole console process)                  < 10 %
- worst event-loop stall (a 20 ms sleep that woke late), p99 too                    < 50 ms
- peak RSS of the console: this process (in process run) and the `codeb` process    < 100 MB
- idle CPU with 5,000 slot files (all empty: no health checks)                      < 1 %

The health endpoints run in a child process (its CPU is not counted). Docker is only listed;
set DOCKER_HOST to a running engine, as scripts/test.sh does.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import pty
import re
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from codeb_tui.domain.config import parse_config  # noqa: E402
from codeb_tui.domain.model import Environment, ProjectSlots, Slot, SlotName, SlotState, utcnow  # noqa: E402
from codeb_tui.domain.status import Health  # noqa: E402
from codeb_tui.engine.facade import Engine  # noqa: E402
from codeb_tui.registry.files import Ssot, slot_file_json  # noqa: E402

RANGE_BASES = (24000, 20000, 16000, 12000)
"""Where the three environments' port ranges (1,000 ports each) may start: below the ephemeral
range (32768+), where client sockets could already hold a port; the first whose ports are all
free is used (another bench may be running)."""
IDLE_RANGES = {"production": (10000, 14999), "staging": (15000, 19999), "preview": (20000, 24999)}
SIZE = (200, 50)
WARM_UP = 6.0
"""Seconds of live polling before measuring: every slot has been checked once."""

SERVER = r"""
import asyncio, sys
CLOSE = sys.argv[1] == "close"
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
            + (b"Connection: close\r\n" if CLOSE else b"") + b"\r\nok")
async def handle(reader, writer):
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(RESPONSE)
            await writer.drain()
            if CLOSE:
                break
    except Exception:
        pass
    writer.close()
async def main():
    ports = [int(p) for p in sys.argv[2:]]
    servers = [await asyncio.start_server(handle, "127.0.0.1", p, backlog=64) for p in ports]
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def free_ranges(projects: int) -> dict:
    for base in RANGE_BASES:
        ranges = {env.value: (base + 1000 * i, base + 1000 * i + 999)
                  for i, env in enumerate(Environment)}
        if all(_free(low + n) for low, _ in ranges.values() for n in range(2 * projects)):
            return ranges
    raise SystemExit("no free port ranges for the bench's health endpoints")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def write_registry(root: Path, projects: int, ranges: dict, live: bool) -> list[int]:
    """Slot files written plainly (no fsync: 5,000 fsyncs would take the bench's time).
    live: an active and a deployed or grace slot per pair; else both slots empty."""
    (root / "slots").mkdir(parents=True)
    ssot = Ssot()
    ports = []
    now = utcnow()
    img = "127.0.0.1:5000/bench/app"
    for env in Environment:
        low = ranges[env.value][0]
        for i in range(projects):
            name = f"p{i:04d}" if projects > 1000 else f"p{i:03d}"
            blue, green = low + 2 * i, low + 2 * i + 1
            if live:
                pair = ProjectSlots(
                    name, env,
                    Slot(SlotName.BLUE, blue, SlotState.ACTIVE, image=f"{img}:v1",
                         container_name=f"codeb-{name}-{env.suffix}-blue", deployed_at=now),
                    Slot(SlotName.GREEN, green, SlotState.GRACE if i % 3 else SlotState.DEPLOYED,
                         image=f"{img}:v2", container_name=f"codeb-{name}-{env.suffix}-green",
                         deployed_at=now,
                         grace_expires_at=now + timedelta(hours=40) if i % 3 else None),
                    version=1,
                )
            else:
                pair = ProjectSlots(name, env, Slot(SlotName.BLUE, blue), Slot(SlotName.GREEN, green),
                                    version=1)
            path = root / "slots" / f"{name}-{env.suffix}.json"
            path.write_text(json.dumps(slot_file_json(pair)))
            ssot.allocated[blue] = ssot.allocated[green] = name
            ports += [blue, green]
    (root / "ssot.json").write_text(json.dumps(ssot.to_json()))
    return ports


def config_dict(tmp: Path, ranges: dict, poll_interval: float) -> dict:
    return {
        "registry": {"root": str(tmp / "registry")},
        "environments": {k: {"ports": list(v)} for k, v in ranges.items()},
        "docker": {"endpoint": os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")},
        "caddy": {"admin": os.environ.get("CODEB_CADDY_ADMIN", "http://127.0.0.1:2019"),
                  "config_dir": str(tmp / "caddy")},
        "database": {"sqlite_path": str(tmp / "codeb.sqlite3")},
        "console": {"poll_interval": poll_interval},
    }


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


class StallProbe:
    """How late a 20 ms sleep wakes: the event loop's worst stall (what a key press waits)."""

    def __init__(self) -> None:
        self.stalls: list[float] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.02)
            self.stalls.append(time.perf_counter() - t - 0.02)

    def stop(self) -> tuple[float, float]:
        self._task.cancel()
        return max(self.stalls or [0]), quantile(self.stalls, 0.99)


async def first_frame(app, pilot, expected: int, started: float) -> float:
    main = app.screen
    while len(main.shown) < expected:
        await pilot.pause(0.005)
    await pilot.pause()  # one refresh: the frame with every row is drawn
    return time.perf_counter() - started


def child_cpu(pid: int) -> float:
    """CPU seconds (user and system) a running process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def live_bench(tmp: Path, args) -> dict:
    from codeb_tui.tui.app import CodebApp  # Textual only now: the registry is written without it

    config = parse_config(config_dict(tmp, args.ranges, args.poll_interval))
    started, cpu_started = time.perf_counter(), cpu_seconds()
    engine = Engine(config)
    app = CodebApp(config, engine=engine)
    figures: dict = {}
    try:
        async with app.run_test(size=SIZE) as pilot:
            main = app.screen
            figures["first_frame"] = await first_frame(app, pilot, args.projects * 3, started)
            figures["first_frame_cpu"] = cpu_seconds() - cpu_started
            session = app.session
            while session.checked_at is None:
                await pilot.pause(0.01)
            figures["first_check"] = time.perf_counter() - started
            await pilot.pause(WARM_UP)
            figures["watch_mode"] = app.registry_watcher.mode if app.registry_watcher else "-"

            probe = StallProbe()
            cpu0, wall0 = cpu_seconds(), time.perf_counter()
            ages_all: list[float] = []
            ages_seen: list[float] = []
            while time.perf_counter() - wall0 < args.duration:
                await pilot.pause(0.25)
                now = time.monotonic()
                on_screen = set(main.rows_to_check_first())
                for s in session.status:
                    if s.state is SlotState.EMPTY:
                        continue
                    age = now - s.checked_at if s.checked_at is not None else float("inf")
                    ages_all.append(age)
                    if s.key in on_screen:
                        ages_seen.append(age)
            cpu = cpu_seconds() - cpu0
            wall = time.perf_counter() - wall0
            figures["stall"], figures["stall_p99"] = probe.stop()
            figures["cpu"] = 100 * cpu / wall
            figures["wall"] = wall
            figures["ages_seen"] = ages_seen
            figures["ages_all"] = ages_all
            figures["healthy"] = sum(1 for s in session.status if s.health is Health.HEALTHY)
            figures["slots"] = len(session.status)
            figures["on_screen"] = len(main.rows_to_check_first())
    finally:
        await engine.aclose()  # its clients and worker threads: the bench must exit
    figures["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return figures


_ANSI = re.compile(rb"\x1b\[[0-9;?<>=]*[ -/]*[@-~]"  # CSI: cursor moves, colours, modes
                   rb"|\x1b\][^\x07\x1b]*(\x07|\x1b\\)"  # OSC: title, clipboard
                   rb"|\x1b[()][0-9A-Za-z]|\x1b[=>78]")  # charsets, keypad, save/restore


def pty_bench(config_file: Path, rows: int, live_seconds: float) -> dict:
    """`codeb --config FILE` as a process in a pseudo-terminal of SIZE: the time from fork to
    the first complete frame (every row counted, the first row, the operations pane and the
    footer: a screen's first frame may come in several passes, the rows before the panes
    below them), then its peak RSS after `live_seconds` of live polling (it quits on "q")."""
    want = [f"{rows}/{rows} rows".encode(), b"p000", b"operations", b"Quit"]
    started = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal's size, then codeb
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", SIZE[1], SIZE[0], 0, 0))
        env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(SIZE[0]), LINES=str(SIZE[1]))
        os.execve(sys.executable, [sys.executable, "-m", "codeb_tui.cli", "--config",
                                   str(config_file)], env)
    figures: dict = {"frame": None}
    screen = b""
    deadline = started + 30
    quit_at = None
    try:
        while time.perf_counter() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    break
                if not data:
                    break
                if figures["frame"] is None:
                    screen += _ANSI.sub(b"", data)
                    if all(w in screen for w in want):
                        figures["frame"] = time.perf_counter() - started
                        figures["frame_cpu"] = child_cpu(pid)
                        quit_at = time.perf_counter() + live_seconds
                        deadline = quit_at + 15
            if quit_at is not None and time.perf_counter() >= quit_at:
                os.write(fd, b"q")
                quit_at = float("inf")
    finally:
        try:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done == 0:
                os.kill(pid, signal.SIGTERM)
                done, status, usage = os.wait4(pid, 0)
        finally:
            os.close(fd)
    figures["rss"] = usage.ru_maxrss / 1024
    figures["cpu"] = usage.ru_utime + usage.ru_stime
    return figures


async def idle_bench(tmp: Path, args) -> dict:
    """The console over `args.idle_files` slot files, every slot empty: no health check at
    all, so what is left is the watcher, the services check, the drift badge and drawing."""
    from codeb_tui.tui.app import CodebApp

    projects = -(-args.idle_files // 3)
    write_registry(tmp / "registry", projects, IDLE_RANGES, live=False)
    config = parse_config(config_dict(tmp, IDLE_RANGES, args.poll_interval))
    engine = Engine(config)
    app = CodebApp(config, engine=engine)
    try:
        async with app.run_test(size=SIZE) as pilot:
            started = time.perf_counter()
            frame = await first_frame(app, pilot, projects * 3, started)
            # the first drift check reads every file once: measured from after it
            session, quiet = app.session, app.session.drift
            while session.drift == quiet and time.perf_counter() - started < 60:
                await pilot.pause(0.1)
            await pilot.pause(WARM_UP)
            cpu0, wall0 = cpu_seconds(), time.perf_counter()
            await pilot.pause(args.idle_duration)
            cpu = cpu_seconds() - cpu0
            wall = time.perf_counter() - wall0
            mode = app.registry_watcher.mode if app.registry_watcher else "-"
    finally:
        await engine.aclose()
    return {"files": projects * 3, "cpu": 100 * cpu / wall, "wall": wall, "frame": frame,
            "mode": mode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of live polling measured")
    parser.add_argument("--projects", type=int, default=200)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--idle-files", type=int, default=5000)
    parser.add_argument("--idle-duration", type=float, default=20.0)
    parser.add_argument("--pty-live", type=float, default=10.0,
                        help="seconds the codeb process polls before it quits (its peak RSS)")
    parser.add_argument("--skip", choices=("pty", "idle"), action="append", default=[])
    parser.add_argument("--close", action="store_true",
                        help="endpoints close after each answer (busybox httpd's way): a new "
                             "connection per check")
    args = parser.parse_args()

    load = os.getloadavg()  # other work on the machine stretches wall times (frames, stalls)
    tmp = Path(tempfile.mkdtemp(prefix="codeb-bench-"))
    args.ranges = free_ranges(args.projects)
    ports = write_registry(tmp / "registry", args.projects, args.ranges, live=True)
    server = subprocess.Popen([sys.executable, "-c", SERVER,
                               "close" if args.close else "keep-alive", *map(str, ports)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        live = asyncio.run(live_bench(tmp, args))
        proc = None
        if "pty" not in args.skip:
            config_file = tmp / "config.yaml"
            config_file.write_text(yaml.safe_dump(config_dict(tmp, args.ranges, args.poll_interval)))
            proc = pty_bench(config_file, args.projects * 3, args.pty_live)
    finally:
        server.terminate()
        server.wait(5)
    idle = None
    if "idle" not in args.skip:
        idle_tmp = Path(tempfile.mkdtemp(prefix="codeb-bench-idle-"))
        idle = asyncio.run(idle_bench(idle_tmp, args))

    seen, every = live["ages_seen"], live["ages_all"]
    print(f"machine                       {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.1f}' for x in load)} at the start, "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end")
    print(f"slots                         {live['slots']} ({live['healthy']} healthy, endpoints "
          f"{'close after each answer' if args.close else 'keep connections'}), "
          f"{live['on_screen']} rows on screen, registry watch: {live['watch_mode']}")
    print(f"first complete frame          {live['first_frame']:.2f} s in process (target < 0.8 s; "
          f"CPU {live['first_frame_cpu']:.2f} s)")
    if proc is not None:
        frame = (f"{proc['frame']:.2f} s" if proc["frame"] is not None else "not seen in 30 s")
        cpu = f"; CPU {proc['frame_cpu']:.2f} s" if proc["frame"] is not None else ""
        print(f"                              {frame} from `codeb` started in a pty "
              f"(target < 1 s{cpu})")
    print(f"first health check result     {live['first_check']:.2f} s after start")
    print(f"check age, rows on screen     max {max(seen):.2f} s, p95 {quantile(seen, 0.95):.2f} s "
          f"(target: every 1 s)")
    print(f"check age, all slots          max {max(every):.2f} s, p95 {quantile(every, 0.95):.2f} s "
          f"(target: every 5 s)")
    print(f"live polling CPU              {live['cpu']:.1f} % of one core over {live['wall']:.0f} s "
          f"(target < 10 %)")
    print(f"worst event-loop stall        {1000 * live['stall']:.0f} ms "
          f"(p99 {1000 * live['stall_p99']:.0f} ms) (target < 50 ms)")
    print(f"peak RSS                      {live['rss']:.0f} MB in process (target < 100 MB)")
    if proc is not None:
        print(f"                              {proc['rss']:.0f} MB the `codeb` process after "
              f"{args.pty_live:.0f} s live")
    if idle is not None:
        print(f"idle CPU, {idle['files']} slot files   {idle['cpu']:.2f} % of one core over "
              f"{idle['wall']:.0f} s, no health checks, watch: {idle['mode']} (target < 1 %); "
              f"its first frame {idle['frame']:.1f} s")


if __name__ == "__main__":
    main()
