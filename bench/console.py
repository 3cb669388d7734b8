"""Console bench: 200 projects x 3 environments (1,200 slots, every one answering /health on
loopback), then the time to the first complete frame, the CPU used by live polling, the worst
event-loop stall (input latency) and the peak memory. Prints figures; asserts nothing.

    .venv/bin/python bench/console.py [--duration 60] [--projects 200]

Targets: first frame < 1.5 s, polling < 15 % of one core, peak RSS < 150 MB.
The health endpoints run in a child process (its CPU is not counted). Docker is only listed
(engine.status asks it for containers); set DOCKER_HOST to a running engine, as scripts/test.sh does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from codeb_tui.domain.config import parse_config  # noqa: E402
from codeb_tui.domain.model import Environment, ProjectSlots, Slot, SlotName, SlotState, utcnow  # noqa: E402
from codeb_tui.domain.status import Health  # noqa: E402
from codeb_tui.engine.facade import Engine  # noqa: E402
from codeb_tui.registry.files import FileRegistry, Ssot  # noqa: E402

RANGES = {"production": (24000, 24999), "staging": (25000, 25999), "preview": (26000, 26999)}
"""Below the ephemeral range (32768+), where client sockets could already hold a port."""

SERVER = r"""
import asyncio, sys
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
async def handle(reader, writer):
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(RESPONSE)
        await writer.drain()
    except Exception:
        pass
    writer.close()
async def main():
    ports = [int(p) for p in sys.argv[1:]]
    servers = [await asyncio.start_server(handle, "127.0.0.1", p, backlog=64) for p in ports]
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def write_registry(root: Path, projects: int) -> list[int]:
    registry = FileRegistry(root)
    ssot = Ssot()
    ports = []
    now = utcnow()
    for env in Environment:
        low = RANGES[env.value][0]
        for i in range(projects):
            name = f"p{i:03d}"
            blue, green = low + 2 * i, low + 2 * i + 1
            img = "127.0.0.1:5000/bench/app"
            pair = ProjectSlots(
                name, env,
                Slot(SlotName.BLUE, blue, SlotState.ACTIVE, image=f"{img}:v1",
                     container_name=f"codeb-{name}-{env.suffix}-blue", deployed_at=now),
                Slot(SlotName.GREEN, green, SlotState.GRACE if i % 3 else SlotState.DEPLOYED,
                     image=f"{img}:v2", container_name=f"codeb-{name}-{env.suffix}-green",
                     deployed_at=now, grace_expires_at=now + timedelta(hours=40) if i % 3 else None),
            )
            registry.write_slots(pair)
            ssot.allocated[blue] = ssot.allocated[green] = name
            ports += [blue, green]
    registry.write_ssot(ssot)
    return ports


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def bench(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="codeb-bench-"))
    ports = write_registry(tmp / "registry", args.projects)
    server = subprocess.Popen([sys.executable, "-c", SERVER, *map(str, ports)],
                              stdout=subprocess.PIPE, text=True)
    engine: Engine | None = None
    try:
        assert server.stdout.readline().strip() == "ready"
        config = parse_config({
            "registry": {"root": str(tmp / "registry")},
            "environments": {k: {"ports": list(v)} for k, v in RANGES.items()},
            "docker": {"endpoint": os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")},
            "caddy": {"admin": os.environ.get("CODEB_CADDY_ADMIN", "http://127.0.0.1:2019"),
                      "config_dir": str(tmp / "caddy")},
            "database": {"sqlite_path": str(tmp / "codeb.sqlite3")},
            "console": {"poll_interval": args.poll_interval},
        })
        from codeb_tui.tui.app import CodebApp  # Textual only now: the registry is written without it

        started = time.perf_counter()
        engine = Engine(config)
        app = CodebApp(config, engine=engine)
        async with app.run_test(size=(200, 50)) as pilot:
            main = app.screen
            expected = args.projects * 3
            while len(main.shown) < expected:
                await pilot.pause(0.005)
            await pilot.pause()  # one refresh: the frame with every row is drawn
            first_frame = time.perf_counter() - started
            session = app.session
            while session.checked_at is None:
                await pilot.pause(0.05)
            first_live = time.perf_counter() - started
            rows = session.status
            healthy = sum(1 for s in rows if s.health is Health.HEALTHY)

            stalls: list[float] = []

            async def probe() -> None:
                while True:
                    t = time.perf_counter()
                    await asyncio.sleep(0.02)
                    stalls.append(time.perf_counter() - t - 0.02)

            probe_task = asyncio.create_task(probe())
            cpu0, wall0 = cpu_seconds(), time.perf_counter()
            polls = 0
            last = session.checked_at
            while time.perf_counter() - wall0 < args.duration:
                await pilot.pause(0.1)
                if session.checked_at != last:
                    polls, last = polls + 1, session.checked_at
            cpu = cpu_seconds() - cpu0
            wall = time.perf_counter() - wall0
            probe_task.cancel()
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"slots                    {len(rows)} ({healthy} healthy at the first live poll)")
        print(f"first complete frame     {first_frame:.2f} s   (target < 1.5 s)")
        print(f"first live health poll   {first_live:.2f} s")
        print(f"live polling CPU         {100 * cpu / wall:.1f} % of one core over {wall:.0f} s "
              f"(target < 15 %); {polls} polls, period {session.poll_period or 0:.1f} s")
        print(f"worst event-loop stall   {1000 * max(stalls or [0]):.0f} ms "
              f"(p99 {1000 * sorted(stalls)[int(len(stalls) * 0.99)] if stalls else 0:.0f} ms)")
        print(f"peak RSS                 {peak_mb:.0f} MB   (target < 150 MB)")
    finally:
        if engine is not None:
            await engine.aclose()  # its clients and worker threads: the bench must exit
        server.terminate()
        server.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of live polling measured")
    parser.add_argument("--projects", type=int, default=200)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
