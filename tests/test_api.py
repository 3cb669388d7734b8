"""`codeb serve` as CI meets it: a real server process on a free loopback port, real curl, the
real Docker, registry, Caddy and SQLite; keys made with the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from codeb_tui.api import models
from codeb_tui.api.app import ROUTES
from codeb_tui.api.errors import status_for
from codeb_tui.api.openapi import document
from codeb_tui.domain.proxy import build_caddy_config
from conftest import REGISTRY, REPO, config_dict, free_ports, image, locks_held_elsewhere, run_cli
from conftest import through_caddy

API_DOMAIN = "api.codeb.test"
SEED_CURL = """curl -X POST "https://api.codeb.kr/api/tool" \\
  -H "X-API-Key: $CODEB_API_KEY" \\
  -d '{
    "tool": "deploy",
    "params": {
      "projectName": "workb",
      "image": "64.176.226.119:5000/workb:sha"
    }
  }'"""


class Server:
    """A `codeb serve` process and the keys made for it."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log = config, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.keys: dict[str, str] = {}
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "codeb_tui.cli", "serve", "--config", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "w"), cwd=REPO)
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def cli(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return run_cli(*args, "--config", str(self.config), **kwargs)

    def make_keys(self, team: str, **roles: str) -> None:
        """Keys by name -> role (`member="member"`), with the CLI."""
        assert self.cli("team", "create", team).returncode == 0
        for name, role in roles.items():
            out = self.cli("apikey", "create", "--team", team, "--role", role)
            assert out.returncode == 0, out.stderr
            self.keys[name] = out.stdout.strip()

    def call(self, tool: str, key: str | None = "member", stream: bool = False,
             timeout: float = 60, **params) -> httpx.Response:
        headers = {"X-API-Key": self.keys.get(key, key)} if key else {}
        if stream:
            headers["Accept"] = "application/x-ndjson"
        return httpx.post(f"{self.url}/api/tool", json={"tool": tool, "params": params},
                          headers=headers, timeout=timeout, trust_env=False)

    def get(self, path: str, key: str | None = "member", **kwargs) -> httpx.Response:
        headers = {"X-API-Key": self.keys[key]} if key else {}
        return httpx.get(f"{self.url}{path}", headers=headers, timeout=30, trust_env=False,
                         **kwargs)

    def assert_no_key_logged(self) -> None:
        text = self.log.read_text()
        for key in self.keys.values():
            assert key.rsplit("_", 1)[1] not in text  # the secret part, anywhere


@pytest.fixture(scope="module")
def server(tmp_path_factory, caddy, docker_host, docker_client):
    """The module's server: every test below but the last two talks to it."""
    root = tmp_path_factory.mktemp("api")
    port = free_ports(1)[0]
    data = config_dict(root, caddy, docker_host,
                       api={"listen": f"127.0.0.1:{port}", "domain": API_DOMAIN,
                            "rate_limit_per_minute": 10_000},
                       health={"timeout": 3, "interval": 0.1, "request_timeout": 1},
                       docker={"endpoint": docker_host,
                               "registry_url": f"http://{REGISTRY}"})
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    srv = Server(config, port, root / "serve.log")
    srv.root = root
    srv.prefix = f"a{os.getpid() % 100000}"
    srv.make_keys("acme", member="member", viewer="viewer", admin="admin", revoked="member")
    assert srv.cli("apikey", "revoke", srv.keys["revoked"].split("_")[1]).returncode == 0
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.log.read_text()[-3000:]
    srv.assert_no_key_logged()
    for container in docker_client.containers.list(all=True, filters={"label": "codeb.project"}):
        if container.labels.get("codeb.project", "").startswith(srv.prefix):
            container.remove(force=True)


def ok(answer: httpx.Response, status: int = 200) -> dict:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["ok"] is True, body
    return body["result"]


def refused(answer: httpx.Response, status: int, words: str) -> dict:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["ok"] is False and words in body["error"], body
    return body


# --- the seed's call and the generated workflow --------------------------------------------------


def test_the_seed_curl_line_deploys_and_answers_the_preview_url(server, pushed):
    project = f"{server.prefix}-workb"
    ref = pushed(project, "3f2c1e0")
    line = (SEED_CURL.replace("https://api.codeb.kr", server.url)
            .replace('"workb"', f'"{project}"').replace("64.176.226.119:5000/workb:sha", ref))
    out = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "CODEB_API_KEY": server.keys["member"]})
    assert out.returncode == 0, out
    result = json.loads(out.stdout)["result"]
    assert result["image"] == ref and result["slot"] == "blue"
    assert result["previewUrl"].startswith(f"http://blue.{project}.prod-preview.test")
    host = result["previewUrl"].split("//")[1].split(":")[0]
    assert "healthy v1" in through_caddy(host).text
    # Caddy routes api.domain to the server (loaded with the first project), and the route is
    # no drift for reconcile.
    assert through_caddy(API_DOMAIN, "/healthz").json()["result"] == {"serving": True}
    report = ok(server.call("reconcile", projects=[project]))
    assert report["summary"]["in_sync"], report


def github_expressions(text: str, values: dict[str, str]) -> str:
    """What GitHub substitutes before the shell runs: `${{ secrets.X }}`, `${{ env.X }}`..."""
    return re.sub(r"\$\{\{\s*([\w.]+)\s*\}\}", lambda m: values[m.group(1)], text)


def test_the_generated_workflow_deploys_through_the_server(server, pushed, tmp_path):
    project = f"{server.prefix}-wf"
    path = tmp_path / "deploy.yml"
    out = server.cli("workflow", "init", project, "--api-url", server.url, "--output", str(path))
    assert out.returncode == 0, out.stderr
    again = server.cli("workflow", "init", project, "--output", str(path))
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--force" in again.stderr
    assert server.cli("workflow", "init", project, "--output", str(path),
                      "--force").returncode == 0
    flow = yaml.safe_load(path.read_text())
    job = flow["jobs"]["deploy"]
    build = next(s for s in job["steps"] if s.get("name") == "Build and push")["run"]
    assert "docker buildx build" in build and "--cache-from" in build and "--push" in build
    assert "${REGISTRY}/${PROJECT}:${{ github.sha }}" in build
    step = next(s for s in job["steps"] if "/api/tool" in s.get("run", ""))
    assert "curl --fail-with-body" in step["run"] and "X-API-Key: ${{ secrets.CODEB_API_KEY }}" \
        in step["run"] and "Content-Type: application/json" in step["run"]

    sha = "0123456789abcdef0123456789abcdef01234567"
    ref = pushed(project, sha)
    values = {"github.sha": sha, "secrets.CODEB_API_KEY": server.keys["member"],
              **{f"env.{k}": str(v) for k, v in job["env"].items()}}
    env = {**os.environ, **{k: str(v) for k, v in job["env"].items()},
           **{k: github_expressions(str(v), values) for k, v in step["env"].items()},
           "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}
    assert env["IMAGE"] == ref and env["CODEB_API_KEY"] == server.keys["member"]
    run = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c",
                          github_expressions(step["run"], values)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run
    preview = json.loads(run.stdout)["result"]["previewUrl"]
    assert preview in (tmp_path / "summary.md").read_text()
    slots = ok(server.get(f"/api/v1/projects/{project}/production"))["slots"]
    assert [(s["state"], s["image"]) for s in slots if s["slot"] == "blue"] == [("deployed", ref)]


# --- statuses and the engine's words --------------------------------------------------------------


def test_every_error_has_its_status_and_the_engines_words(server, docker_client):
    p = f"{server.prefix}-err"
    refused(server.call("slot_status", key=None), 401, "Access Denied: an API key is required")
    refused(server.call("slot_status", key="nope"), 401, "Access Denied: malformed API key")
    refused(server.call("slot_status", key="cb_aaaaaaaa_" + "A" * 32), 401, "unknown API key")
    refused(server.call("slot_status", key="revoked"), 401, "was revoked")
    refused(server.call("deploy", key="viewer", projectName=p, image=image("v1")), 403,
            "Access Denied: role viewer may not deploy")
    refused(server.call("cleanup", environment="production", projectName=p), 403,
            "Access Denied: role member may not cleanup in production")
    refused(server.call("deploy", projectName=p, image="img;rm -rf /"), 400,
            "Invalid image reference")
    refused(server.call("deploy", projectName=p, image=image("v1"), environment="qa"), 400,
            "Unknown environment 'qa'")
    refused(server.call("slot_status", projectName=p), 404, f"Unknown project {p}")
    refused(server.get(f"/api/v1/projects/{p}/production"), 404, "Run deploy first")
    refused(server.call("promote", projectName=p), 404, "Run deploy first")
    refused(server.call("rollback", projectName=p), 404, "No grace slot")
    refused(server.call("deploy", projectName=p, image=f"{REGISTRY}/demo/app:nope"), 502,
            "Image not found")
    refused(server.call("deploy", projectName=p, image=image("unhealthy")), 502,
            "Health check failed")

    live = ok(server.call("deploy", projectName=p, image=image("v1")))
    assert live["previewUrl"] and live["slot"] == "blue" and live["port"]
    promoted = ok(httpx.post(f"{server.url}/api/v1/projects/{p}/production/promote",
                             headers={"X-API-Key": server.keys["member"]}, timeout=30,
                             trust_env=False))
    assert promoted["productionUrl"].startswith(f"http://{p}.prod.test") and \
        promoted["slot"] == "blue"
    refused(server.call("promote", projectName=p), 409, "Run deploy first")
    refused(server.call("rollback", projectName=p), 409, "No grace slot")
    ok(server.call("deploy", projectName=p, image=image("v2")))
    ok(server.call("promote", projectName=p))  # v2 live on green, v1 in grace on blue
    docker_client.containers.get(f"codeb-{p}-prod-blue").stop(timeout=0)
    refused(server.call("rollback", projectName=p), 409, "Grace slot unhealthy")
    ok(server.call("deploy", projectName=p, image=image("v3"), confirmGrace=True))
    docker_client.containers.get(f"codeb-{p}-prod-blue").stop(timeout=0)
    refused(server.call("promote", projectName=p), 502, "Health Check Failed")

    with locks_held_elsewhere(server.root / "registry", 30, f"{p}-prod"):
        held = refused(server.call("deploy", projectName=p, image=image("v1")), 409,
                       "is locked: deploy by a colleague")
        assert re.search(r"by colleague \(pid \d+ on .+\) since \d{4}-", held["error"]), held

    body = json.dumps({"tool": "deploy", "params": {"projectName": p, "image": "x" * 70_000}})
    refused(httpx.post(f"{server.url}/api/tool", content=body, timeout=10, trust_env=False,
                       headers={"X-API-Key": server.keys["member"]}), 413, "too large")
    refused(httpx.post(f"{server.url}/api/tool", content=iter([body.encode()]), timeout=10,
                       trust_env=False, headers={"X-API-Key": server.keys["member"]}),
            413, "too large")  # chunked: no Content-Length to go by
    refused(httpx.post(f"{server.url}/api/tool", content=b'{"tool": "deploy", "params": {',
                       timeout=10, trust_env=False), 400, "Malformed JSON: Expecting")
    unknown = refused(server.call("rm_rf"), 400, "Unknown tool 'rm_rf': expected one of deploy")
    assert set(unknown["tools"]) == {"deploy", "promote", "rollback", "cleanup", "slot_status",
                                     "ports", "reconcile", "history"}
    # What the statuses mean for the failures a test cannot easily cause.
    assert status_for("ProxyApplyFailed", "x") == 502
    assert status_for("AccessDenied", "Access Denied: cannot verify the API key: down") == 503

    records = ok(server.get("/api/v1/history", params={"project": p, "limit": 50}))["records"]
    assert {r["actor"] for r in records} >= {f"apikey:cb_{server.keys['member'].split('_')[1]}"}
    assert {r["team"] for r in records} == {"acme"}
    assert any(r["result"] == "denied" and r["action"] == "deploy" for r in records)


def streamed_deploy(server: Server, project: str, tag: str = "v1"):
    """A deploy asked for as NDJSON (the response, to use in `with`)."""
    return httpx.stream("POST", f"{server.url}/api/tool", timeout=60, trust_env=False,
                        json={"tool": "deploy", "params": {"projectName": project,
                                                           "image": image(tag)}},
                        headers={"X-API-Key": server.keys["member"],
                                 "Accept": "application/x-ndjson"})


def test_operations_stream_as_codeb_json_prints_them(server):
    p = f"{server.prefix}-ndjson"
    with streamed_deploy(server, p) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in answer.iter_lines() if line]
    assert lines[0]["event"] == "started" and lines[-2]["event"] == "finished"
    assert {"step_started", "step_finished", "log"} <= {line.get("event") for line in lines}
    assert lines[-1] == {"ok": True, "result": {
        **lines[-1]["result"], "previewUrl": lines[-2]["result"]["preview_url"]}}

    cli = server.cli("deploy", p, "--image", image("v2"), "--json")
    assert cli.returncode == 0, cli.stderr
    local = [json.loads(line) for line in cli.stdout.splitlines()]
    assert [set(e) for e in local if e["event"] == "started"] == [set(lines[0])]
    assert set(local[-1]) == set(lines[-2])

    # A refusal before the first step keeps its status, still as NDJSON.
    answer = server.call("promote", stream=True, projectName=f"{p}-none")
    assert answer.status_code == 404
    refusal = [json.loads(line) for line in answer.text.splitlines()]
    assert [r.get("event") for r in refusal] == ["started", "failed", None]
    assert refusal[-1]["ok"] is False and "Run deploy first" in refusal[-1]["error"]


def test_a_client_that_leaves_does_not_cut_its_deploy(server):
    p = f"{server.prefix}-gone"
    with streamed_deploy(server, p) as answer:
        first = json.loads(next(answer.iter_lines()))
    assert first["event"] == "started"  # and the connection is closed here
    deadline = time.monotonic() + 30
    while True:
        records = ok(server.get("/api/v1/history", params={"project": p}))["records"]
        if records:
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert [(r["operation_id"], r["result"]) for r in records] == [
        (first["operation_id"], "succeeded")]
    slots = ok(server.get(f"/api/v1/projects/{p}/production", params={"live": "false"}))["slots"]
    assert [s["state"] for s in slots] == ["deployed", "empty"]


async def test_twenty_requests_over_ten_projects_at_once(server):
    projects = [f"{server.prefix}-c{i}" for i in range(10)]
    headers = {"X-API-Key": server.keys["member"]}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60,
                                 trust_env=False,
                                 limits=httpx.Limits(max_connections=20)) as client:
        started = time.perf_counter()
        answers = await asyncio.gather(*[
            client.post("/api/tool", json={"tool": "deploy", "params": {
                "projectName": p, "image": image("v1")}})
            for p in projects for _ in range(2)])
        elapsed = time.perf_counter() - started
    by_project: dict[str, list[httpx.Response]] = {}
    for p, answer in zip([p for p in projects for _ in range(2)], answers):
        by_project.setdefault(p, []).append(answer)
    for p, pair in by_project.items():
        statuses = sorted(a.status_code for a in pair)
        assert statuses[0] == 200, [a.text for a in pair]
        for answer in pair:
            if answer.status_code != 200:
                refused(answer, 409,
                        f"{p} (production) is locked: deploy {p} (production) by apikey:cb_")
    assert sum(a.status_code == 409 for a in answers) >= 5  # the pairs did meet
    assert ok(server.call("slot_status", projectName=projects[0]))["slots"][0]["state"] == \
        "deployed"
    # The ten deploys overlapped: together faster than one after the other.
    history = ok(server.get("/api/v1/history", params={"action": "deploy", "limit": 200}))
    mine = [r for r in history["records"] if r["project"] in projects
            and r["result"] == "succeeded"]
    assert len(mine) == 10
    assert elapsed < sum(r["duration_ms"] for r in mine) / 1000


def hostile_requests(key: str, project: str) -> list[tuple[str, bytes]]:
    """(what, raw HTTP request) pairs that must all be answered 4xx."""
    def post(body: bytes | str, path: str = "/api/tool", headers: str = "") -> bytes:
        body = body.encode() if isinstance(body, str) else body
        return (f"POST {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n{headers}"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body

    def get(path: str, headers: str = f"X-API-Key: {key}\r\n") -> bytes:
        return f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode()

    def deploy(**params) -> str:
        return json.dumps({"tool": "deploy", "params": params})

    good = {"projectName": project, "image": image("v1")}
    return [
        ("empty body", post("")),
        ("not JSON", post("deploy please")),
        ("truncated JSON", post('{"tool": "deploy", "params": {"projectName": ')),
        ("NaN", post('{"tool": "deploy", "params": {"projectName": NaN}}')),
        ("not UTF-8", post(b'{"tool": "\xff\xfe"}')),
        ("deep nesting", post("[" * 20000 + "]" * 20000)),
        ("a list", post("[]")),
        ("a string", post('"deploy"')),
        ("tool a number", post('{"tool": 5, "params": {}}')),
        ("unknown tool", post('{"tool": "exec", "params": {"cmd": "id"}}')),
        ("params a list", post('{"tool": "deploy", "params": ["a"]}')),
        ("missing params", post('{"tool": "deploy"}')),
        ("missing image", post(deploy(projectName=project))),
        ("extra field", post(deploy(**good, volumes=["/:/host"]))),
        ("extra top-level field", post(json.dumps({"tool": "deploy", "params": good, "x": 1}))),
        ("name a list", post(deploy(projectName=[project], image=image("v1")))),
        ("name upper case", post(deploy(projectName="ABC", image=image("v1")))),
        ("name traversal", post(deploy(projectName="../../etc", image=image("v1")))),
        ("name with NUL", post(deploy(projectName=project + "\u0000x", image=image("v1")))),
        ("name with newline", post(deploy(projectName=project + "\nx", image=image("v1")))),
        ("name too long", post(deploy(projectName="a" * 200, image=image("v1")))),
        ("image shell", post(deploy(projectName=project, image="$(id)"))),
        ("image option", post(deploy(projectName=project, image="--privileged"))),
        ("environment unknown", post(deploy(**good, environment="../prod"))),
        ("confirmGrace a string", post(deploy(**good, confirmGrace="yes"))),
        ("history limit", post('{"tool": "history", "params": {"limit": -1}}')),
        ("history since", post('{"tool": "history", "params": {"since": "yesterday"}}')),
        ("reconcile repair", post('{"tool": "reconcile", "params": {"repair": true}}')),
        ("huge declared body", post("{}", headers="").replace(b"Content-Length: 2",
                                                              b"Content-Length: 999999999")),
        ("v1 traversal encoded", post('{"image": "x"}',
                                      "/api/v1/projects/..%2F..%2Fetc/production/deploy")),
        ("v1 traversal dots", post(json.dumps({"image": image("v1")}),
                                   "/api/v1/projects/../production/deploy")),
        ("v1 unknown action", post("{}", f"/api/v1/projects/{project}/production/exec")),
        ("v1 promote with body", post('{"force": true}',
                                      f"/api/v1/projects/{project}/production/promote")),
        ("v1 unknown query", get(f"/api/v1/history?project={project}&sql=1")),
        ("v1 query twice", get("/api/v1/history?limit=1&limit=2")),
        ("GET on /api/tool", get("/api/tool")),
        ("a forged second key", post(deploy(**good)).replace(
            f"X-API-Key: {key}".encode(), f"X-API-Key: nope\r\nX-API-Key: {key}".encode())),
        ("a control character in the key", post(deploy(**good)).replace(
            f"X-API-Key: {key}".encode(), f"X-API-Key: {key}\x0bX-Role: admin".encode())),
        ("NUL in a header", post(deploy(**good), headers="X-Trace: a\x00b\r\n")),
        ("a key folded over two lines", post(deploy(**good)).replace(
            f"X-API-Key: {key}".encode(), f"X-API-Key: nope\r\n {key}".encode())),
        ("no key, good call", post(deploy(**good)).replace(f"X-API-Key: {key}\r\n".encode(),
                                                           b"")),
    ]


def raw_request(port: int, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # refused before the whole request was read
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def held_for(port: int, trickle: bytes) -> float:
    """Seconds until the server closes a connection that sends `trickle` a byte at a time."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        try:
            for byte in trickle:
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
            assert sock.recv(100) == b""
        except (BrokenPipeError, ConnectionResetError):
            pass
        return time.monotonic() - started


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def test_hostile_requests_are_refused_and_write_nothing(server):
    project = f"{server.prefix}-host"
    registry = server.root / "registry"
    before = tree(registry)
    requests = hostile_requests(server.keys["member"], project)
    assert len(requests) >= 25
    for what, data in requests:
        answer = raw_request(server.port, data)
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
        assert 400 <= status < 500, (what, answer[:300])
    assert tree(registry) == before
    assert not list(registry.rglob(f"*{project}*"))


def test_openapi_is_generated_from_the_models(server):
    # What is passed through without the models still has their shape.
    listed = models.ProjectsResult.model_validate(ok(server.get("/api/v1/projects")))
    assert {entry.project for entry in listed.projects} >= {f"{server.prefix}-workb"}
    one = ok(server.get(f"/api/v1/projects/{server.prefix}-workb/production"))
    assert models.SlotStatusResult.model_validate(one).slots[0].to_status().to_json() == \
        one["slots"][0]
    assert ok(server.get("/api/v1/ports"))["environments"][0]["environment"] == "production"

    doc = server.get("/api/openapi.json", key=None).json()
    assert doc == json.loads(json.dumps(document(ROUTES, server.url)))
    assert set(doc["paths"]) == {r.path for r in ROUTES}
    schemas = doc["components"]["schemas"]
    assert set(schemas["DeployParams"]["required"]) == {"projectName", "image"}
    assert schemas["DeployParams"]["additionalProperties"] is False
    tool_body = doc["paths"]["/api/tool"]["post"]["requestBody"]["content"]["application/json"]
    assert len(tool_body["schema"]["oneOf"]) == 8
    assert {"previewUrl", "slot", "port", "image"} <= set(schemas["DeployResult"]["properties"])
    assert doc["paths"]["/api/tool"]["post"]["security"] == [{"apiKey": []}]


def test_the_cli_against_a_remote_server_prints_what_it_prints_locally(server):
    p = f"{server.prefix}-remote"
    remote = ["--server", server.url, "--api-key", server.keys["member"]]
    out = run_cli(*remote, "deploy", p, "--image", image("v1"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == f"deploy {p} (production) {image('v1')}"
    assert out.stdout.splitlines()[-1].startswith(f"done: {p} (production)")
    out = run_cli(*remote, "promote", p, "--json", env={"CODEB_SERVER": "http://127.0.0.1:1"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["event"] == "finished"

    for args, code in ((["promote", p], 2), (["rollback", f"{p}-x"], 2),
                       (["deploy", p, "--image", f"{REGISTRY}/demo/app:nope"], 1)):
        there = run_cli(*remote, *args)
        here = server.cli(*args, "--api-key", server.keys["member"])
        assert there.returncode == here.returncode == code, (there, here)
        assert re.sub(r"\d+ (ms|s)", "", there.stderr) == re.sub(r"\d+ (ms|s)", "", here.stderr)

    there = json.loads(run_cli(*remote, "status", p, "--json").stdout)
    here = json.loads(server.cli("status", p, "--json").stdout)
    for side in (there, here):
        for slot in side["slots"]:
            slot["latency_ms"] = slot["health_detail"] = None
    assert there == here
    assert run_cli(*remote, "status", p).stdout.splitlines()[0].split() == \
        server.cli("status", p).stdout.splitlines()[0].split()

    there = run_cli(*remote, "history", p, "--json")
    here = server.cli("history", p, "--json")
    assert there.returncode == here.returncode == 0 and there.stdout == here.stdout
    assert len(json.loads(there.stdout)["history"]) >= 4
    assert run_cli(*remote, "history", p).stdout == server.cli("history", p).stdout

    viewer = run_cli("--server", server.url, "--api-key", server.keys["viewer"], "deploy", p,
                     "--image", image("v2"))
    assert viewer.returncode == 2 and viewer.stderr.startswith("codeb: Access Denied: role viewer")
    down = run_cli("--server", "http://127.0.0.1:9", "status")
    assert down.returncode == 1 and "cannot reach the codeb server" in down.stderr


def test_the_caddy_config_is_unchanged_without_api_domain(make_config):
    plain = make_config()
    with_api = make_config(api={"domain": "API.Example.com", "listen": "0.0.0.0:8700"})
    assert "api" not in json.dumps(build_caddy_config(plain, []))
    routes = build_caddy_config(with_api, [])["apps"]["http"]["servers"]["codeb"]["routes"]
    assert routes[-2]["handle"][0]["routes"][0]["match"] == [{"host": ["api.example.com"]}]
    assert routes[-2]["handle"][0]["routes"][0]["handle"][0]["upstreams"] == [
        {"dial": "127.0.0.1:8700"}]


# --- a server of its own: limits, timeouts, SIGTERM ----------------------------------------------


def test_limits_timeouts_and_sigterm_during_a_deploy(config_file, prefix, tmp_path):
    port = free_ports(1)[0]
    config = config_file(api={"listen": f"127.0.0.1:{port}", "rate_limit_per_minute": 5,
                              "idle_timeout": 1},
                         health={"timeout": 20, "interval": 0.1, "request_timeout": 2})
    srv = Server(config, port, tmp_path / "serve.log")
    srv.make_keys("ops", member="member", viewer="viewer")
    srv.start()
    try:
        # 429 past the rate, per key
        statuses = [srv.get("/api/v1/ports", key="viewer").status_code for _ in range(6)]
        assert statuses == [200] * 5 + [429]
        limited = srv.get("/api/v1/ports", key="viewer")
        assert int(limited.headers["retry-after"]) >= 1 and "Too many requests" in limited.text

        # A silent client and one trickling its headers are let go; a slow body is a 408.
        for trickle in (b"", b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * 100):
            assert held_for(port, trickle) < 3  # uvicorn alone: silent for ever, or 5+ s here
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST /api/tool HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            assert b" 408 " in sock.recv(1000).split(b"\r\n")[0]

        # SIGTERM while a deploy waits for its (slow) container: it finishes, the process
        # stops taking connections and exits 0.
        with streamed_deploy(srv, f"{prefix}-term", "slow") as answer:
            lines = answer.iter_lines()
            for line in lines:
                event = json.loads(line)
                if event["event"] == "step_started" and event["step"] == "health check":
                    break  # the slow image answers after 8 s
            srv.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{srv.url}/healthz", timeout=2, trust_env=False)
            rest = [json.loads(line) for line in lines if line]
        assert rest[-2]["event"] == "finished" and rest[-1]["ok"] is True, rest[-3:]
        assert srv.proc.wait(30) == 0
        slots = json.loads(srv.cli("status", f"{prefix}-term", "--json").stdout)["slots"]
        assert [s["state"] for s in slots] == ["deployed", "empty"]
        history = json.loads(srv.cli("history", f"{prefix}-term", "--json").stdout)["history"]
        assert [h["result"] for h in history] == ["succeeded"]
    finally:
        srv.stop()
    srv.assert_no_key_logged()
