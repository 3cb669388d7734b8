"""Soak: many `codeb` processes at once on one registry, then whether everything still holds.

Worker threads, --processes of them, each run one real `codeb` process at a time (so that many
codeb processes run together), through a shared list of random operations on --projects
projects in production and staging: deploy (v1/v2/v3, sometimes --yes, sometimes an image that
is unhealthy, crashes or does not exist, so that failures and their undo run), promote,
rollback, cleanup (sometimes --force, sometimes one --slot), status, ports, and a few bad inputs
(project name, environment, slot, image reference). All share one config: one registry root,
one SQLite database, one private Caddy on free loopback ports. Bounded by --operations and
--seconds, whichever comes first (an operation under way is finished, never cut).

Then, with no operation running, it prints: elapsed time, operations per second, outcomes per
command and failures and refusals per kind; ports allocated twice and every other port-book
rule; whether the registry files parse with codeb's own reader; whether each failure was one
`codeb: ` line on stderr (success may add `warning: ` lines) and no output held a Traceback;
and what one `codeb reconcile --repair --prune` over its projects says. Asserts nothing; any
broken rule is listed under VIOLATIONS. Its containers, Caddy and files are removed at the end,
on Ctrl-C too.

    .venv/bin/python -m bench.soak [--processes 8] [--operations 300] [--projects 10]
                                   [--seconds 300] [--seed N]

The defaults finish in a few minutes on 2 cores (each codeb process costs about 0.7 s of CPU);
--operations 1000 --seconds 3600 is the long soak (16 min on a busy 2-core machine).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import queue
import random
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
import yaml

import bench.switch
from bench import need_services
from bench.switch import free_port, start_caddy
from codeb_tui.domain.errors import RegistryCorrupt
from codeb_tui.domain.model import Environment
from codeb_tui.infra.docker_engine import LABEL_PROJECT
from codeb_tui.registry.files import FileRegistry

REPO = Path(__file__).resolve().parent.parent
IMAGE = f"{os.environ.get('CODEB_REGISTRY_URL', '127.0.0.1:5000')}/demo/app"
ENVS = ("production", "staging")
OP_TIMEOUT_S = 180.0
"""One codeb process may take this long before it is killed and counted as a violation: a
deploy is bounded by the pull, the health timeout (5 s here) and the stop timeout."""

WEIGHTS = {"deploy": 34, "promote": 20, "rollback": 12, "cleanup": 10, "status": 10,
           "ports": 6, "bad input": 8}
TAGS = {"v1": 3, "v2": 3, "v3": 3, "unhealthy": 1, "crash": 1, "missing": 1}
"""`missing` is a tag the registry does not hold: "Image not found"."""

KINDS = (  # (kind, words in the message, lower case); the first that matches names the kind
    ("is locked", "is locked"),
    ("Run deploy first", "run deploy first"),
    ("No grace slot", "no grace slot"),
    ("Grace slot unhealthy", "grace slot unhealthy"),
    ("Image not found", "image not found"),
    ("Health check failed", "health check failed"),
    ("exited before healthy", "before becoming healthy"),
    ("in grace", "is in grace"),
    ("slot is active", "is active and serves"),
    ("slot already empty", "is already empty"),
    ("has no slots", "has no slots"),
    ("bad project name", "invalid project name"),
    ("bad environment", "unknown environment"),
    ("bad image reference", "invalid image reference"),
    ("bad choice", "invalid choice"),
    ("named slot needs --force", "cleaning a named slot needs"),
    ("internal error", "internal error"),
)


def kind_of(message: str) -> str:
    low = message.lower()
    return next((kind for kind, words in KINDS if words in low), "other")


@dataclass(frozen=True)
class Op:
    group: str  # the row of the report: the command, or "bad input"
    args: tuple[str, ...]
    tag: str = ""  # a deploy's image tag: a row of its own under deploy
    expect: int | None = None  # the exit code a bad input must give


@dataclass
class Outcome:
    op: Op
    code: int | None  # None: killed after OP_TIMEOUT_S
    stdout: str
    stderr: str
    seconds: float


def plan(rng: random.Random, count: int, projects: list[str]) -> list[Op]:
    """The operations, drawn up front so that a seed replays the same mix."""
    ops = []
    groups, weights = zip(*WEIGHTS.items())
    for _ in range(count):
        group = rng.choices(groups, weights)[0]
        project, env = rng.choice(projects), rng.choice(ENVS)
        target = (project, "--env", env)
        if group == "deploy":
            tag = rng.choices(list(TAGS), list(TAGS.values()))[0]
            yes = ("--yes",) if rng.random() < 0.3 else ()
            ops.append(Op(group, ("deploy", *target, "--image", f"{IMAGE}:{tag}", *yes), tag))
        elif group in ("promote", "rollback"):
            ops.append(Op(group, (group, *target)))
        elif group == "cleanup":
            how = rng.random()
            if how < 0.2:
                ops.append(Op(group, ("cleanup",)))  # every project: meets locks held by others
            elif how < 0.5:
                ops.append(Op(group, ("cleanup", *target)))
            elif how < 0.8:
                ops.append(Op(group, ("cleanup", *target, "--force")))
            else:
                slot = rng.choice(("blue", "green"))
                ops.append(Op(group, ("cleanup", *target, "--force", "--slot", slot)))
        elif group == "status":
            shown = rng.choice(((), ("--json",)))
            ops.append(Op(group, ("status", *(target if rng.random() < 0.5 else ()), *shown)))
        elif group == "ports":
            ops.append(Op(group, ("ports", *rng.choice(((), ("--json",))))))
        else:
            ops.append(Op(group, rng.choice((
                ("deploy", "Bad_Name!", "--image", f"{IMAGE}:v1", "--env", env),
                ("promote", project, "--env", "qa"),
                ("rollback", "x" * 41, "--env", env),  # 40 characters at most
                ("status", "--env", "nowhere"),
                ("cleanup", project, "--env", env, "--force", "--slot", "purple"),
                ("cleanup", "--slot", "blue"),
                ("deploy", project, "--env", env, "--image", "no such image;rm"),
            )), expect=2))
    return ops


def config_data(root: Path, admin_port: int, http_port: int, low: int) -> dict:
    # Port ranges of its own (below the ephemeral range) so that the demo, the tests and other
    # benches on the default ranges are never in the way; 100 ports per environment.
    envs = {}
    for i, (name, short) in enumerate((("production", "prod"), ("staging", "stg"),
                                       ("preview", "pv"))):
        envs[name] = {"ports": [low + 100 * i, low + 100 * i + 99],
                      "domain": f"{{project}}.{short}.soak.test",
                      "preview_domain": f"{{slot}}.{{project}}.{short}-preview.soak.test"}
    return {
        "registry": {"root": str(root / "registry")},
        "environments": envs,
        "docker": {"endpoint": os.environ["DOCKER_HOST"], "stop_timeout": 2},
        "caddy": {"admin": f"http://127.0.0.1:{admin_port}", "listen": f"127.0.0.1:{http_port}",
                  "config_dir": str(root / "caddy")},
        # Short health timeout: an unhealthy deploy holds its lock this long, every one of them.
        "health": {"timeout": 5, "interval": 0.1, "request_timeout": 1},
        "database": {"sqlite_path": str(root / "codeb.sqlite3")},
        # 36 s of grace: plain `cleanup` (no --force) finds expired slots too.
        "grace_hours": 0.01,
    }


class Runner:
    """Runs codeb processes for the worker threads and can interrupt the ones under way."""

    def __init__(self, config_file: Path) -> None:
        self.base = [sys.executable, "-m", "codeb_tui.cli", "--config", str(config_file)]
        # CODEB_* variables override config keys: the bench's config must be the whole truth.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CODEB_")}
        self.running: set[subprocess.Popen] = set()
        self.lock = threading.Lock()

    def run(self, op: Op) -> Outcome:
        started = time.perf_counter()
        proc = subprocess.Popen([*self.base, *op.args], cwd=REPO, env=self.env, text=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        with self.lock:
            self.running.add(proc)
        try:
            out, err = proc.communicate(timeout=OP_TIMEOUT_S)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            code = None
        finally:
            with self.lock:
                self.running.discard(proc)
        return Outcome(op, code, out, err, time.perf_counter() - started)

    def interrupt(self) -> None:
        with self.lock:
            for proc in self.running:
                proc.send_signal(signal.SIGINT)  # codeb exits 130; the kernel frees its locks


def soak(runner: Runner, ops: list[Op], workers: int, seconds: float) -> tuple[list[Outcome], float, float]:
    todo: queue.Queue[Op] = queue.Queue()
    for op in ops:
        todo.put(op)
    done: list[Outcome] = []
    deadline = time.monotonic() + seconds
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                op = todo.get_nowait()
            except queue.Empty:
                return
            done.append(runner.run(op))  # list.append is atomic

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    cpu0 = children_cpu()
    started = time.perf_counter()
    for t in threads:
        t.start()
    shown = time.monotonic()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)  # a plain join() would hold Ctrl-C off until the thread ends
                if time.monotonic() - shown >= 30:  # a sign of life during a long run
                    shown = time.monotonic()
                    print(f"  {len(done)} operations in {time.perf_counter() - started:.0f} s",
                          flush=True)
    except KeyboardInterrupt:
        stop.set()
        runner.interrupt()
        for t in threads:
            t.join(OP_TIMEOUT_S)
        raise
    return done, time.perf_counter() - started, children_cpu() - cpu0


def children_cpu() -> float:
    """CPU seconds of the codeb processes that have ended: ops/s means little without it on a
    machine shared with other work."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- checks ------------------------------------------------------------------------------------


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    by_operation: dict[str, list[str]] = field(default_factory=dict)
    """Operations' violations, grouped by what went wrong (the commands that showed it)."""

    def operation_violation(self, what: str, command: str) -> None:
        self.violations.append(what)
        self.by_operation.setdefault(what, []).append(command)

    def violation_lines(self) -> list[str]:
        """Each violation once; one that many operations showed alike names three of them."""
        lines = [f"  - {v}" for v in self.violations if v not in self.by_operation]
        for what, commands in self.by_operation.items():
            shown = ", ".join(f"`codeb {c}`" for c in commands[:3])
            more = f" and {len(commands) - 3} more" if len(commands) > 3 else ""
            times = f"{len(commands)} x " if len(commands) > 1 else ""
            lines.append(f"  - {times}{what}: {shown}{more}")
        return lines

    def add(self, label: str, value: str) -> None:
        self.lines.append(f"{label:<34}{value}")


def short(text: str) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines())[-300:]


def problem(o: Outcome) -> str | None:
    """What is wrong with one operation's exit code and output, if anything."""
    lines = [line for line in o.stderr.splitlines() if line.strip()]
    if o.code is None:
        return f"still ran after {OP_TIMEOUT_S:g} s; killed"
    if "Traceback" in o.stderr or "Traceback" in o.stdout:
        return f"Traceback (exit {o.code}): {short(o.stderr or o.stdout)}"
    if o.code not in (0, 1, 2):
        return f"exit {o.code}: {short(o.stderr)}"
    if o.op.expect is not None and o.code != o.op.expect:
        return f"exit {o.code}, expected {o.op.expect}: {short(o.stderr)}"
    if o.code == 0:
        if any(not line.startswith("warning: ") for line in lines):
            return f"success, yet stderr holds more than warnings: {short(o.stderr)}"
        if "--json" in o.op.args:
            try:
                json.loads(o.stdout)
            except ValueError:
                return f"printed no JSON: {short(o.stdout)}"
        return None
    if len(lines) != 1 or not lines[0].startswith("codeb: "):
        return f"exit {o.code} with {len(lines)} stderr lines, not one `codeb: ` line: {short(o.stderr)}"
    if kind_of(lines[0]) == "internal error":
        return lines[0]
    return None


def check_outputs(done: list[Outcome], report: Report) -> tuple[collections.Counter, collections.Counter]:
    """Exit codes and the shape of stderr; returns (failures by (kind, code), warnings by kind)."""
    kinds: collections.Counter = collections.Counter()
    warnings: collections.Counter = collections.Counter()
    for o in done:
        lines = o.stderr.splitlines()
        warnings.update(kind_of(line) for line in lines if line.startswith("warning: "))
        if o.code in (1, 2) and lines and lines[-1].startswith("codeb: "):
            kinds[(kind_of(lines[-1]), o.code)] += 1
        if (wrong := problem(o)) is not None:
            report.operation_violation(wrong, " ".join(o.op.args))
    tracebacks = sum("Traceback" in o.stderr + o.stdout for o in done)
    report.add("stderr as specified", f"{sum(problem(o) is None for o in done)} of {len(done)} "
                                      f"operations; Tracebacks: {tracebacks}")
    return kinds, warnings


def check_registry(root: Path, config: dict, report: Report) -> list:
    """Registry files parse with codeb's reader, and the port book holds. Returns the pairs."""
    registry = FileRegistry(root)
    ranges = {Environment(name): tuple(env["ports"]) for name, env in config["environments"].items()}
    problems = report.violations
    try:
        ssot = registry.read_ssot()
    except RegistryCorrupt as exc:
        problems.append(f"ssot.json: {exc}")
        return []
    try:
        registry.read_all()
    except RegistryCorrupt as exc:
        problems.append(f"read_all: {exc}")
    pairs = []
    for project, env in registry.list_slot_files():
        try:
            pair = registry.read_slots(project, env)
        except RegistryCorrupt as exc:
            problems.append(f"slot file of {project} ({env.value}): {exc}")
            continue
        if pair is not None:
            pairs.append(pair)
    # A temporary file left beside the registry means a write was cut half way.
    stray = [p.name for d in (registry.root, registry.slots_dir) if d.is_dir()
             for p in d.iterdir() if p.is_file() and p.name.endswith(".tmp")]
    problems.extend(f"temporary file left in the registry: {name}" for name in stray)
    report.add("registry files", f"{len(pairs)} slot files and ssot.json read by FileRegistry"
                                 f"{'' if not stray else f'; {len(stray)} stray temp files'}")

    holders: dict[int, list[str]] = collections.defaultdict(list)
    for pair in pairs:
        where = f"{pair.project} ({pair.environment.value})"
        low, high = ranges[pair.environment]
        blue, green = pair.blue.port, pair.green.port
        if blue % 2 or green != blue + 1:
            problems.append(f"{where}: blue {blue}, green {green} (blue even, green blue+1)")
        for slot in pair.slots():
            holders[slot.port].append(f"{where} {slot.name.value}")
            if not low <= slot.port <= high:
                problems.append(f"{where} {slot.name.value}: port {slot.port} outside {low}-{high}")
            owner = ssot.allocated.get(slot.port)
            if owner != pair.project:
                problems.append(f"{where} {slot.name.value}: port {slot.port} is allocated to "
                                f"{owner!r} in ssot.json")
    twice = {port: who for port, who in holders.items() if len(who) > 1}
    problems.extend(f"port {port} held by {', '.join(who)}" for port, who in sorted(twice.items()))
    by_port = {pair_port: pair for pair in pairs for pair_port in (pair.blue.port, pair.green.port)}
    leaked = []
    for port, owner in sorted(ssot.allocated.items()):
        pair = by_port.get(port)
        if pair is None or pair.project != owner:
            leaked.append(port)
            problems.append(f"ssot.json allocates port {port} to {owner!r}, but no slot file of "
                            f"{owner!r} holds it")
    report.add("ports allocated twice", str(len(twice)))
    report.add("ports in ssot.json", f"{len(ssot.allocated)} ({len(leaked)} held by no slot "
                                     f"file of their owner); slot files hold {len(holders)}")
    return pairs


def reconcile(runner: Runner, prefix: str, report: Report) -> None:
    # Scoped to this run's projects: --prune must never touch another registry's containers.
    out = runner.run(Op("reconcile", ("reconcile", "--repair", "--prune", "--json", f"{prefix}-*")))
    if "Traceback" in out.stderr:
        report.violations.append(f"Traceback from codeb reconcile: {short(out.stderr)}")
    try:
        summary = json.loads(out.stdout)["summary"]
    except (ValueError, KeyError, TypeError):
        report.violations.append(f"codeb reconcile exited {out.code} without a JSON report: "
                                 f"{short(out.stderr)}")
        return
    kinds = ", ".join(f"{k} {v}" for k, v in summary["by_kind"].items()) or "none"
    state = "in sync" if summary["in_sync"] else "NOT in sync"
    report.add("reconcile --repair --prune", f"{state} (exit {out.code}): drift {summary['drift']} "
                                             f"({kinds}), fixed {summary['fixed']}")
    if not summary["in_sync"]:
        report.violations.append(f"reconcile --repair --prune is not in sync: {short(out.stdout)}")


def ours(client: docker.DockerClient, prefix: str) -> list:
    """This run's containers (Docker filters labels by exact value only, hence the loop)."""
    return [c for c in client.containers.list(all=True, filters={"label": LABEL_PROJECT})
            if c.labels.get(LABEL_PROJECT, "").startswith(prefix + "-")]


def check_containers(client: docker.DockerClient, prefix: str, pairs: list, report: Report) -> None:
    """After the prune, exactly the containers the slot files name remain."""
    names = {c.name for c in ours(client, prefix)}
    expected = {s.container_name for p in pairs for s in p.slots() if s.container_name}
    report.add("containers after reconcile", f"{len(names)} (slot files name {len(expected)})")
    for name in sorted(names ^ expected):
        why = "not named by any slot file" if name in names else "named by a slot file but absent"
        report.violations.append(f"container {name}: {why}")


# --- the report --------------------------------------------------------------------------------


def outcome_table(done: list[Outcome]) -> list[str]:
    rows = collections.defaultdict(list)
    for o in done:
        rows[o.op.group].append(o)
        if o.op.tag:
            rows[f"  :{o.op.tag}"].append(o)
    rows["total"] = list(done)
    lines = [f"{'command':<12}{'ops':>6}{'exit 0':>8}{'exit 1':>8}{'exit 2':>8}{'other':>7}"
             f"{'median s':>10}{'max s':>8}"]
    order = [g for group in WEIGHTS
             for g in [group, *(f"  :{t}" for t in TAGS if group == "deploy")]]
    for group in [*order, "total"]:
        got = rows.get(group)
        if not got:
            continue
        codes = collections.Counter(o.code for o in got)
        other = len(got) - codes[0] - codes[1] - codes[2]
        times = [o.seconds for o in got]
        lines.append(f"{group:<12}{len(got):>6}{codes[0]:>8}{codes[1]:>8}{codes[2]:>8}{other:>7}"
                     f"{statistics.median(times):>10.2f}{max(times):>8.2f}")
    return lines


def kind_table(kinds: collections.Counter, warnings: collections.Counter) -> list[str]:
    lines = [f"{'failures and refusals by kind':<34}{'exit 1':>8}{'exit 2':>8}"]
    for kind in [k for k, _ in KINDS] + ["other"]:
        one, two = kinds[(kind, 1)], kinds[(kind, 2)]
        if one or two:
            lines.append(f"  {kind:<32}{one:>8}{two:>8}")
    shown = ", ".join(f"{k} {v}" for k, v in warnings.most_common()) or "none"
    lines.append(f"{'warning lines (on any exit)':<34}{sum(warnings.values())} ({shown})")
    return lines


def examples_of_other(done: list[Outcome]) -> list[str]:
    """Messages no kind names: shown so that a new kind of failure is seen, not just counted."""
    seen = {}
    for o in done:
        for line in o.stderr.splitlines():
            if line.startswith(("codeb: ", "warning: ")) and kind_of(line) == "other":
                seen.setdefault(line.split(":", 2)[-1].strip()[:60], line.strip())
    return [f"  other: {line[:200]}" for line in list(seen.values())[:5]]


# --- the run -----------------------------------------------------------------------------------


def remove_containers(client: docker.DockerClient, prefix: str) -> int:
    removed = 0
    for c in ours(client, prefix):
        try:
            c.remove(force=True)
            removed += 1
        except docker.errors.NotFound:
            pass
    return removed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=8, help="codeb processes at once")
    parser.add_argument("--operations", type=int, default=300)
    parser.add_argument("--projects", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=None, help="replays the same operations")
    args = parser.parse_args()
    need_services()
    seed = args.seed if args.seed is not None else secrets.randbelow(10**6)
    prefix = f"soak{secrets.token_hex(3)}"
    projects = [f"{prefix}-p{i}" for i in range(args.projects)]
    ops = plan(random.Random(seed), args.operations, projects)

    root = Path(tempfile.mkdtemp(prefix="codeb-soak-"))
    # bench.switch's Caddy starter on free ports rather than its fixed ones: a soak must not
    # share (or take over) the admin port of a switch or deploy bench running meanwhile.
    bench.switch.ADMIN_PORT = admin_port = free_port()
    http_port = free_port()
    config = config_data(root, admin_port, http_port, 28000 + 400 * secrets.randbelow(10))
    config_file = root / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    client = docker.DockerClient(base_url=os.environ["DOCKER_HOST"])
    runner = Runner(config_file)
    caddy: subprocess.Popen | None = None
    interrupted = False
    try:
        caddy = start_caddy(root)
        if caddy.poll() is not None:
            raise SystemExit(f"caddy exited at once (admin port {admin_port} taken?)")
        print(f"soak: {args.processes} processes, {len(ops)} operations, {args.projects} projects "
              f"x {len(ENVS)} environments (prefix {prefix}, seed {seed}), bound {args.seconds:g} s",
              flush=True)
        done, elapsed, cpu = soak(runner, ops, args.processes, args.seconds)

        report = Report()
        bound = "operation count" if len(done) == len(ops) else f"{args.seconds:g} s"
        print(f"elapsed {elapsed:.1f} s, {len(done)} operations ({len(done) / elapsed:.2f} per s), "
              f"stopped by the {bound}")
        print(f"codeb CPU {cpu / max(len(done), 1):.2f} s per operation, {cpu / elapsed:.2f} cores "
              f"in use; load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print("\n".join(outcome_table(done)))
        kinds, warnings = check_outputs(done, report)
        print("\n".join(kind_table(kinds, warnings) + examples_of_other(done)))
        pairs = check_registry(root / "registry", config, report)
        reconcile(runner, prefix, report)
        check_containers(client, prefix, pairs, report)  # reconcile rewrites no slot file
        print("\n".join(report.lines))
        print(f"VIOLATIONS: {len(report.violations)}")
        for line in report.violation_lines():
            print(line)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        # A second Ctrl-C must not leave containers or a Caddy behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if caddy is not None:
            caddy.terminate()
        try:
            removed = remove_containers(client, prefix)
        finally:  # Caddy and the files go even if Docker fails
            client.close()
            if caddy is not None:
                try:
                    caddy.wait(10)
                except subprocess.TimeoutExpired:
                    caddy.kill()
            shutil.rmtree(root, ignore_errors=True)
        print(f"{'interrupted; ' if interrupted else ''}cleaned up: {removed} containers, "
              f"Caddy, {root}")


if __name__ == "__main__":
    main()
