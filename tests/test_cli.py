"""The `codeb` command as CI and operators run it: real processes, real services."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from conftest import CADDY_HTTP_PORT, REPO, image, run_cli

BAD_PROJECTS = ["../x", "A", "a;rm -rf /", "", "a" * 64, "-lead", "trail-", "x y", "x\ny"]
BAD_IMAGES = ["127.0.0.1:5000/demo/app:v1 --rm", "img;rm -rf /", "img$(id)", "img`id`", "a|b",
              "", " leading", "img:tag&", "IMG/Upper"]


def assert_nothing_written(tmp_path, docker_client, project=None):
    assert not (tmp_path / "registry").exists(), list((tmp_path / "registry").rglob("*"))
    assert not (tmp_path / "codeb.sqlite3").exists()
    if project:
        assert not docker_client.containers.list(all=True, filters={"label": f"codeb.project={project}"})


@pytest.mark.parametrize("project", BAD_PROJECTS)
def test_bad_project_names_are_refused(project, config_file, tmp_path, docker_client):
    config = config_file()
    # After "--" so that a name like "-lead" reaches the validation instead of argparse.
    for args in (["deploy", "--image", image("v1")], ["promote"], ["rollback"]):
        out = run_cli(*args, "--config", str(config), "--", project)
        assert out.returncode == 2, out
        errors = out.stderr.strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith("codeb: Invalid project name"), out.stderr
    assert_nothing_written(tmp_path, docker_client)


@pytest.mark.parametrize("ref", BAD_IMAGES)
def test_bad_image_references_are_refused(ref, config_file, tmp_path, docker_client, prefix):
    out = run_cli("deploy", f"{prefix}-img", "--image", ref, config=config_file())
    assert out.returncode == 2, out
    errors = out.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("codeb: Invalid image reference"), out.stderr
    assert_nothing_written(tmp_path, docker_client, f"{prefix}-img")


def test_unknown_environment_is_refused(config_file, tmp_path, docker_client, prefix):
    out = run_cli("deploy", f"{prefix}-env", "--image", image("v1"), "--env", "qa", config=config_file())
    assert out.returncode == 2
    assert out.stderr.strip() == "codeb: Unknown environment 'qa': expected one of production, staging, preview"
    assert_nothing_written(tmp_path, docker_client, f"{prefix}-env")


def test_bad_config_is_one_line_naming_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("caddy:\n  admin_url: http://x\n")
    out = run_cli("status", config=path)
    assert out.returncode == 2
    assert out.stderr.strip() == "codeb: caddy.admin_url: unknown key"


def test_json_events_status_and_ports(config_file, prefix):
    config = config_file()
    project = f"{prefix}-json"
    out = run_cli("deploy", project, "--image", image("v1"), "--json", config=config)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert lines[0]["event"] == "started" and lines[-1]["event"] == "finished"
    assert {"operation", "project", "environment", "operation_id", "ts"} <= set(lines[0])
    preview = lines[-1]["result"]["preview_url"]

    out = run_cli("--json", "status", config=config)
    slots = json.loads(out.stdout)["slots"]
    blue = next(s for s in slots if s["slot"] == "blue")
    assert {k: blue[k] for k in ("project", "environment", "slot", "state", "image", "health", "url")} == {
        "project": project, "environment": "production", "slot": "blue", "state": "deployed",
        "image": image("v1"), "health": "healthy", "url": preview}
    assert isinstance(blue["port"], int)

    out = run_cli("promote", project, "--json", config=config)
    assert out.returncode == 0
    out = run_cli("status", project, "--json", config=config)
    blue = next(s for s in json.loads(out.stdout)["slots"] if s["slot"] == "blue")
    assert blue["state"] == "active" and blue["url"] == f"http://{project}.prod.test:{CADDY_HTTP_PORT}"

    out = run_cli("ports", "--json", config=config)
    report = json.loads(out.stdout)
    prod = next(e for e in report["environments"] if e["environment"] == "production")
    assert prod["range"] == [4100, 4499]
    assert any(p["project"] == project and p["blue"] == blue["port"] for p in prod["used_pairs"])


def test_refusals_and_failures_exit_codes(config_file, prefix):
    config = config_file()
    out = run_cli("promote", f"{prefix}-none", config=config)
    assert out.returncode == 2 and "Run deploy first" in out.stderr
    out = run_cli("deploy", f"{prefix}-none", "--image", image("nope"), config=config)
    assert out.returncode == 1
    assert out.stderr.strip().endswith("Was it built and pushed? A git push triggers the build.")


def test_database_outage_is_in_the_exit_summary(config_file, prefix):
    config = config_file(database={"dsn": "postgresql://postgres@127.0.0.1:5999/x", "connect_timeout": 1})
    out = run_cli("deploy", f"{prefix}-nodb", "--image", image("v1"), config=config)
    assert out.returncode == 0, out.stderr
    assert "warning: database out of sync" in out.stderr


def _spawn(config, *args):
    return subprocess.Popen([sys.executable, "-m", "codeb_tui.cli", *args, "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def test_same_project_twice_one_is_refused_naming_the_holder(config_file, prefix):
    # The slow image takes seconds to answer, so the first deploy holds the lock meanwhile.
    config = config_file()
    project = f"{prefix}-twice"
    first = _spawn(config, "deploy", project, "--image", image("slow"))
    deadline = time.monotonic() + 20
    lock = config.parent / "registry" / "locks" / f"{project}-prod.lock"
    while not (lock.exists() and lock.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = run_cli("deploy", project, "--image", image("v1"), config=config)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert second.returncode == 2
    line = second.stderr.strip()
    assert line.startswith(f"codeb: {project} (production) is locked: deploy {project} (production) by ")
    assert f"pid {first.pid}" in line and "since" in line


def test_eight_concurrent_deploys_never_share_a_port(config_file, prefix, tmp_path):
    config = config_file()
    projects = [f"{prefix}-c{i}" for i in range(8)]
    procs = [_spawn(config, "deploy", p, "--image", image("v1"), "--json") for p in projects]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [r[1] for r in results]
    ssot = json.loads((tmp_path / "registry" / "ssot.json").read_text())
    ports = ssot["ports"]["used"]
    assert len(ports) == 16 and len(set(ports)) == 16
    assert sorted(ssot["ports"]["allocated"].values()) == sorted(projects * 2)
    seen = set()
    for project in projects:
        data = json.loads((tmp_path / "registry" / "slots" / f"{project}-prod.json").read_text())
        pair = (data["slots"]["blue"]["port"], data["slots"]["green"]["port"])
        assert pair[0] % 2 == 0 and pair[1] == pair[0] + 1 and not seen & set(pair)
        seen |= set(pair)
        assert data["slots"]["blue"]["state"] == "deployed"


def test_roles_gate_operations_and_denials_are_audited(config_file, prefix, tmp_path):
    import sqlite3

    config = config_file()
    assert run_cli("team", "create", "ops", config=config).returncode == 0
    keys = {}
    for role in ("viewer", "member"):
        out = run_cli("apikey", "create", "--team", "ops", "--role", role, config=config)
        assert out.returncode == 0, out.stderr
        keys[role] = out.stdout.strip()
    project = f"{prefix}-acl"
    out = run_cli("deploy", project, "--image", image("v1"), "--api-key", keys["viewer"], config=config)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("codeb: Access Denied: role viewer may not deploy")
    assert not (tmp_path / "registry" / "slots").exists()
    out = run_cli("deploy", project, "--image", image("v1"), env={"CODEB_API_KEY": keys["member"]}, config=config)
    assert out.returncode == 0, out.stderr
    out = run_cli("cleanup", project, "--force", "--env", "production", "--api-key", keys["member"], config=config)
    assert out.returncode == 2 and "Access Denied" in out.stderr
    revoke = run_cli("apikey", "revoke", keys["member"][:11], config=config)
    assert revoke.returncode == 0, revoke.stderr
    out = run_cli("promote", project, "--api-key", keys["member"], config=config)
    assert out.returncode == 2 and "revoked" in out.stderr
    rows = sqlite3.connect(tmp_path / "codeb.sqlite3").execute(
        "select action, result, actor, team from audit_logs where project = ? order by id", (project,)).fetchall()
    assert [(a, r) for a, r, _, _ in rows] == [("deploy", "denied"), ("deploy", "succeeded"),
                                               ("cleanup", "denied"), ("promote", "denied")]
    assert rows[1][2].startswith("apikey:cb_") and rows[1][3] == "ops"
    # A known key with too small a role is named with its team; a revoked one is not trusted.
    assert rows[0][2] == "apikey:" + keys["viewer"][:11] and rows[0][3] == "ops"


def test_codeb_raises_its_soft_open_files_limit():
    """Started under an SSH login's usual soft limit (1,024), `codeb` raises it toward the hard
    one: the health checks keep a connection per slot, and 1,200 slots need more."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"hard limit {hard}: nothing to raise to")
    child = ("import resource\n"
             "from codeb_tui.cli import main\n"
             "main(['--help'])\n"
             "print('limit', resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n")
    out = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, cwd=REPO, timeout=60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard)))
    limit = int(out.stdout.rsplit("limit ", 1)[1])
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    assert limit == wanted, out.stdout[-200:]
