"""What pull progress costs: the docker SDK's own `images.pull` against `DockerEngine.pull` with
its progress events, side by side in one run, for the `big` demo image (108 MiB of random layers,
removed from the engine's store before each cold pull) and for an image already present.

Rounds alternate raw and codeb so that machine noise hits both alike; medians are compared.

    .venv/bin/python -m bench.pull [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import docker

from bench import need_services
from codeb_tui.infra.docker_engine import DockerEngine, PullCounts

REGISTRY = os.environ.get("CODEB_REGISTRY_URL", "127.0.0.1:5000")
REPOSITORY = f"{REGISTRY}/demo/app"


def remove(client: docker.DockerClient, ref: str) -> None:
    try:
        client.images.remove(ref, force=True)
    except docker.errors.ImageNotFound:
        pass


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    need_services()
    client = docker.DockerClient(base_url=os.environ["DOCKER_HOST"])
    engine = DockerEngine(os.environ["DOCKER_HOST"])
    counts: list[PullCounts] = []
    times: dict[str, list[float]] = {"raw cold": [], "codeb cold": [], "raw present": [],
                                     "codeb present": []}
    events_per_pull: list[int] = []
    for _ in range(args.rounds):
        for cold in (True, False):
            ref = f"{REPOSITORY}:big" if cold else f"{REPOSITORY}:v1"
            what = "cold" if cold else "present"
            if cold:
                remove(client, ref)
            started = time.perf_counter()
            await asyncio.to_thread(client.images.pull, REPOSITORY, tag=ref.rsplit(":", 1)[1])
            times[f"raw {what}"].append(time.perf_counter() - started)
            if cold:
                remove(client, ref)
            counts.clear()
            started = time.perf_counter()
            await engine.pull(ref, counts.append)
            times[f"codeb {what}"].append(time.perf_counter() - started)
            if cold:
                events_per_pull.append(len(counts))
                last = counts[-1]
                assert last.downloaded == last.total and last.layers_done == last.layers, last
            else:
                assert not counts, counts
    engine.close()
    client.close()
    print(f"big: {last.total / 1e6:.1f} MB in {last.layers} layers; {args.rounds} rounds, medians")
    for what in ("cold", "present"):
        raw, codeb = (statistics.median(times[f"{who} {what}"]) for who in ("raw", "codeb"))
        print(f"  {what:8} raw images.pull {raw * 1000:7.0f} ms   codeb pull {codeb * 1000:7.0f} ms"
              f"   ratio {codeb / raw:.2f}")
    print(f"  progress events per cold pull: {min(events_per_pull)}-{max(events_per_pull)}")


if __name__ == "__main__":
    asyncio.run(main())
