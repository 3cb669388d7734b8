"""kill -9 at every step: the real `codeb --json` process SIGKILLed right after each event line.

For each scenario a complete, unkilled run first tells how many event lines it prints; then, for
every N from 1 to that count (and twice at fixed delays), a fresh project is prepared by unkilled
CLI runs and the scenario's command is killed right after its N-th line. After every kill:

  a. every registry file parses (FileRegistry.read_all / read_ssot raise on corruption);
  b. production (when there is one) answered every request of a client that retries nothing,
     from before the start until after the kill;
  c. a grace slot's container (by id) exists, runs the slot's image, and that image passed the
     health gate earlier in the scenario (never the one the killed run was deploying);
  d. one `codeb reconcile --repair --prune PROJECT` is in sync, and then no port of the project
     is in ssot.json without its slot file, no container of the project is unreferenced,
     stopped while referenced, or named other than its slot's name (no `-replaced` left over);
  e. the next operation succeeds and production answers the image it should.

Every kill point is recorded; the test fails at the end with a table and every failing point.

Isolation: kill points run on WORKERS threads, each with a registry, database, production port
range and Caddy of its own, one kill point at a time. A registry loads its whole config into its
Caddy, so two registries cannot share one; and any load (a new project, a repair) reloads Caddy,
which cuts connections (README), so another kill point's production client on the same Caddy
would see failures that are not its own. Worker 0 uses the session's Caddy.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker
import httpx
import pytest

from codeb_tui.domain.model import Environment, ProjectSlots, SlotState, container_name
from codeb_tui.registry.files import FileRegistry
from conftest import REPO, free_ports, image

PROD = Environment.PRODUCTION
WORKERS = 5
DELAYS_MS = (30, 120)
"""Timed kills, counted from the `started` line: the process spends its first ~350 ms importing,
so a delay counted from the spawn would always land before anything happens."""
AFTER_KILL_S = 0.3  # production keeps being watched this long after the killed process is gone
DOCKER_SETTLE_S = 1.5
"""A process killed inside a step that sends Docker requests may die with one in flight: the
daemon still carries it out (a container is created after its client is gone, a second later
on a loaded machine). The checks wait that long first, as an operator's reconcile would come
after it: otherwise what they see depends on the daemon's speed, not on codeb."""
DOCKER_STEPS = ("stop previous container", "start container", "pull image")


# --- scenarios ---------------------------------------------------------------------------------

Command = tuple[str, ...]  # a CLI command with the project left out: ("deploy", "--image", ref)


def deploy(tag: str, yes: bool = False) -> Command:
    return ("deploy", "--image", image(tag)) + (("--yes",) if yes else ())


PROMOTE: Command = ("promote",)
LIVE_V1 = (deploy("v1"), PROMOTE)
V2_LIVE_V1_GRACE = LIVE_V1 + (deploy("v2"), PROMOTE)


def tag_of(ref: str | None) -> str:
    return (ref or "").rsplit(":", 1)[-1]


def shown(command: Command) -> str:
    return " ".join(tag_of(a) if "/" in a else a for a in command)


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    prepare: tuple[Command, ...]
    killed: Command
    next_ops: Callable[[ProjectSlots | None], tuple[list[Command], str]]
    """From the slot file after reconcile: the commands to run next, and the image tag
    production must answer afterwards."""
    no_grace_after: bool = False

    @property
    def live(self) -> bool:
        return PROMOTE in self.prepare

    @property
    def passed_gate(self) -> set[str]:
        """Images deployed successfully before the killed run: the only rollback targets."""
        return {c[2] for c in self.prepare if c[0] == "deploy"}


def _promote_or_redeploy(pair: ProjectSlots | None) -> tuple[list[Command], str]:
    if pair is not None and pair.in_state(SlotState.DEPLOYED) is not None:
        return [PROMOTE], "v2"
    return [deploy("v2", yes=True), PROMOTE], "v2"


def _roll_back(pair: ProjectSlots | None) -> tuple[list[Command], str]:
    grace = pair.in_state(SlotState.GRACE) if pair is not None else None
    return [("rollback",)], tag_of(grace.image) if grace else "v1"


SCENARIOS = [
    Scenario("s1", "deploy of a new project", (), deploy("v1"),
             lambda pair: ([deploy("v1"), PROMOTE], "v1")),
    Scenario("s2", "deploy into the idle slot", LIVE_V1, deploy("v2"),
             lambda pair: ([deploy("v2"), PROMOTE], "v2")),
    Scenario("s3", "deploy --yes into the grace slot", V2_LIVE_V1_GRACE, deploy("v3", yes=True),
             lambda pair: ([deploy("v3", yes=True), PROMOTE], "v3")),
    Scenario("s4", "promote", LIVE_V1 + (deploy("v2"),), PROMOTE, _promote_or_redeploy),
    Scenario("s5", "rollback", V2_LIVE_V1_GRACE, ("rollback",), _roll_back),
    Scenario("s6", "cleanup --force of a grace slot", V2_LIVE_V1_GRACE, ("cleanup", "--force"),
             lambda pair: ([("cleanup", "--force")], "v2"), no_grace_after=True),
]


def argv(command: Command, project: str) -> list[str]:
    return [command[0], project, *command[1:]]


@dataclass(frozen=True)
class KillPoint:
    after_line: int | None = None
    after_ms: int | None = None

    @property
    def label(self) -> str:
        return f"N={self.after_line}" if self.after_line else f"+{self.after_ms}ms"

    @property
    def slug(self) -> str:
        return f"n{self.after_line}" if self.after_line else f"t{self.after_ms}"


# --- one worker's world ------------------------------------------------------------------------


FORK_SERVER = """
import json, os, sys, traceback
from codeb_tui.cli import main  # the imports every run needs, paid once

for request in sys.stdin:
    args, out, err = json.loads(request)
    pid = os.fork()
    if pid == 0:
        for fd, path in ((1, out), (2, err)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        try:
            code = main(args)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class CliServer:
    """The unkilled CLI runs: `codeb_tui.cli.main(argv)`, what `python -m codeb_tui.cli` runs,
    each in a process forked from one that has imported codeb once. A fresh interpreter spends
    ~0.5 s of CPU on imports alone, and the ~600 unkilled runs would then need most of the time
    budget of this 2-core machine. Killed runs are always real `python -m codeb_tui.cli`."""

    TIMEOUT_S = 60.0

    def __init__(self, folder: Path) -> None:
        self.out, self.err = folder / "cli.out", folder / "cli.err"
        self.proc = self._start()

    @staticmethod
    def _start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", FORK_SERVER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, cwd=REPO,
                                start_new_session=True)

    def run(self, args: list[str]) -> subprocess.CompletedProcess:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps([args, str(self.out), str(self.err)]) + "\n")
        self.proc.stdin.flush()
        if not select.select([self.proc.stdout], [], [], self.TIMEOUT_S)[0]:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server and the run it forked
            self.proc.wait()
            self.proc = self._start()
            raise TimeoutError(f"codeb {' '.join(args)} did not end within {self.TIMEOUT_S:g} s")
        code = int(self.proc.stdout.readline())
        return subprocess.CompletedProcess(args, code, self.out.read_text(), self.err.read_text())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


@dataclass
class Worker:
    config: Path
    root: Path
    http_port: int
    docker: docker.DockerClient
    server: CliServer

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return self.server.run([*args, "--config", str(self.config)])

    def registry(self) -> FileRegistry:
        return FileRegistry(self.root)

    def containers(self, project: str) -> list:
        """The project's containers by label and by name (a container without labels would
        escape a label filter)."""
        found = {c.id: c for c in self.docker.containers.list(
            all=True, filters={"label": f"codeb.project={project}"})}
        found.update({c.id: c for c in self.docker.containers.list(
            all=True, filters={"name": f"codeb-{project}-"})})
        return list(found.values())

    def get(self, host: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.http_port}/", headers={"Host": host},
                         timeout=5, trust_env=False)


@contextlib.contextmanager
def private_caddy(folder: Path):
    """A Caddy of one worker's own, admin and listener on free loopback ports."""
    admin, listen = free_ports(2)
    folder.mkdir(parents=True)
    boot = folder / "boot.json"
    boot.write_text(json.dumps({"admin": {"listen": f"127.0.0.1:{admin}"}}))
    env = {**os.environ, "XDG_CONFIG_HOME": str(folder), "XDG_DATA_HOME": str(folder)}
    with open(folder / "caddy.log", "w") as log:
        proc = subprocess.Popen([shutil.which("caddy") or "/usr/bin/caddy", "run", "--config",
                                 str(boot)], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            for _ in range(150):
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{admin}/config/", timeout=1,
                                 trust_env=False).status_code == 200:
                        break
                time.sleep(0.1)
            else:
                pytest.fail(f"caddy did not start: {(folder / 'caddy.log').read_text()[-2000:]}")
            yield {"admin": f"http://127.0.0.1:{admin}", "listen": f"127.0.0.1:{listen}"}
        finally:
            proc.kill()  # nothing of it outlives the test: its config is in the test's tmp dir
            proc.wait()


# --- production under watch --------------------------------------------------------------------


class ProductionClient:
    """GET / on the production host through Caddy about 100 times a second from a thread,
    retrying nothing: a non-2xx answer or a connection error is a failure. Requests alternate
    between a kept-alive connection (a reload cuts it) and a fresh one (a closed or missing
    listener refuses it)."""

    LIMIT_S = 60.0  # bounded even if the test forgets to stop it

    def __init__(self, port: int, host: str) -> None:
        self.url, self.host = f"http://127.0.0.1:{port}/", host
        self.sent = 0
        self.failures: list[tuple[float, str]] = []  # (time.monotonic(), what)
        self._stop = threading.Event()
        self._answered = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        def client(keepalive: int) -> httpx.Client:
            limits = httpx.Limits(max_keepalive_connections=keepalive)
            return httpx.Client(transport=httpx.HTTPTransport(retries=0, limits=limits),
                                timeout=5, trust_env=False, headers={"Host": self.host})

        deadline = time.monotonic() + self.LIMIT_S
        with client(1) as kept, client(0) as fresh:
            while not self._stop.is_set() and time.monotonic() < deadline:
                sent_at = time.monotonic()
                which = (kept, "keep-alive") if self.sent % 2 == 0 else (fresh, "fresh")
                self.sent += 1
                try:
                    status = which[0].get(self.url).status_code
                    if not 200 <= status < 300:
                        self.failures.append((sent_at, f"{which[1]}: HTTP {status}"))
                except httpx.HTTPError as exc:
                    self.failures.append((sent_at, f"{which[1]}: {type(exc).__name__}: {exc}"[:120]))
                else:
                    self._answered.set()
                time.sleep(0.01)

    def __enter__(self) -> "ProductionClient":
        self._thread.start()
        if not self._answered.wait(5):  # reported with the failures, the run goes on
            self.failures.insert(0, (time.monotonic(), "no answer before the run"))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- the killed run ----------------------------------------------------------------------------


@dataclass
class KilledRun:
    lines: list[str]  # every event line the process printed, in order
    seen_at_kill: int | None  # how many the test had read when it sent SIGKILL
    returncode: int
    stderr: str
    killed_at: float  # time.monotonic()

    @property
    def was_killed(self) -> bool:
        return self.returncode == -9

    def last_seen(self) -> str:
        n = self.seen_at_kill if self.was_killed else len(self.lines)
        return f"#{n} {describe(self.lines[n - 1])}" if n else "(no line yet)"

    def open_steps(self) -> set[str]:
        """The steps the process had started and not finished when it died."""
        steps: set[str] = set()
        for line in self.lines:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == "step_started":
                    steps.add(event["step"])
                elif event.get("event") == "step_finished":
                    steps.discard(event["step"])
        return steps


def describe(line: str) -> str:
    """An event line in a few words: its kind and step, message or summary."""
    try:
        event = json.loads(line)
    except ValueError:
        return line[:90]
    what = next((str(event[k]) for k in ("step", "message", "summary", "error", "detail")
                 if event.get(k)), "")
    ok = {True: " ok", False: " FAILED"}.get(event.get("ok"), "")
    return f"{event.get('event')} {what}{ok}"[:110]


def run_killed(worker: Worker, command: Command, project: str, kill: KillPoint) -> KilledRun:
    cmd = [sys.executable, "-m", "codeb_tui.cli", "--json", *argv(command, project),
           "--config", str(worker.config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    lines: list[str] = []
    seen_at_kill: list[int] = []
    killed_at: list[float] = []

    def kill_now() -> None:
        seen_at_kill.append(len(lines))
        killed_at.append(time.monotonic())
        proc.kill()  # SIGKILL; a no-op once the process has been reaped

    timer = None
    assert proc.stdout is not None and proc.stderr is not None
    for raw in proc.stdout:  # one event per line, flushed by the CLI as it happens
        lines.append(raw.decode().rstrip("\n"))
        if kill.after_line == len(lines):
            kill_now()
            break
        if kill.after_ms is not None and timer is None:
            timer = threading.Timer(kill.after_ms / 1000, kill_now)
            timer.start()
    lines += proc.stdout.read().decode().splitlines()  # printed before the kill landed
    stderr = proc.stderr.read().decode()
    proc.wait()
    if timer is not None:
        timer.cancel()
    return KilledRun(lines, seen_at_kill[0] if seen_at_kill else None, proc.returncode, stderr,
                     killed_at[0] if killed_at else time.monotonic())


# --- evidence ----------------------------------------------------------------------------------


def slots_text(worker: Worker, project: str) -> str:
    try:
        pair = worker.registry().read_slots(project, PROD)
    except Exception as exc:  # noqa: BLE001 - the evidence is the error itself
        return f"slot file unreadable: {exc}"
    if pair is None:
        return "no slot file"
    return "; ".join(f"{s.name.value} {s.state.value} {tag_of(s.image) or '-'} "
                     f"{(s.container_id or '-')[:12]} port {s.port}" for s in pair.slots())


def containers_text(worker: Worker, project: str) -> str:
    found = worker.containers(project)
    return "; ".join(sorted(f"{c.name} {c.status} {tag_of(c.attrs['Config']['Image'])} "
                            f"{c.id[:12]}" for c in found)) or "no container"


def state_text(worker: Worker, project: str) -> str:
    return f"[slots: {slots_text(worker, project)}] [containers: {containers_text(worker, project)}]"


# --- the invariants ----------------------------------------------------------------------------


def check_files(worker: Worker) -> str | None:
    """a: every registry file parses."""
    try:
        registry = worker.registry()
        registry.read_all()
        registry.read_ssot()
    except Exception as exc:  # noqa: BLE001 - RegistryCorrupt or worse, both are the finding
        return f"{type(exc).__name__}: {exc}"
    return None


def check_production(client: ProductionClient, run: KilledRun) -> str | None:
    """b: zero failed requests."""
    if not client.failures:
        return None
    first = ", ".join(f"{at - run.killed_at:+.2f}s {what}" for at, what in client.failures[:4])
    return (f"{len(client.failures)} of {client.sent} requests failed (time relative to the "
            f"kill): {first}")


def check_grace(worker: Worker, project: str, passed_gate: set[str]) -> str | None:
    """c: the rollback target is the container of an image that passed the gate. Right after a
    kill it may be stopped (a deploy into the grace slot stopped it before the kill): a rollback
    to it is then refused as unhealthy, never sent to another image, and d checks that one
    reconcile starts it again."""
    pair = worker.registry().read_slots(project, PROD)
    for slot in pair.slots() if pair else ():
        if slot.state is not SlotState.GRACE:
            continue
        where = f"grace slot {slot.name.value} ({tag_of(slot.image)})"
        if slot.image not in passed_gate:
            return (f"{where}: {slot.image} never passed the health gate in this scenario "
                    f"(passed: {sorted(tag_of(i) for i in passed_gate)})")
        try:
            found = worker.docker.containers.get(slot.container_id or "-")
        except docker.errors.NotFound:
            return f"{where}: its container {slot.container_id} does not exist"
        held = found.attrs["Config"]["Image"]
        if held != slot.image:
            return f"{where}: its container {found.name} ({found.status}) holds {held}"
    return None


def reconcile(worker: Worker, project: str) -> str | None:
    """d, first half: one repair + prune brings the project in sync."""
    out = worker.cli("reconcile", "--repair", "--prune", project, "--json")
    try:
        report = json.loads(out.stdout)
    except ValueError:
        return f"exit {out.returncode}, no JSON: {out.stdout[-300:]} {out.stderr[-300:]}"
    summary = report["summary"]
    if out.returncode == 0 and summary["in_sync"]:
        return None
    left = [f"{d['kind']}: {d['detail']}" for d in report["drift"] if not d["fixed"]]
    return (f"reconcile exit {out.returncode}, in_sync {summary['in_sync']}, busy "
            f"{summary['busy']}, errors {summary['errors']}, left: {left}")


def check_leftovers(worker: Worker, project: str) -> str | None:
    """d, second half: no leaked port, orphan, stopped referenced or temporary container."""
    registry = worker.registry()
    pair = registry.read_slots(project, PROD)
    problems = []
    mine = sorted(p for p, owner in registry.read_ssot().allocated.items() if owner == project)
    leaked = [p for p in mine if pair is None or p not in pair.ports]
    if leaked:
        problems.append(f"ports {leaked} in ssot.json without a slot file holding them")
    slots = {s.container_id: s for s in pair.slots()
             if s.state is not SlotState.EMPTY} if pair else {}
    containers = {c.id: c for c in worker.containers(project)}
    for cid, slot in slots.items():
        found = containers.get(cid or "")
        if found is None or found.status != "running":
            problems.append(f"{slot.name.value} ({slot.state.value}) names container "
                            f"{(cid or '-')[:12]}, which is {found.status if found else 'absent'}")
    for cid, found in containers.items():
        slot = slots.get(cid)
        if slot is None:
            problems.append(f"orphan container {found.name} ({found.status})")
        elif found.name != container_name(project, PROD, slot.name):
            problems.append(f"container {found.name} of slot {slot.name.value} has a temporary name")
    return "; ".join(problems) or None


def check_next(worker: Worker, scenario: Scenario, project: str) -> str | None:
    """e: the next operation succeeds and production answers the expected image."""
    commands, expected = scenario.next_ops(worker.registry().read_slots(project, PROD))
    for command in commands:
        out = worker.cli(*argv(command, project))
        if out.returncode != 0:
            return f"`{shown(command)}` exit {out.returncode}: {out.stderr.strip()}"
    answers = [worker.get(f"{project}.prod.test") for _ in range(3)]
    wrong = [f"{r.status_code} {r.text.strip()[:40]}" for r in answers
             if r.status_code != 200 or not r.text.startswith(f"healthy {expected} ")]
    if wrong:
        return f"production should answer {expected}, answered: {wrong}"
    pair = worker.registry().read_slots(project, PROD)
    if scenario.no_grace_after and pair is not None and pair.in_state(SlotState.GRACE):
        return f"a grace slot is left after `{shown(commands[-1])}`"
    return None


# --- one kill point ----------------------------------------------------------------------------


@dataclass
class Outcome:
    scenario: Scenario
    kill: KillPoint
    project: str
    last_seen: str = "-"
    note: str = ""
    failed: dict[str, str] = field(default_factory=dict)

    def check(self, invariant: str, problem: str | None, evidence: str = "") -> None:
        if problem:
            text = f"{problem} {evidence}".strip()
            self.failed[invariant] = (self.failed[invariant] + " | " + text
                                      if invariant in self.failed else text)


def prepare(worker: Worker, scenario: Scenario, project: str) -> str | None:
    for command in scenario.prepare:
        out = worker.cli(*argv(command, project))
        if out.returncode != 0:
            return f"preparing `{shown(command)}` failed ({out.returncode}): {out.stderr.strip()}"
    return None


def kill_point(worker: Worker, scenario: Scenario, kill: KillPoint, prefix: str) -> Outcome:
    project = f"{prefix}-{scenario.key}-{kill.slug}"
    outcome = Outcome(scenario, kill, project)
    try:
        problem = prepare(worker, scenario, project)
        if problem:
            outcome.check("prep", problem, state_text(worker, project))
            return outcome
        with (ProductionClient(worker.http_port, f"{project}.prod.test") if scenario.live
              else contextlib.nullcontext()) as production:
            run = run_killed(worker, scenario.killed, project, kill)
            if production is not None:
                time.sleep(AFTER_KILL_S)
        outcome.last_seen = run.last_seen()
        if run.was_killed and any(step.endswith(DOCKER_STEPS) for step in run.open_steps()):
            time.sleep(DOCKER_SETTLE_S)
        if not run.was_killed:
            outcome.note = f"ended by itself (exit {run.returncode}) after {len(run.lines)} lines"
        elif len(run.lines) > (run.seen_at_kill or 0):
            outcome.note = f"printed up to #{len(run.lines)} before dying"
        after_kill = state_text(worker, project)
        outcome.check("a", check_files(worker), after_kill)
        if production is not None:
            outcome.check("b", check_production(production, run), after_kill)
        outcome.check("c", check_grace(worker, project, scenario.passed_gate), after_kill)
        problems = [p for p in (reconcile(worker, project), check_leftovers(worker, project)) if p]
        outcome.check("d", "; ".join(problems),
                      f"(after kill: {after_kill}; after reconcile: {state_text(worker, project)})")
        outcome.check("e", check_next(worker, scenario, project), state_text(worker, project))
        outcome.check("a", check_files(worker), "(at the end)")
    except Exception:  # noqa: BLE001 - one broken kill point must not hide the others
        outcome.check("error", traceback.format_exc(limit=4).strip().replace("\n", " / "))
    finally:
        remove_containers(worker, project)
    return outcome


def remove_containers(worker: Worker, project: str) -> None:
    """Done with a project: its containers go now, so that Docker stays lean for the rest."""
    for container in worker.containers(project):
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)


def measure(worker: Worker, scenario: Scenario, prefix: str) -> tuple[Scenario, int, str | None]:
    """How many event lines a complete run prints (and whether it succeeds at all)."""
    project = f"{prefix}-{scenario.key}-full"
    try:
        problem = prepare(worker, scenario, project)
        if problem:
            return scenario, 0, problem
        run = run_killed(worker, scenario.killed, project, KillPoint())
        if run.returncode != 0:
            return scenario, len(run.lines), f"the complete run failed ({run.returncode}): {run.stderr}"
        return scenario, len(run.lines), None
    except Exception:  # noqa: BLE001 - reported as a broken scenario
        return scenario, 0, traceback.format_exc(limit=4)
    finally:
        remove_containers(worker, project)


def on_workers(workers: list[Worker], tasks: list[Callable[[Worker], object]]) -> list:
    """Run the tasks on the workers, each worker one task at a time (its Caddy sees no other)."""
    pending: queue.Queue = queue.Queue()
    for task in tasks:
        pending.put(task)
    results: list = []

    def loop(worker: Worker) -> None:
        while True:
            try:
                task = pending.get_nowait()
            except queue.Empty:
                return
            results.append(task(worker))

    threads = [threading.Thread(target=loop, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def table(outcomes: list[Outcome]) -> str:
    rows = [("scenario", "kill", "last event line read before the kill", "result")]
    for o in outcomes:
        result = "ok" if not o.failed else "FAIL " + ",".join(sorted(o.failed))
        rows.append((f"{o.scenario.key} {o.scenario.title}", o.kill.label,
                     o.last_seen + (f" ({o.note})" if o.note else ""), result))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}"
                     for r in rows)


# --- the test ----------------------------------------------------------------------------------


@pytest.mark.timeout(600)  # one test for the whole matrix (about 3 min); a hang still ends
def test_kill_9_at_every_step(config_file, caddy, docker_host, prefix, tmp_path):
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        proxies = [caddy] + [stack.enter_context(private_caddy(tmp_path / f"caddy{i}"))
                             for i in range(1, WORKERS)]
        workers = []
        for i, proxy in enumerate(proxies):
            home = tmp_path / f"w{i}"
            home.mkdir()
            low = 6000 + 200 * i  # a production range per worker: no race for the same pair
            written = config_file(
                registry__root=str(home / "registry"),
                database__sqlite_path=str(home / "codeb.sqlite3"),
                caddy={**proxy, "config_dir": str(home / "caddy")},
                environments__production={"ports": [low, low + 199],
                                          "domain": "{project}.prod.test",
                                          "preview_domain": "{slot}.{project}.prod-preview.test"})
            config = written.rename(tmp_path / f"w{i}.yaml")
            client = stack.enter_context(contextlib.closing(docker.DockerClient(base_url=docker_host)))
            server = stack.enter_context(contextlib.closing(CliServer(home)))
            workers.append(Worker(config, home / "registry", int(proxy["listen"].rsplit(":", 1)[1]),
                                  client, server))

        measured = on_workers(workers, [lambda w, s=s: measure(w, s, prefix) for s in SCENARIOS])
        broken = [f"{s.key} {s.title}: {problem}" for s, _, problem in measured if problem]
        points = [(s, KillPoint(after_line=n)) for s, count, _ in measured
                  for n in range(1, count + 1)]
        points += [(s, KillPoint(after_ms=ms)) for s in SCENARIOS for ms in DELAYS_MS]
        # The longest preparations first, so that no worker is left with a long tail alone.
        points.sort(key=lambda p: -len(p[0].prepare))
        mid = time.monotonic()
        outcomes = on_workers(workers, [lambda w, s=s, k=k: kill_point(w, s, k, prefix)
                                        for s, k in points])

    order = {s.key: i for i, s in enumerate(SCENARIOS)}
    outcomes.sort(key=lambda o: (order[o.scenario.key], o.kill.after_line is None,
                                 o.kill.after_line or o.kill.after_ms or 0))
    elapsed = time.monotonic() - started
    counts = ", ".join(f"{s.key} {count}" for s, count, _ in sorted(measured, key=lambda m: order[m[0].key]))
    print(f"\n{table(outcomes)}\n\nevent lines of a complete run: {counts}; {len(outcomes)} kill "
          f"points on {WORKERS} workers; measured in {mid - started:.0f} s, all in {elapsed:.0f} s")
    failing = [f"{o.scenario.key} {o.kill.label} [{o.project}] after {o.last_seen}"
               + (f" ({o.note})" if o.note else "")
               + "".join(f"\n    {k}: {v}" for k, v in sorted(o.failed.items()))
               for o in outcomes if o.failed]
    assert not broken and not failing, (
        f"{len(failing)} of {len(outcomes)} kill points fail"
        + "".join(f"\ncomplete run broken: {b}" for b in broken)
        + "".join(f"\n{f}" for f in failing))
