"""Failed requests and latency during proxy switches, per way of driving Caddy.

A client that retries nothing keeps requests flowing through Caddy (loopback only), over
keep-alive connections, while the engine switches production between blue and green again and
again (rollback, which swaps the active and grace slots). Each way of driving Caddy is measured
in the same run, side by side:

  file          caddy.switch_mode=file (default): marker files checked per request; no reload
  reload        caddy.switch_mode=reload: every switch POSTs a new config to /load
  reload-close  reload, plus close_connections: Caddy answers `Connection: close`, so no idle
                keep-alive connection exists for a reload to cut

The registry holds --projects project+environments in all (the measured one and others whose
slots have no container: Caddy routes them all, so the config and the files a switch reads are
those of an installation that size). switch_ms_median is a switch's call to return (a rollback:
the same procedure as a promote, health check, proxy lock, in file mode the project's routes
asked from Caddy by @id, markers, slot file, audit rows).
The client is a process of its own (bench/loadgen.py) on codeb's small HTTP/1.1 client.

Needs the services of scripts/services.sh (DOCKER_HOST set); starts a Caddy of its own.
    .venv/bin/python -m bench.switch [--switches 20] [--concurrency 8] [--projects 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import need_services
from bench.loadgen import LoadProcess, Sample, failures, rate, stale_answers
from codeb_tui.domain import events
from codeb_tui.domain.config import parse_config
from codeb_tui.domain.model import Environment, ProjectSlots, Slot, SlotName, SlotState, utcnow
from codeb_tui.engine.facade import Engine, local_principal
from codeb_tui.registry.files import slot_file_json

LOCAL = local_principal()

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Free ports of their own, so a bench never drives another Caddy (or the demo's) by mistake.
ADMIN_PORT, HTTP_PORT = free_port(), free_port()
REGISTRY = os.environ.get("CODEB_REGISTRY_URL", "127.0.0.1:5000")


def start_caddy(root: Path) -> subprocess.Popen:
    config = root / "caddy-boot.json"
    config.write_text(f'{{"admin": {{"listen": "127.0.0.1:{ADMIN_PORT}"}}}}')
    env = {**os.environ, "XDG_CONFIG_HOME": str(root / "xdg-config"), "XDG_DATA_HOME": str(root / "xdg-data")}
    proc = subprocess.Popen([shutil.which("caddy") or "/usr/bin/caddy", "run", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    for _ in range(150):
        if proc.poll() is not None:
            raise SystemExit(f"caddy exited at start (admin port {ADMIN_PORT} taken?)")
        try:
            httpx.get(f"http://127.0.0.1:{ADMIN_PORT}/config/", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("caddy did not start")


MODES = {
    "file": {"switch_mode": "file", "close_connections": False},
    "reload": {"switch_mode": "reload", "close_connections": False},
    "reload-close": {"switch_mode": "reload", "close_connections": True},
}


def make_engine(root: Path, mode: str) -> Engine:
    return Engine(parse_config({
        "registry": {"root": str(root / "registry")},
        "docker": {"endpoint": os.environ["DOCKER_HOST"]},
        "caddy": {"admin": f"http://127.0.0.1:{ADMIN_PORT}", "listen": f"127.0.0.1:{HTTP_PORT}",
                  "config_dir": str(root / "caddy"), **MODES[mode]},
        "database": {"sqlite_path": str(root / "codeb.sqlite3")},
        "health": {"timeout": 20, "interval": 0.1},
    }))


def add_other_projects(engine: Engine, count: int) -> None:
    """`count` production project+environments with an active and a grace slot each (no
    containers), on the highest free port pairs: files and ssot.json as the engine writes them."""
    registry = engine.context.registry
    ssot = registry.read_ssot()
    low, high = engine.context.config.environments["production"].ports
    free = [port for port in range(high - 1, low - 1, -2)
            if port not in ssot.allocated and port + 1 not in ssot.allocated]
    if len(free) < count:
        raise SystemExit(f"--projects: only {len(free)} free production pairs")
    now = utcnow()
    for i, port in enumerate(free[:count]):
        project = f"other{i:04d}"

        def slot(name: SlotName, port: int, state: SlotState) -> Slot:
            return Slot(name, port, state, image=f"{REGISTRY}/demo/app:v1",
                        container_id=f"{i:04d}{name.value}".ljust(64, "0"),
                        container_name=f"codeb-{project}-prod-{name.value}", deployed_at=now,
                        promoted_at=now if state is SlotState.ACTIVE else None,
                        grace_expires_at=None if state is SlotState.ACTIVE else now)

        pair = ProjectSlots(project, Environment.PRODUCTION,
                            slot(SlotName.BLUE, port, SlotState.ACTIVE),
                            slot(SlotName.GREEN, port + 1, SlotState.GRACE), version=1, updated_at=now)
        registry.slot_path(project, Environment.PRODUCTION).write_text(
            json.dumps(slot_file_json(pair), indent=2) + "\n")
        ssot.allocated[port] = ssot.allocated[port + 1] = project
    registry.write_ssot(ssot)


async def must(stream) -> events.Finished:
    last = None
    async for event in stream:
        last = event
    if not isinstance(last, events.Finished):
        raise SystemExit(f"setup failed: {getattr(last, 'error', last)}")
    return last


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def measure(root: Path, project: str, mode: str, switches: int, concurrency: int,
                  rate_cap: float | None) -> dict:
    engine = make_engine(root, mode)
    try:
        await engine.apply_proxy(LOCAL)
        host = f"{project}.example.com"
        load = LoadProcess(HTTP_PORT, host, concurrency=concurrency, deadline_s=30 + switches * 3,
                           rate=rate_cap)
        load.start()
        await asyncio.sleep(2.0)  # the client process starts, then a baseline before the first switch
        windows = []  # (start, end, slot now active)
        for _ in range(switches):
            t0 = time.monotonic()
            done = await must(engine.rollback(LOCAL, project))
            windows.append((t0, time.monotonic(), done.result["slot"]))
            await asyncio.sleep(0.4)
        samples: list[Sample] = await asyncio.to_thread(load.stop)
    finally:
        await engine.aclose()

    def in_window(s: Sample) -> bool:
        return any(a - 0.05 <= s.started <= b + 0.25 for a, b, _ in windows)

    base = [s.latency_ms for s in samples if not in_window(s) and s.status == 200]
    during = [s.latency_ms for s in samples if in_window(s) and s.status == 200]
    failed = failures(samples)
    stale = len(stale_answers(samples, windows))
    per_switch = [sum(1 for s in failed if a - 0.05 <= s.started <= b + 0.25) for a, b, _ in windows]
    switch_ms = [(b - a) * 1000 for a, b, _ in windows]
    return {
        "requests": len(samples), "rate": rate(samples), "failed": len(failed),
        "failed_per_switch_mean": statistics.mean(per_switch), "failed_per_switch_max": max(per_switch),
        "stale_answers": stale,
        "p50_base": pct(base, 0.5), "p99_base": pct(base, 0.99),
        "p50_switch": pct(during, 0.5), "p99_switch": pct(during, 0.99), "max_switch": max(during or [0]),
        "switch_ms_median": statistics.median(switch_ms),
        "errors": sorted({s.error.split(":")[0] for s in failed if s.error} | {str(s.status) for s in failed if s.status}),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--rate", type=float, default=1000,
                        help="client requests per second at most (0: as fast as Caddy answers; "
                             "on 2 cores that starves the engine being timed)")
    parser.add_argument("--projects", type=int, default=200,
                        help="project+environments in the registry, the measured one included")
    args = parser.parse_args()
    need_services()
    root = Path(tempfile.mkdtemp(prefix="codeb-switch-"))
    caddy = start_caddy(root)
    project = f"bsw{os.getpid() % 100000}"
    setup = make_engine(root, "file")
    try:
        await must(setup.deploy(LOCAL, project, f"{REGISTRY}/demo/app:v1"))
        await must(setup.promote(LOCAL, project))
        await must(setup.deploy(LOCAL, project, f"{REGISTRY}/demo/app:v2"))
        await must(setup.promote(LOCAL, project))
        add_other_projects(setup, args.projects - 1)
        results = {}
        for mode in args.modes.split(","):
            results[mode] = await measure(root, project, mode, args.switches, args.concurrency,
                                          args.rate or None)
        rows = [
            ("requests", "{:.0f}"), ("rate", "{:.0f} req/s"), ("failed", "{:.0f}"),
            ("failed_per_switch_mean", "{:.2f}"), ("failed_per_switch_max", "{:.0f}"),
            ("stale_answers", "{:.0f}"), ("p50_base", "{:.1f} ms"), ("p99_base", "{:.1f} ms"),
            ("p50_switch", "{:.1f} ms"), ("p99_switch", "{:.1f} ms"), ("max_switch", "{:.1f} ms"),
            ("switch_ms_median", "{:.1f} ms"),
        ]
        modes = list(results)
        print(f"{args.switches} switches, {args.concurrency} client connections, no retries, "
              f"client rate cap {args.rate or 'none'} req/s, "
              f"{args.projects} project+environments in the registry")
        print(f"{'':24}" + "".join(f"{m:>16}" for m in modes))
        for key, fmt in rows:
            print(f"{key:24}" + "".join(f"{fmt.format(results[m][key]):>16}" for m in modes))
        for mode in modes:
            if results[mode]["errors"]:
                print(f"{mode} errors: {', '.join(results[mode]['errors'])}")
        for mode in modes:
            verdict = "meets" if results[mode]["switch_ms_median"] < 20 else "MISSES"
            print(f"{mode}: switch call to return {results[mode]['switch_ms_median']:.1f} ms median "
                  f"({verdict} the 20 ms target), {results[mode]['rate']:.0f} req/s "
                  f"({'meets' if results[mode]['rate'] >= 500 else 'MISSES'} the 500 req/s target)")
        first = modes[0]
        for mode in modes[1:]:
            print(f"ratio p50 latency {mode}/{first}: "
                  f"{results[mode]['p50_base'] / results[first]['p50_base']:.2f}")
    finally:
        for c in (await setup.context.host.docker.list_slot_containers()):
            if c.labels.get("codeb.project") == project:
                await setup.context.host.docker.remove(c.id)
        await setup.aclose()
        caddy.terminate()
        caddy.wait(10)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
