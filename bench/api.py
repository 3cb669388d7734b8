"""What the HTTP API costs, side by side in one run.

deploy        a new version into the idle slot of a live project, through `codeb serve` (POST
              /api/tool with a member key, a separate process, answer when done) against the
              same deploy by Engine.deploy in this process. Rounds alternate; medians compared.
slot_status   requests per second with 1,200 slots in the registry (600 project+environment
              files, fabricated as bench/reconcile.py does), 8 concurrent keep-alive clients:
              one project with live health, and every slot from the registry alone.

    .venv/bin/python -m bench.api [--rounds 8] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import httpx
import yaml

from bench import need_services
from bench.deploy import IMAGE, config_data
from bench.reconcile import config_for, make_pairs, write_registry
from bench.switch import must, start_caddy
from codeb_tui.domain.config import parse_config
from codeb_tui.engine.facade import Engine, local_principal

LOCAL = local_principal()
SLOT_FILES = 600  # 1,200 slots
CLIENTS = 8


class Serve:
    """`codeb serve` with `data` as its config, and a member key."""

    def __init__(self, root: Path, data: dict) -> None:
        self.port = _free_port()
        data = {**data, "api": {"listen": f"127.0.0.1:{self.port}",
                                "rate_limit_per_minute": 1_000_000}}
        self.config = root / "config.yaml"
        self.config.write_text(yaml.safe_dump(data))
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = ""
        self.proc: subprocess.Popen | None = None

    async def start(self) -> None:
        async with Engine(parse_config(yaml.safe_load(self.config.read_text()))) as engine:
            await engine.create_team(LOCAL, "bench")
            new, _ = await engine.create_api_key(LOCAL, "bench", "member")
            self.key = new.key
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "codeb_tui.cli", "serve", "--config", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                httpx.get(f"{self.url}/healthz", timeout=1, trust_env=False)
                return
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
        raise SystemExit("codeb serve did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def bench_deploy(root: Path, rounds: int, tag: str) -> tuple[list[float], list[float]]:
    data = config_data(root)
    serve = Serve(root, data)
    await serve.start()
    api, local = [], []
    try:
        async with Engine(parse_config(data)) as engine, httpx.AsyncClient(
                base_url=serve.url, headers={"X-API-Key": serve.key}, timeout=120,
                trust_env=False) as client:
            here, there = f"{tag}-local", f"{tag}-api"
            for project in (here, there):  # live on blue, green idle; warms image and store
                await must(engine.deploy(LOCAL, project, IMAGE))
                await must(engine.promote(LOCAL, project))
            for round_ in range(rounds + 1):  # the first warms the server up, untimed
                started = time.perf_counter()
                answer = await client.post("/api/tool", json={"tool": "deploy", "params": {
                    "projectName": there, "image": IMAGE}})
                api.append(time.perf_counter() - started)
                if answer.status_code != 200:
                    raise SystemExit(f"API deploy failed: {answer.text}")
                started = time.perf_counter()
                await must(engine.deploy(LOCAL, here, IMAGE))
                local.append(time.perf_counter() - started)
                for project in (here, there):  # the idle slot empty again, untimed
                    await must(engine.cleanup(LOCAL, project, force=True, slot="green"))
    finally:
        serve.stop()
    return api[1:], local[1:]


async def bench_status(root: Path, seconds: float) -> dict[str, float]:
    data = config_for(root, SLOT_FILES, None, os.environ["DOCKER_HOST"], "http://127.0.0.1:1")
    pairs = make_pairs(SLOT_FILES)
    write_registry(root / "registry", pairs)
    serve = Serve(root, data.model_dump(mode="json"))
    await serve.start()
    rates = {}
    try:
        async with httpx.AsyncClient(base_url=serve.url, headers={"X-API-Key": serve.key},
                                     timeout=30, trust_env=False,
                                     limits=httpx.Limits(max_connections=CLIENTS)) as client, \
                Engine(data) as engine:
            one = {"projectName": pairs[0].project, "environment": "production"}
            for label, params in (("one project, live", one),
                                  ("all 1,200 slots, registry only", {"live": False})):
                body = {"tool": "slot_status", "params": params}

                async def through_api() -> None:
                    answer = await client.post("/api/tool", json=body)
                    if answer.status_code != 200:
                        raise SystemExit(f"slot_status failed: {answer.text[:200]}")

                async def in_process() -> None:
                    slots = await engine.status(LOCAL, params.get("projectName"),
                                                params.get("environment"),
                                                live=params.get("live", True))
                    [slot.to_json() for slot in slots]

                rates[label] = (await _rate(through_api, seconds),
                                await _rate(in_process, seconds))
    finally:
        serve.stop()
    return rates


async def _rate(call, seconds: float) -> float:
    """Calls per second of `call` by CLIENTS concurrent callers for `seconds`."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(CLIENTS)])
    return done / (time.perf_counter() - started)


def _remove_containers(tag: str) -> None:
    client = docker.DockerClient(base_url=os.environ["DOCKER_HOST"])
    try:
        for container in client.containers.list(all=True, sparse=True,
                                                filters={"name": f"codeb-{tag}"}):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
    finally:
        client.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    need_services()
    root = Path(tempfile.mkdtemp(prefix="codeb-bench-api-"))
    tag = f"ba{os.getpid() % 10000}"
    caddy = start_caddy(root)
    try:
        (root / "deploy").mkdir()
        api, local = await bench_deploy(root / "deploy", args.rounds, tag)
        (root / "status").mkdir()
        rates = await bench_status(root / "status", args.seconds)
    finally:
        _remove_containers(tag)
        caddy.terminate()
        caddy.wait(10)
        shutil.rmtree(root, ignore_errors=True)

    print(f"{args.rounds} rounds, a new version into the idle slot of a live project "
          "(median, min)")
    for label, times in (("through the API (codeb serve)", api),
                         ("in process (Engine.deploy)", local)):
        print(f"deploy {label:30s} {statistics.median(times) * 1000:7.1f} ms "
              f"{min(times) * 1000:7.1f} ms")
    print(f"ratio API/in process: {statistics.median(api) / statistics.median(local):.2f} "
          "(target 1.10 or less)")
    print(f"slot_status with {2 * SLOT_FILES:,} slots, {CLIENTS} concurrent callers, "
          f"{args.seconds:g} s each (requests/s: API, Engine.status in process)")
    for label, (api_rate, local_rate) in rates.items():
        print(f"  {label:32s} {api_rate:7.1f}  {local_rate:7.1f}")


if __name__ == "__main__":
    asyncio.run(main())
