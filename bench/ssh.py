"""SSH console bench: `codeb ssh-serve` over a registry of 200 projects x 3 environments (600
rows, every slot answering /health on loopback, as bench/console.py sets up). Prints figures;
asserts nothing.

    source /var/lib/codeb-services/env
    .venv/bin/python bench/ssh.py [--projects 200] [--connects 5] [--sessions 10] [--idle 20]

What it prints, with the issue's targets:
- from SSH connect (TCP, key exchange, public-key auth, pty, shell) to the first complete
  frame (the top bar showing "600/600 rows" and the first row), each of --connects sessions
  opened one after the other                                                         < 1 s
- memory per session: the RSS of each session's console process, and how much the server
  process grew, with --sessions sessions open
- CPU of --sessions idle sessions (nobody presses a key; each console polls live) over --idle
  seconds: the server and every console process, in % of one core, in total and per session

The client is asyncssh's, in this process (its CPU is not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncssh  # noqa: E402
import yaml  # noqa: E402

from bench.console import _ANSI, SERVER, config_dict, write_registry  # noqa: E402

SIZE = (200, 50)
RANGES = {"production": (27000, 27999), "staging": (28000, 28999), "preview": (29000, 29999)}
"""Beside bench/console.py's (24000-26999), so that both may run at once."""
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_cpu(pid: int) -> float:
    """utime + stime of one process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def proc_pss_mb(pid: int) -> float:
    """The proportional set size: shared pages (libraries) divided among their processes."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def waiting_on_pipe(pid: int) -> bool:
    try:
        return "pipe_read" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


async def spare_ready(server_pid: int, timeout: float = 30) -> None:
    """Until a spare console has loaded and waits on its pipe (as between sessions that do not
    arrive within a second or two of each other)."""
    deadline = time.monotonic() + timeout
    while not any(waiting_on_pipe(pid) for pid in children(server_pid)):
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(0.05)


class Session:
    def __init__(self, conn: asyncssh.SSHClientConnection, process) -> None:
        self.conn, self.process = conn, process
        self.seen = b""

    @classmethod
    async def open(cls, port: int, key: asyncssh.SSHKey) -> Session:
        conn = await asyncssh.connect("127.0.0.1", port, username="bench", client_keys=[key],
                                      known_hosts=None, agent_path=None)
        process = await conn.create_process(term_type="xterm-256color", term_size=SIZE,
                                            encoding=None)
        return cls(conn, process)

    async def until(self, wanted: list[bytes], timeout: float = 30) -> bool:
        deadline = time.perf_counter() + timeout
        while not all(w in self.seen for w in wanted):
            left = deadline - time.perf_counter()
            if left <= 0:
                return False
            try:
                data = await asyncio.wait_for(self.process.stdout.read(65536), left)
            except TimeoutError:
                return False
            if not data:
                return False
            self.seen += _ANSI.sub(b"", data)
        return True

    async def drain(self) -> None:
        """Read and drop what the console draws (a client that reads, as a terminal does)."""
        while await self.process.stdout.read(65536):
            pass

    def close(self) -> None:
        self.conn.close()


async def bench(port: int, server_pid: int, key: asyncssh.SSHKey, args) -> dict:
    rows = args.projects * 3
    wanted = [f"{rows}/{rows} rows".encode(), b"p000"]
    frames, handshakes = [], []
    for _ in range(args.connects):
        if args.spare:
            await spare_ready(server_pid)
        else:
            await asyncio.sleep(1.0)  # the last console ends (the server hangs it up)
        started = time.perf_counter()
        session = await Session.open(port, key)
        handshakes.append(time.perf_counter() - started)
        ok = await session.until(wanted)
        frames.append(time.perf_counter() - started if ok else float("nan"))
        session.close()
    server_before = proc_rss_mb(server_pid)
    sessions = []
    for _ in range(args.sessions):
        session = await Session.open(port, key)
        await session.until(wanted)
        sessions.append(session)
    drains = [asyncio.ensure_future(s.drain()) for s in sessions]
    await asyncio.sleep(args.warm_up)
    consoles = [pid for pid in children(server_pid) if not waiting_on_pipe(pid)]  # no spare
    rss = [proc_rss_mb(pid) for pid in consoles]
    pss = [proc_pss_mb(pid) for pid in consoles]
    server_after = proc_rss_mb(server_pid)
    pids = [server_pid, *consoles]
    cpu_before = {pid: proc_cpu(pid) for pid in pids}
    wall = time.perf_counter()
    await asyncio.sleep(args.idle)
    wall = time.perf_counter() - wall
    cpu_server = (proc_cpu(server_pid) - cpu_before[server_pid]) / wall * 100
    cpu_consoles = [(proc_cpu(pid) - cpu_before[pid]) / wall * 100 for pid in consoles]
    for session in sessions:
        session.close()
    for drain in drains:
        drain.cancel()
    return {"frames": frames, "handshakes": handshakes, "rss": rss, "pss": pss, "server_before": server_before,
            "server_after": server_after, "cpu_server": cpu_server, "cpu_consoles": cpu_consoles,
            "wall": wall, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=200)
    parser.add_argument("--connects", type=int, default=5, help="sessions timed to their first frame")
    parser.add_argument("--sessions", type=int, default=10, help="sessions open at once")
    parser.add_argument("--warm-up", type=float, default=6.0,
                        help="seconds before measuring (every slot checked once)")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle CPU measured")
    parser.add_argument("--spare", type=int, default=1,
                        help="ssh.spare_consoles (0: each session starts its console process)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="codeb-bench-ssh-"))
    ports = write_registry(tmp / "registry", args.projects, RANGES, live=True)
    key = asyncssh.generate_private_key("ssh-ed25519")
    port = free_port()
    config = config_dict(tmp, RANGES, 1.0)
    config["ssh"] = {"listen": f"127.0.0.1:{port}", "state_dir": str(tmp / "ssh"),
                     "max_sessions": max(20, args.sessions + 2), "idle_timeout": 3600,
                     "spare_consoles": args.spare,
                     "operators": [{"name": "bench", "role": "viewer",
                                    "keys": [key.export_public_key().decode().strip()]}]}
    config_file = tmp / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    health = subprocess.Popen([sys.executable, "-c", SERVER, *map(str, ports)],
                              stdout=subprocess.PIPE, text=True)
    log = (tmp / "ssh-serve.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "codeb_tui.cli", "ssh-serve", "--config",
                               str(config_file)], stdout=log, stderr=subprocess.STDOUT)
    try:
        assert health.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 30
        while "listening on" not in (tmp / "ssh-serve.log").read_text():
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"ssh-serve did not start: {(tmp / 'ssh-serve.log').read_text()}")
            time.sleep(0.05)
        figures = asyncio.run(bench(port, server.pid, key, args))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        health.terminate()
        health.wait(5)

    frames = figures["frames"]
    shown = ", ".join(f"{f:.2f}" for f in frames)
    print(f"rows                          {figures['rows']} ({args.projects} projects x 3 "
          f"environments), terminal {SIZE[0]}x{SIZE[1]}, spare consoles {args.spare}")
    print(f"SSH connect to first frame    median {statistics.median(frames):.2f} s, max "
          f"{max(frames):.2f} s ({shown}) (target < 1 s)")
    print(f"  of which SSH                median {statistics.median(figures['handshakes']):.2f} s "
          "(TCP, keys, auth, channel, pty, shell: until the console is told its session)")
    rss = figures["rss"]
    print(f"memory per session            console process RSS median {statistics.median(rss):.0f} MB "
          f"(max {max(rss):.0f} MB), PSS median {statistics.median(figures['pss']):.0f} MB, "
          f"with {len(rss)} sessions open; server "
          f"{figures['server_before']:.0f} -> {figures['server_after']:.0f} MB")
    consoles = figures["cpu_consoles"]
    total = figures["cpu_server"] + sum(consoles)
    print(f"CPU of {len(consoles)} idle sessions        {total:.1f} % of one core in all over "
          f"{figures['wall']:.0f} s: server {figures['cpu_server']:.1f} %, consoles median "
          f"{statistics.median(consoles):.1f} % each (max {max(consoles):.1f} %)")


if __name__ == "__main__":
    main()
