"""What a remote host costs over SSH, per request, against this machine: the choices made in
infra/ssh_host.py, measured side by side in one run on a test host (a network namespace with
sshd, dockerd and Caddy, as tests/remote_hosts.py makes).

  connect        a fresh SSH connection (key exchange, auth, the Docker/Caddy/registry forwards)
  health         a health check of a busybox slot on the host, two ways: a direct-tcpip channel
                 per check (what SSHHost does) and the local HealthChecker through one local
                 port forward per slot port (the other way the brief named); wall time and this
                 process's CPU per check, --slots checked at once as a poll does
  docker ping    Docker's /_ping through the forwarded socket vs the local engine
  ports          listening ports: /proc/net/tcp* read over SFTP vs reading them here
  marker         create + remove a switch marker: SFTP vs the local filesystem

    .venv/bin/python -m bench.ssh_host [--slots 10] [--rounds 5] [--checks 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from codeb_tui.domain.config import parse_config  # noqa: E402
from codeb_tui.infra.health import HealthChecker  # noqa: E402
from codeb_tui.infra.host import LocalHost  # noqa: E402
from codeb_tui.infra.ssh_host import SSHHost  # noqa: E402
from tests.remote_hosts import RemoteHosts  # noqa: E402

IMAGE = os.environ.get("CODEB_DEMO_IMAGE", "127.0.0.1:5000/demo/app") + ":v1"
BASE_PORT = 4400


async def timed(fn, count: int) -> tuple[float, float]:
    """(wall ms, CPU ms of this process) per call, `count` calls one after the other."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        await fn()
    return ((time.perf_counter() - wall) * 1000 / count,
            (time.process_time() - cpu) * 1000 / count)


async def poll(check, ports: list[int], checks: int) -> tuple[float, float]:
    """(wall ms, CPU ms) per check, every port checked at once per round."""
    rounds = max(1, checks // len(ports))
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        results = await asyncio.gather(*[check(port) for port in ports])
        assert all(r.ok for r in results), results
    done = rounds * len(ports)
    return ((time.perf_counter() - wall) * 1000 / done,
            (time.process_time() - cpu) * 1000 / done)


async def main(args: argparse.Namespace) -> None:
    hosts = RemoteHosts(("web1",))
    started = time.perf_counter()
    hosts.up()
    print(f"test host up in {time.perf_counter() - started:.2f} s")
    try:
        config = parse_config({"hosts": hosts.hosts_config(),
                               "docker": {"endpoint": os.environ["DOCKER_HOST"]},
                               "health": {"path": "/health"}})
        remote = SSHHost("web1", config.hosts["web1"], config)
        local = LocalHost(config)
        ports = [BASE_PORT + i for i in range(args.slots)]
        await remote.docker.pull(IMAGE)
        for port in ports:
            await remote.docker.run_slot(name=f"bench-{port}", image=IMAGE, port=port,
                                         labels={"codeb.project": "bench"}, env={})
        for port in ports:
            while not (await remote.health.check(port)).ok:
                await asyncio.sleep(0.05)

        conn = await remote.connection()
        forwards = {}
        for port in ports:
            listener = await conn.forward_local_port("127.0.0.1", 0, "127.0.0.1", port)
            forwards[listener.get_port()] = port
        through_forward = HealthChecker("127.0.0.1", "/health", 5.0)

        rows: dict[str, list[tuple[float, float]]] = {}

        def add(name: str, value: tuple[float, float]) -> None:
            rows.setdefault(name, []).append(value)

        for _ in range(args.rounds):
            async def fresh() -> None:
                host = SSHHost("web1", config.hosts["web1"], config)
                await host.connection()
                await host.aclose()

            add("connect (fresh SSH connection + forwards)", await timed(fresh, 3))
            add("health: channel per check (SSHHost)", await poll(remote.health.check, ports, args.checks))
            add("health: local forward per port + HealthChecker",
                await poll(through_forward.check, list(forwards), args.checks))
            add("health: local slot (this machine, for scale)", (0.0, 0.0))
            add("docker ping: forwarded socket", await timed(remote.docker.ping, 20))
            add("docker ping: local engine", await timed(local.docker.ping, 20))
            add("listening ports: SFTP", await timed(remote.listening_ports, 20))
            add("listening ports: local /proc", await timed(local.listening_ports, 20))
            marker_dir = Path(hosts.config("web1")["marker_dir"])
            local_dir = Path(tempfile.mkdtemp())

            async def remote_marker() -> None:
                await remote.create_file(marker_dir / "m.live")
                await remote.remove_file(marker_dir / "m.live")

            async def local_marker() -> None:
                await local.create_file(local_dir / "m.live")
                await local.remove_file(local_dir / "m.live")

            add("marker create+remove: SFTP", await timed(remote_marker, 20))
            add("marker create+remove: local", await timed(local_marker, 20))
        rows.pop("health: local slot (this machine, for scale)")

        print(f"\n{args.slots} busybox slots on the host, {args.rounds} rounds, medians")
        print(f"{'':52} {'wall ms':>9} {'CPU ms':>8}")
        for name, values in rows.items():
            wall = statistics.median(v[0] for v in values)
            cpu = statistics.median(v[1] for v in values)
            print(f"{name:52} {wall:9.2f} {cpu:8.2f}")
        await through_forward.aclose()
        await remote.aclose()
        await local.aclose()
    finally:
        hosts.down()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--checks", type=int, default=200)
    asyncio.run(main(parser.parse_args()))
