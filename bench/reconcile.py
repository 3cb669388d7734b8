"""How long `reconcile()` takes over 10,000 slots (5,000 project+environment slot files).

Populates a temporary registry (slot files and ssot.json) and the database, then times:

  repair-empty  reconcile --repair against an empty database: 10,000 missing rows, one batch
  in-sync       reconcile with the database in line with the files (median of --runs), each
                run on a new engine as `codeb reconcile` is (every slot file parsed)
  in-sync warm  the same on one long-lived engine, as the console and `codeb serve` run it
                (unchanged slot files are not parsed again)
  drifted       the same with 1% of the rows edited by hand (median of --runs)
  live          with the reality checks too: the real Docker at $DOCKER_HOST (no container of
                these projects exists, so every non-empty slot is a missing container) and
                Caddy's live config read from --caddy-admin (read only: never repaired here)

Prints the figures against the targets (1 s without the live checks, 1.5 s with them);
asserts nothing.
    .venv/bin/python -m bench.reconcile [--files 5000] [--runs 3] [--pg] [--db-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from codeb_tui.domain.config import parse_config
from codeb_tui.engine.audit import slot_rows
from codeb_tui.engine.facade import Engine, local_principal

LOCAL = local_principal()
from codeb_tui.domain.model import Environment, ProjectSlots, Slot, SlotName, SlotState, utcnow
from codeb_tui.registry.files import Ssot, slot_file_json

TARGET_S = 1.0  # files against the database
TARGET_LIVE_S = 1.5  # with Docker, Caddy and the ports
ENVS = (Environment.PRODUCTION, Environment.STAGING)
IMAGE = os.environ.get("CODEB_DEMO_IMAGE", "127.0.0.1:5000/demo/app")


def make_pairs(files: int, seed: int = 7) -> list[ProjectSlots]:
    rng = random.Random(seed)
    now = utcnow()
    pairs = []
    per_env = (files + len(ENVS) - 1) // len(ENVS)
    for i in range(files):
        env = ENVS[i % len(ENVS)]
        project = f"bench-{i // len(ENVS):05d}"
        first = 20000 if env is Environment.PRODUCTION else 20000 + 2 * per_env
        base = first + 2 * (i // len(ENVS))

        def slot(name: SlotName, port: int, state: SlotState) -> Slot:
            if state is SlotState.EMPTY:
                return Slot(name, port)
            return Slot(name, port, state, image=f"{IMAGE}:v{rng.randint(1, 3)}",
                        container_id=secrets.token_hex(32),
                        container_name=f"codeb-{project}-{env.suffix}-{name.value}",
                        deployed_at=now - timedelta(hours=rng.randint(1, 500)),
                        promoted_at=(now - timedelta(hours=1)
                                     if state is SlotState.ACTIVE else None),
                        grace_expires_at=(now + timedelta(hours=47)
                                          if state is SlotState.GRACE else None))

        green_state = rng.choice([SlotState.GRACE, SlotState.DEPLOYED, SlotState.EMPTY])
        pairs.append(ProjectSlots(project, env, slot(SlotName.BLUE, base, SlotState.ACTIVE),
                                  slot(SlotName.GREEN, base + 1, green_state),
                                  version=rng.randint(1, 40), updated_at=now))
    return pairs


def write_registry(root: Path, pairs: list[ProjectSlots]) -> None:
    """The files as the engine writes them (same JSON), without an fsync per file."""
    slots = root / "slots"
    slots.mkdir(parents=True)
    ssot = Ssot()
    for pair in pairs:
        path = slots / f"{pair.project}-{pair.environment.suffix}.json"
        path.write_text(json.dumps(slot_file_json(pair), indent=2) + "\n")
        for port in pair.ports:
            ssot.allocated[port] = pair.project
    (root / "ssot.json").write_text(json.dumps(ssot.to_json()))


def config_for(tmp: Path, files: int, dsn: str | None, docker: str, caddy_admin: str):
    per_env = (files + len(ENVS) - 1) // len(ENVS)
    low = 20000
    return parse_config({
        "registry": {"root": str(tmp / "registry")},
        "environments": {
            "production": {"ports": [low, low + 2 * per_env - 1], "domain": "{project}.prod.bench",
                           "preview_domain": "{slot}.{project}.prod-preview.bench"},
            "staging": {"ports": [low + 2 * per_env, low + 4 * per_env - 1],
                        "domain": "{project}.staging.bench",
                        "preview_domain": "{slot}.{project}.staging-preview.bench"},
            "preview": {"ports": [low + 4 * per_env, low + 4 * per_env + 99]},
        },
        "docker": {"endpoint": docker},
        "caddy": {"admin": caddy_admin, "listen": "127.0.0.1:18999",
                  "config_dir": str(tmp / "caddy")},
        "database": {"dsn": dsn, "sqlite_path": str(tmp / "codeb.sqlite3")},
    })


async def timed(engine: Engine, runs: int, fresh: bool = True, **kwargs) -> tuple[float, list[float], object]:
    """Median of `runs` reconciles. `fresh`: each on an engine of its own, as `codeb reconcile`
    runs (no slot file parsed before); else on `engine`, as a console or `codeb serve` does
    (FileRegistry keeps the parse of each unchanged file)."""
    times, report = [], None
    for _ in range(runs):
        run_engine = Engine(engine.context.config) if fresh else engine
        try:
            started = time.perf_counter()
            report = await run_engine.reconcile(LOCAL, **kwargs)
            times.append(time.perf_counter() - started)
        finally:
            if fresh:
                await run_engine.aclose()
    return statistics.median(times), times, report


def line(label: str, seconds: float, report, times: list[float] | None = None) -> None:
    s = report.summary()
    phases = ", ".join(f"{k} {v:.0f}" for k, v in report.timings_ms.items())
    runs = f" (runs {', '.join(f'{t:.3f}' for t in times)})" if times and len(times) > 1 else ""
    target = TARGET_LIVE_S if label == "live" else TARGET_S
    print(f"  {label:<13} {seconds:7.3f} s  {seconds / target:5.2f}x its {target:g} s target{runs}")
    kinds = ", ".join(f"{k} {v}" for k, v in s["by_kind"].items()) or "none"
    print(f"  {'':<13} drift {s['drift']} ({kinds}), fixed {s['fixed']}; phases ms: {phases}")


async def bench_backend(label: str, tmp: Path, pairs, args, dsn: str | None) -> None:
    docker = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    config = config_for(tmp, args.files, dsn, docker, args.caddy_admin)
    engine = Engine(config)
    try:
        print(f"{label}: {len(pairs)} slot files, {2 * len(pairs)} slots")
        started = time.perf_counter()
        report = await engine.reconcile(LOCAL, repair=True, live=False)
        line("repair-empty", time.perf_counter() - started, report)
        median, times, report = await timed(engine, args.runs, live=False)
        line("in-sync", median, report, times)
        median, times, report = await timed(engine, args.runs, fresh=False, live=False)
        line("in-sync warm", median, report, times)
        # 1% of the rows edited by hand: the image of every 100th project's blue slot.
        store = await engine.context.history.store()
        edited = [replace(slot_rows(p)[0], image="edited:by-hand") for p in pairs[::100]]
        await store.sync_slot_rows(edited, [])
        median, times, report = await timed(engine, args.runs, live=False)
        line("drifted", median, report, times)
        if not args.db_only:
            median, times, report = await timed(engine, args.runs, live=True)
            line("live", median, report, times)
    finally:
        await engine.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000, help="project+environment slot files")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pg", action="store_true", help="also PostgreSQL (a fresh database)")
    parser.add_argument("--pg-dsn", default=os.environ.get(
        "CODEB_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--db-only", action="store_true",
                        help="skip the live run (Docker, Caddy, ports)")
    parser.add_argument("--caddy-admin", default=os.environ.get("CODEB_CADDY_ADMIN",
                                                                "http://127.0.0.1:2019"),
                        help="Caddy admin API to read the live config from (never written)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="codeb-bench-reconcile-"))
    try:
        pairs = make_pairs(args.files)
        started = time.perf_counter()
        write_registry(tmp / "registry", pairs)
        print(f"setup: wrote {len(pairs)} slot files in {time.perf_counter() - started:.1f} s "
              f"({tmp})")
        await bench_backend("sqlite", tmp, pairs, args, None)
        if args.pg:
            import asyncpg

            name = f"codeb_bench_{secrets.token_hex(4)}"
            admin = await asyncpg.connect(args.pg_dsn, timeout=5)
            await admin.execute(f'CREATE DATABASE "{name}"')
            await admin.close()
            try:
                await bench_backend("postgresql", tmp, pairs, args,
                                    args.pg_dsn.rsplit("/", 1)[0] + "/" + name)
            finally:
                admin = await asyncpg.connect(args.pg_dsn, timeout=5)
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await admin.close()
        print(f"targets: reconcile over {2 * len(pairs)} slots in under {TARGET_S:g} s, "
              f"{TARGET_LIVE_S:g} s with the live checks")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
