"""Deploys and status on remote hosts over SSH, side by side with the local host, in one run.

deploy       Engine.deploy of a new version into the idle slot of a live project (the everyday
             deploy), on the local host, on one SSH host (web1) and on two at once (web1+web2).
             Rounds alternate the three so that machine noise hits them alike; medians compared.
             Target: two hosts at most 1.3 times one local deploy.
status       Engine.status of N projects (default 200) spread over the two hosts, each with its
             live slot answering; then with web2 gone (its link down: packets dropped, as a
             machine that went away): the first status after, which waits for web2's request
             timeout, and the ones after it, which know web2 is down and ask it again in the
             background.

The hosts are the test suite's (tests/remote_hosts.py): two network namespaces on this machine,
each with sshd, dockerd and Caddy, reached over veth pairs; images come from the loopback
registry through each SSH connection's remote forward.

    .venv/bin/python -m bench.hosts [--rounds 6] [--projects 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

import docker

from bench import need_services
from bench.deploy import INTERVAL, IMAGE, LOCAL, config_data
from bench.switch import must, start_caddy
from codeb_tui.domain.config import parse_config
from codeb_tui.domain.status import Health
from codeb_tui.engine.facade import Engine
from tests.remote_hosts import RemoteHosts

WHERE = {"local": None, "one SSH host": ["web1"], "two SSH hosts": ["web1", "web2"]}
RAW = "docker alone, "


async def timed(stream, cpu: list[float]) -> float:
    """Wall time of the operation; this process's CPU time for it goes into `cpu`."""
    started, used = time.perf_counter(), time.process_time()
    await must(stream)
    cpu.append(time.process_time() - used)
    return time.perf_counter() - started


def raw_start(client: docker.DockerClient, name: str, port: int) -> None:
    """What Docker alone takes to start a slot's container (create, start, inspect as codeb
    asks them), no codeb and no SSH: the floor under a deploy on that engine."""
    created = client.api.create_container(
        IMAGE, name=name, environment={"PORT": str(port), "HOST": "127.0.0.1"},
        host_config=client.api.create_host_config(
            network_mode="host", init=True, restart_policy={"Name": "unless-stopped"}))
    client.api.start(created["Id"])
    client.api.inspect_container(created["Id"])


async def raw_starts(clients: list[docker.DockerClient], name: str) -> float:
    """Wall time of raw_start on every engine of `clients` at once (then removed)."""
    with socket.socket() as probe:  # a port free here; the test hosts have their own
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.perf_counter()
    await asyncio.gather(*[asyncio.to_thread(raw_start, c, name, port) for c in clients])
    took = time.perf_counter() - started
    for client in clients:
        client.api.remove_container(name, force=True)
    return took


async def deploys(engine: Engine, hosts: RemoteHosts, tag: str, rounds: int
                  ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """The everyday deploy on each placement, `rounds` times, alternating; and in the same
    rounds, Docker alone starting the container on the local engine and on both test hosts'
    engines at once (their sockets are files on this machine), the floor under each."""
    projects = {label: f"{tag}-{i}" for i, label in enumerate(WHERE)}
    for label, where in WHERE.items():  # live projects; warms images, stores and connections
        await must(engine.deploy(LOCAL, projects[label], IMAGE, hosts=where))
        await must(engine.promote(LOCAL, projects[label]))
    engines = {"local": [docker.DockerClient(base_url=os.environ["DOCKER_HOST"])],
               "two SSH hosts": [docker.DockerClient(base_url=f"unix://{hosts.hosts[n].docker_socket}")
                                 for n in ("web1", "web2")]}
    times: dict[str, list[float]] = {label: [] for label in [*WHERE, *(RAW + n for n in engines)]}
    cpu: dict[str, list[float]] = {label: [] for label in WHERE}
    try:
        for turn in range(rounds):
            for label in WHERE:
                times[label].append(await timed(engine.deploy(LOCAL, projects[label], IMAGE),
                                                cpu[label]))
                await must(engine.cleanup(LOCAL, projects[label], force=True, slot="green"))
            for label, clients in engines.items():
                times[RAW + label].append(await raw_starts(clients, f"codeb-{tag}-raw{turn}"))
    finally:
        for clients in engines.values():
            for client in clients:
                client.close()
    return times, cpu


async def statuses(engine: Engine, hosts: RemoteHosts, tag: str, count: int
                   ) -> dict[str, list[float]]:
    names = [f"{tag}-s{i}" for i in range(count)]
    gate = asyncio.Semaphore(8)

    async def place(i: int, name: str) -> None:
        async with gate:
            await must(engine.deploy(LOCAL, name, IMAGE, hosts=[("web1", "web2")[i % 2]]))
            await must(engine.promote(LOCAL, name))

    await asyncio.gather(*[place(i, name) for i, name in enumerate(names)])
    wanted = set(names)

    async def one() -> tuple[float, list]:
        started = time.perf_counter()
        rows = [r for r in await engine.status(LOCAL) if r.project in wanted]
        return time.perf_counter() - started, rows

    found: dict[str, list[float]] = {"all up": [], "web2 down, first": [], "web2 down, next": []}
    for _ in range(5):
        took, rows = await one()
        found["all up"].append(took)
    healthy = sum(r.health is Health.HEALTHY for r in rows if r.state.value == "active")
    if healthy != count:
        raise SystemExit(f"only {healthy} of {count} live slots healthy with both hosts up")
    hosts.stop("web2", how="link")
    try:
        took, rows = await one()
        found["web2 down, first"].append(took)
        for _ in range(5):
            took, rows = await one()
            found["web2 down, next"].append(took)
        down = sum(not h.reachable for r in rows for h in r.hosts)
        if down == 0:
            raise SystemExit("web2 went down but no row says so")
    finally:
        hosts.start("web2")
    return found


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--projects", type=int, default=200)
    args = parser.parse_args()
    need_services()
    root = Path(tempfile.mkdtemp(prefix="codeb-bench-hosts-"))
    hosts = RemoteHosts()
    caddy = start_caddy(root)
    tag = f"bh{os.getpid() % 10000}"
    engine = None
    try:
        up = time.perf_counter()
        hosts.up()
        up = time.perf_counter() - up
        data = config_data(root)
        # Room for the status projects: a pair each, given out once for all hosts.
        data["environments"] = {"production": {"ports": [10000, 10999]}}
        engine = Engine(parse_config({**data, "hosts": hosts.hosts_config()}))
        load = os.getloadavg()[0]
        deploy_times, deploy_cpu = await deploys(engine, hosts, tag, args.rounds)
        status_times = await statuses(engine, hosts, tag, args.projects)
    finally:
        if engine is not None:
            await engine.aclose()
        client = docker.DockerClient(base_url=os.environ["DOCKER_HOST"])
        for container in client.containers.list(all=True, sparse=True,
                                                filters={"name": f"codeb-{tag}"}):
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
        client.close()
        hosts.down()
        caddy.terminate()
        caddy.wait(10)
        shutil.rmtree(root, ignore_errors=True)

    def ms(values: list[float]) -> str:
        return (f"median {statistics.median(values) * 1000:7.1f} ms   "
                f"min {min(values) * 1000:7.1f} ms   max {max(values) * 1000:7.1f} ms")

    print(f"two test hosts up in {up:.2f} s; health polled every {INTERVAL * 1000:.0f} ms; "
          f"load average {load:.1f} on {os.cpu_count()} cores when the deploys began (the test "
          "hosts' dockerd and sshd share these cores: two hosts starting containers at once "
          "compete for them, as separate machines would not)")
    print(f"deploy, {args.rounds} rounds (everyday deploy into the idle slot):")
    for label, values in deploy_times.items():
        print(f"  {label:<28} {ms(values)}" + (f"   codeb CPU median "
              f"{statistics.median(deploy_cpu[label]) * 1000:5.1f} ms" if label in WHERE else ""))
    median = {label: statistics.median(values) for label, values in deploy_times.items()}
    for label in ("one SSH host", "two SSH hosts"):
        print(f"  ratio {label}/local: {median[label] / median['local']:.2f}"
              + ("  (target 1.3 or less)" if label == "two SSH hosts" else ""))
    floor = median[RAW + "two SSH hosts"] / median[RAW + "local"]
    print(f"  floor: Docker alone starting the container on both test hosts at once takes "
          f"{floor:.2f} times its start on the local engine (no codeb, no SSH: the two hosts' "
          "daemons share this machine's cores)")
    for label in ("local", "two SSH hosts"):
        print(f"  codeb's part of the {label} deploy (deploy - docker alone): "
              f"{(median[label] - median[RAW + label]) * 1000:.1f} ms")
    timeout = parse_config({**config_data(root), "hosts": {}}).health.request_timeout
    print(f"status of {args.projects} projects over web1 and web2 "
          f"(request timeout of the hosts: 3 s; local health checks {timeout:g} s):")
    for label, values in status_times.items():
        print(f"  {label:<18} {ms(values)}")


if __name__ == "__main__":
    asyncio.run(main())
