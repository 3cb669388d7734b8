"""What a `codeb` command costs to start, against `python -c pass`, side by side in one run.

pass          `python -c pass`: the interpreter alone, the floor
help          `codeb --help`: click and the command tree, nothing that talks to the world
status        `codeb status --json` over 10 projects (production and staging, 20 slot files) in
              a temporary registry with SQLite; Docker and Caddy's admin API from the env file of
              scripts/services.sh (read only: no container of these projects exists)
deploy        `codeb deploy` of an image the registry does not hold: start-up, validation, lock,
              a refused pull, the audit row; a proxy for the start-up of every operation

Each command is a process (`python -m codeb_tui.cli`, what the `codeb` script runs). Rounds run
every command once each so that machine noise hits all alike; medians are compared, wall
time and the process's CPU time (user and system). Bytecode is
cached under the temporary directory (PYTHONPYCACHEPREFIX), as an installed codeb has its .pyc
files, without writing into the tree; one untimed round warms it. One more run per command with
`-X importtime` lists which heavy packages it imported, with their import times.

    source /var/lib/codeb-services/env; .venv/bin/python -m bench.cli [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench import need_services
from bench.reconcile import ENVS, config_for, make_pairs, write_registry

PROJECTS = 10
TARGET_MS = {"status": 300.0}
HEAVY = ("docker", "httpx", "pydantic", "rich", "yaml", "asyncpg", "aiosqlite", "textual",
         "uvicorn", "starlette")
MISSING_IMAGE = os.environ.get("CODEB_REGISTRY_URL", "127.0.0.1:5000") + "/codeb-bench/missing:nope"
_IMPORTTIME = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def commands(config: Path) -> dict[str, list[str]]:
    codeb = [sys.executable, "-m", "codeb_tui.cli"]
    return {
        "pass": [sys.executable, "-c", "pass"],
        "help": [*codeb, "--help"],
        "status": [*codeb, "status", "--json", "--config", str(config)],
        "deploy": [*codeb, "deploy", "bench-missing", "--image", MISSING_IMAGE,
                   "--config", str(config)],
    }


def run(argv: list[str], env: dict[str, str], expect: int) -> tuple[float, float, str]:
    """Wall time, CPU time (user and system: less moved by a busy machine) and stderr."""
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = after.ru_utime - cpu.ru_utime + after.ru_stime - cpu.ru_stime
    if out.returncode != expect:
        raise SystemExit(f"{' '.join(argv)}: exit {out.returncode}, expected {expect}\n"
                         f"{out.stderr.strip()}")
    return elapsed, cpu_s, out.stderr


def import_profile(stderr: str) -> dict[str, float]:
    """The heavy packages a run imported, each with its own import time in ms (what it pulls in
    included, so rich inside httpx counts in both)."""
    heavy = {}
    for match in _IMPORTTIME.finditer(stderr):
        if match.group(4) in HEAVY:
            heavy[match.group(4)] = int(match.group(2)) / 1000
    return dict(sorted(heavy.items(), key=lambda item: -item[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    need_services()

    root = Path(tempfile.mkdtemp(prefix="codeb-bench-cli-"))
    try:
        write_registry(root / "registry", make_pairs(PROJECTS * len(ENVS)))
        config = root / "config.yaml"
        # The config bench.reconcile gives its slot files, as the file a command reads.
        parsed = config_for(root, PROJECTS * len(ENVS), None, os.environ["DOCKER_HOST"],
                            os.environ.get("CODEB_CADDY_ADMIN", "http://127.0.0.1:2019"))
        config.write_text(yaml.safe_dump(parsed.model_dump(mode="json")))
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONDONTWRITEBYTECODE", "CODEB_SERVER", "CODEB_API_KEY")}
        env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
        cmds = commands(config)
        expect = {"pass": 0, "help": 0, "status": 0, "deploy": 1}  # deploy: image not found

        for name, argv in cmds.items():  # warm-up: bytecode, the SQLite schema
            run(argv, env, expect[name])
        times: dict[str, list[float]] = {name: [] for name in cmds}
        cpu: dict[str, list[float]] = {name: [] for name in cmds}
        for _ in range(args.runs):
            for name, argv in cmds.items():
                wall, cpu_s, _ = run(argv, env, expect[name])
                times[name].append(wall)
                cpu[name].append(cpu_s)
        profiles = {name: import_profile(run([argv[0], "-X", "importtime", *argv[1:]], env,
                                             expect[name])[2])
                    for name, argv in cmds.items() if name != "pass"}
    finally:
        shutil.rmtree(root, ignore_errors=True)

    floor = statistics.median(times["pass"])
    print(f"{args.runs} runs each, {PROJECTS} projects x {len(ENVS)} environments; "
          f"python {sys.version.split()[0]}")
    print(f"{'command':<8} {'median':>9} {'min':>9} {'ratio':>6} {'over pass':>10} {'cpu':>9}")
    for name, values in times.items():
        median = statistics.median(values)
        target = TARGET_MS.get(name)
        note = f"  target < {target:.0f} ms" if target else ""
        print(f"{name:<8} {median * 1000:6.1f} ms {min(values) * 1000:6.1f} ms "
              f"{median / floor:5.1f}x {(median - floor) * 1000:7.1f} ms "
              f"{statistics.median(cpu[name]) * 1000:6.1f} ms{note}")
    for name, heavy in profiles.items():
        loaded = ", ".join(f"{package} {ms:.0f} ms" for package, ms in heavy.items())
        print(f"{name:<8} imports {loaded or 'none of ' + ', '.join(HEAVY)}")

if __name__ == "__main__":
    main()
