"""What `codeb deploy` costs over the raw work it wraps, side by side in one run.

raw          the docker SDK directly: pull, run (host network, init), poll GET /health until 2xx
codeb        Engine.deploy of a new version into the idle (empty) slot of a live project: the
             everyday deploy. Validation, lock, registry, the same pull/run/poll, switch markers,
             registry write, SQLite deployment and audit rows
codeb (new)  Engine.deploy of a new project: adds port allocation and a Caddy config load

Both poll health at the same interval. Rounds alternate raw and codeb so that machine noise hits
both alike; medians are compared. The `codeb deploy` command as a process (interpreter start-up
and imports included) is timed too, for reference.

    .venv/bin/python -m bench.deploy [--rounds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
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
from bench.switch import ADMIN_PORT, HTTP_PORT, must, start_caddy
from codeb_tui.domain.config import parse_config
from codeb_tui.engine.facade import Engine, local_principal

LOCAL = local_principal()

REGISTRY = os.environ.get("CODEB_REGISTRY_URL", "127.0.0.1:5000")
IMAGE = f"{REGISTRY}/demo/app:v1"
INTERVAL = 0.05


def raw_deploy(client: docker.DockerClient, name: str, port: int) -> float:
    started = time.perf_counter()
    client.images.pull(IMAGE.rsplit(":", 1)[0], tag="v1")
    container = client.containers.run(IMAGE, name=name, detach=True, network_mode="host", init=True,
                                      environment={"PORT": str(port)}, labels={"bench": "raw"})
    deadline = time.monotonic() + 30
    with httpx.Client(trust_env=False, timeout=2) as http:
        while time.monotonic() < deadline:
            try:
                if http.get(f"http://127.0.0.1:{port}/health").status_code < 400:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            container.reload()
            if container.status == "exited":
                break
            time.sleep(INTERVAL)
    raise SystemExit("raw deploy never became healthy")


def config_data(root: Path) -> dict:
    return {
        "registry": {"root": str(root / "registry")},
        # As an installation has it (the demo too): a deploy then pulls only when the tag's
        # digest in the registry is not the engine's image already.
        "docker": {"endpoint": os.environ["DOCKER_HOST"], "registry_url": f"http://{REGISTRY}"},
        "caddy": {"admin": f"http://127.0.0.1:{ADMIN_PORT}", "listen": f"127.0.0.1:{HTTP_PORT}",
                  "config_dir": str(root / "caddy")},
        "database": {"sqlite_path": str(root / "codeb.sqlite3")},
        "health": {"interval": INTERVAL},
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    need_services()
    root = Path(tempfile.mkdtemp(prefix="codeb-bench-deploy-"))
    caddy = start_caddy(root)
    client = docker.DockerClient(base_url=os.environ["DOCKER_HOST"])
    engine = Engine(parse_config(config_data(root)))
    config_file = root / "config.yaml"
    config_file.write_text(yaml.safe_dump(config_data(root)))
    tag = f"bd{os.getpid() % 10000}"
    raw, codeb, fresh, cli = [], [], [], []
    try:
        live = f"{tag}-live"
        await must(engine.deploy(LOCAL, live, IMAGE))  # warms the store, the image and Caddy too
        await must(engine.promote(LOCAL, live))
        for i in range(args.rounds):
            raw.append(await asyncio.to_thread(raw_deploy, client, f"{tag}-raw-{i}", 4490 - 2 * i))
            started = time.perf_counter()
            await must(engine.deploy(LOCAL, live, IMAGE))
            codeb.append(time.perf_counter() - started)
            await must(engine.cleanup(LOCAL, live, force=True, slot="green"))  # empty again, untimed
            started = time.perf_counter()
            await must(engine.deploy(LOCAL, f"{tag}-{i}", IMAGE))
            fresh.append(time.perf_counter() - started)
            started = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "codeb_tui.cli", "deploy", f"{tag}-cli-{i}",
                                  "--image", IMAGE, "--config", str(config_file)],
                                 capture_output=True, text=True)
            cli.append(time.perf_counter() - started)
            if out.returncode != 0:
                raise SystemExit(f"codeb deploy failed: {out.stderr}")
    finally:
        for filters in ({"label": "bench=raw"}, {"name": f"codeb-{tag}"}):
            for container in client.containers.list(all=True, sparse=True, filters=filters):
                try:
                    container.remove(force=True)
                except docker.errors.NotFound:
                    pass
        client.close()
        await engine.aclose()
        caddy.terminate()
        caddy.wait(10)
        shutil.rmtree(root, ignore_errors=True)

    def ms(values: list[float]) -> str:
        return f"median {statistics.median(values) * 1000:7.1f} ms   min {min(values) * 1000:7.1f} ms"

    print(f"{args.rounds} rounds, health polled every {INTERVAL * 1000:.0f} ms")
    print(f"raw docker SDK (pull, run, poll)   {ms(raw)}")
    print(f"codeb deploy (Engine, in process)  {ms(codeb)}")
    print(f"codeb deploy, new project          {ms(fresh)}")
    print(f"codeb deploy (command, process)    {ms(cli)}")
    ratio = statistics.median(codeb) / statistics.median(raw)
    print(f"ratio codeb/raw: {ratio:.2f} (target 1.15 or less)")
    print(f"ratio codeb new project/raw: {statistics.median(fresh) / statistics.median(raw):.2f}")
    print(f"ratio command/raw: {statistics.median(cli) / statistics.median(raw):.2f} "
          "(interpreter start-up and imports included)")


if __name__ == "__main__":
    asyncio.run(main())
