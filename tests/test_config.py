import os
import re
from pathlib import Path

import pytest

from codeb_tui.domain.config import load_config, parse_config
from codeb_tui.domain.errors import ConfigError


def test_example_config_is_the_defaults():
    example = load_config(Path(__file__).parent.parent / "config.example.yaml")
    defaults = parse_config({})
    assert example.model_dump() == defaults.model_dump()  # every section and key
    assert example.environments == defaults.environments
    assert example.caddy == defaults.caddy
    assert example.grace_hours == defaults.grace_hours == 48
    assert example.source is not None and example.source.name == "config.example.yaml"


@pytest.mark.parametrize("data, key", [
    ({"registy": {}}, "registy: unknown key"),
    ({"caddy": {"admn": "x"}}, "caddy.admn: unknown key"),
    ({"health": {"timeout": "soon"}}, "health.timeout: expected a number"),
    ({"health": {"timeout": 0}}, "health.timeout: must be greater than 0"),
    ({"docker": {"pull": "yes"}}, "docker.pull: expected true or false"),
    ({"environments": {"qa": {}}}, "environments.qa: unknown environment"),
    ({"environments": {"staging": {"ports": [4501, 4999]}}}, "environments.staging.ports: the range must start on an even port"),
    ({"environments": {"staging": {"ports": [4400, 4999]}}}, "environments.staging.ports: overlaps"),
    ({"environments": {"production": {"domain": "{name}.x"}}}, "environments.production.domain"),
    ({"environments": {"production": {"preview_domain": "{project}.x"}}}, "environments.production.preview_domain: must contain {slot}"),
    ({"database": {"dsn": "mysql://x"}}, "database.dsn"),
    ({"grace_hours": -1}, "grace_hours"),
    (["not", "a", "mapping"], "config: expected a mapping"),
])
def test_bad_config_names_the_key(data, key):
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert key in str(info.value)
    assert "\n" not in str(info.value)


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("registry:\n  root: reg\n")
    assert load_config(path).registry.root == tmp_path / "reg"


def test_missing_named_file_and_bad_yaml_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("caddy: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_urls_follow_the_domain_patterns():
    config = parse_config({"caddy": {"listen": "127.0.0.1:8080"}})
    assert config.production_url("shop", config_env("staging")) == "http://shop.staging.example.com:8080"
    assert config.preview_url("shop", config_env("production"), "green") == "http://green.shop.preview.example.com:8080"


def config_env(name):
    from codeb_tui.domain.model import Environment

    return Environment(name)


# --- hostile configs ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_ambient_overrides(monkeypatch):
    """Overrides from the caller's shell must not change what these tests load."""
    for name in list(os.environ):
        if name.startswith("CODEB_"):
            monkeypatch.delenv(name)


HOSTILE = [
    # (YAML file, environment, the key the one-line error must start with, and a word of the reason)
    ("registy: {}", {}, "registy: unknown key"),
    ("caddy: {admn: x}", {}, "caddy.admn: unknown key"),
    ("source: /etc", {}, "source: unknown key"),
    ("health: {timeout: soon}", {}, "health.timeout: expected a number"),
    ("health: {timeout: '60'}", {}, "health.timeout: expected a number"),
    ("health: {interval: 0}", {}, "health.interval: must be greater than 0"),
    ("health: {request_timeout: .nan}", {}, "health.request_timeout: expected a finite number"),
    ("health: {path: health}", {}, "health.path: must start with '/'"),
    ("console: {poll_interval: -1}", {}, "console.poll_interval: must be greater than 0"),
    ("console: {registry_watch_interval: 0}", {}, "console.registry_watch_interval: must be greater"),
    ("console: {keymap: [deploy]}", {}, "console.keymap: expected a mapping"),
    ("console: {keymap: {deploy: 5}}", {}, "console.keymap.deploy: expected a string"),
    ("docker: {pull: 'yes'}", {}, "docker.pull: expected true or false"),
    ("docker: {stop_timeout: -1}", {}, "docker.stop_timeout: must be 0 or more"),
    ("docker: {stop_timeout: 1.5}", {}, "docker.stop_timeout: expected an integer"),
    ("docker: {network_mode: bridge}", {}, "docker.network_mode: expected 'host'"),
    ("docker: {endpoint: /var/run/docker.sock}", {}, "docker.endpoint: expected a unix://"),
    ("docker: {endpoint: 'npipe:////./pipe/docker'}", {}, "docker.endpoint: expected a unix://"),
    ("docker: {registry_url: '127.0.0.1:5000'}", {}, "docker.registry_url: expected an http(s) URL"),
    ("caddy: {admin: x}", {}, "caddy.admin: expected an http(s) URL, got 'x'"),
    ("caddy: {admin: 'ftp://127.0.0.1:2019'}", {}, "caddy.admin: expected an http(s) URL"),
    ("caddy: {listen: 127.0.0.1}", {}, "caddy.listen: expected host:port"),
    ("caddy: {listen: '127.0.0.1:99999'}", {}, "caddy.listen: expected host:port"),
    ("caddy: {listen: 'http://127.0.0.1:80'}", {}, "caddy.listen: expected host:port"),
    ("caddy: {switch_mode: swap}", {}, "caddy.switch_mode: expected 'file' or 'reload'"),
    ("caddy: {url_scheme: ftp}", {}, "caddy.url_scheme: expected 'http' or 'https'"),
    ("caddy: {keep_backups: 0}", {}, "caddy.keep_backups: must be 1 or more"),
    ("caddy: {config_dir: 5}", {}, "caddy.config_dir: expected a path"),
    ("caddy: null", {}, "caddy: expected a mapping"),
    ("database: {dsn: 'mysql://root:secret@db/x'}", {}, "database.dsn: expected a postgresql:// DSN"),
    ("database: {connect_timeout: 0}", {}, "database.connect_timeout: must be greater than 0"),
    ("registry: {lock_timeout: -1}", {}, "registry.lock_timeout: must be 0 or more"),
    ("grace_hours: -1", {}, "grace_hours: must be 0 or more"),
    ("grace_hours: .nan", {}, "grace_hours: expected a finite number"),
    ("grace_hours: .inf", {}, "grace_hours: expected a finite number"),
    ("grace_hours: true", {}, "grace_hours: expected a number"),
    ("environments: [production]", {}, "environments: expected a mapping"),
    ("environments: {qa: {}}", {}, "environments.qa: unknown environment"),
    ("environments: {staging: x}", {}, "environments.staging: expected a mapping"),
    ("environments: {staging: {ports: [4501, 4999]}}", {},
     "environments.staging.ports: the range must start on an even port"),
    ("environments: {staging: {ports: [4400, 4999]}}", {},
     "environments.staging.ports: overlaps environments.production.ports"),
    ("environments: {preview: {ports: [4998, 5499]}}", {},
     "environments.preview.ports: overlaps environments.staging.ports"),
    ("environments: {staging: {ports: [4998, 4500]}}", {},
     "environments.staging.ports: expected [low, high] with low < high"),
    ("environments: {staging: {ports: [80, 4999]}}", {}, "environments.staging.ports.0: must be 1024"),
    ("environments: {staging: {ports: [4500, 70000]}}", {},
     "environments.staging.ports.1: must be 65535 or less"),
    ("environments: {staging: {ports: 4500-4999}}", {}, "environments.staging.ports: expected a list"),
    ("environments: {staging: {ports: [4500, 4999, 5000]}}", {},
     "environments.staging.ports: expected a list"),
    ("environments: {production: {domain: '{name}.x'}}", {},
     "environments.production.domain: only {project} and {env}"),
    ("environments: {production: {domain: '{project}.{slot}.x'}}", {},
     "environments.production.domain: only {project} and {env}"),
    ("environments: {production: {domain: 'shop.example.com'}}", {},
     "environments.production.domain: must contain {project}"),
    ("environments: {production: {domain: '{project}.exa mple.com'}}", {},
     "environments.production.domain: expected a host name pattern"),
    ("environments: {production: {domain: 'https://{project}.example.com'}}", {},
     "environments.production.domain: expected a host name pattern"),
    ("environments: {production: {domain: '{project}.example.com/app'}}", {},
     "environments.production.domain: expected a host name pattern"),
    ("environments: {production: {domain: '{project.example.com'}}", {},
     "environments.production.domain: unbalanced braces"),
    ("environments: {production: {preview_domain: '{project}.x'}}", {},
     "environments.production.preview_domain: must contain {slot}"),
    ("environments: {staging: {domain: '{project}.example.com'}}", {},
     "environments.staging.domain: same host names as environments.production.domain"),
    ("environments: {preview: {domain: '{project}.{env}.example.com'},"
     " staging: {domain: '{project}.preview.example.com'}}", {},
     "environments.preview.domain: same host names as environments.staging.domain"),
    ("caddy:\n  admin: http://a:1\n  listen: 127.0.0.1:80\n  admin: http://b:1\n", {},
     "caddy.admin: duplicate key on line 4"),
    ("environments:\n  staging: {ports: [4500, 4999], ports: [4600, 4999]}\n", {},
     "environments.staging.ports: duplicate key on line 2"),
    ("", {"CODEB_CADDY__ADMN": "x"}, "caddy.admn: unknown key (set by CODEB_CADDY__ADMN)"),
    ("", {"CODEB_NOPE": "1"}, "nope: unknown key (set by CODEB_NOPE)"),
    ("", {"CODEB_ENVIRONMENTS__QA__PORTS": "[6000, 6099]"},
     "environments.qa: unknown environment (production, staging, preview) "
     "(set by CODEB_ENVIRONMENTS__QA__PORTS)"),
    ("", {"CODEB_GRACE_HOURS": ".inf"}, "grace_hours: expected a finite number, got inf (set by"),
    ("", {"CODEB_HEALTH__TIMEOUT": "soon"}, "health.timeout: expected a number, got 'soon' (set by"),
    ("", {"CODEB_CADDY__ADMIN__PORT": "1"}, "caddy.admin: expected a string"),
    ("", {"CODEB_DATABASE____DSN": "x"}, "CODEB_DATABASE____DSN: expected CODEB_KEY"),
]


@pytest.mark.parametrize("text, environ, expected", HOSTILE,
                         ids=[case[2].split(":")[0] for case in HOSTILE])
def test_hostile_config_is_one_line_naming_the_key(text, environ, expected, tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value).removeprefix(f"{path}: ")  # YAML-level errors name the file first
    assert message.startswith(expected)
    assert "\n" not in message


def test_hostile_table_is_wide():
    assert len(HOSTILE) >= 25


def test_a_dsn_is_not_echoed_in_errors():
    with pytest.raises(ConfigError) as info:
        parse_config({"database": {"dsn": "mysql://root:secret@db/x"}})
    assert "secret" not in str(info.value)


def test_partial_environments_merge_over_the_defaults():
    config = parse_config({"environments": {"staging": {"domain": "{project}.stg.test"}}})
    assert config.environments["staging"].ports == (4500, 4999)
    assert config.environments["staging"].domain == "{project}.stg.test"
    assert config.environments["production"] == parse_config({}).environments["production"]


def test_paths_expand_home_and_resolve_against_base_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = parse_config({"registry": {"root": "~/reg"}, "caddy": {"switch_dir": "sw"}},
                          base_dir=tmp_path)
    assert config.registry.root == tmp_path / "home" / "reg"
    assert config.caddy.markers == tmp_path / "sw"
    assert parse_config({}).caddy.markers == Path("/opt/codeb/caddy/switch")


def test_config_is_frozen_and_typed():
    config = parse_config({"health": {"timeout": 5}, "environments": {"staging": {"ports": [4500, 4999]}}})
    assert config.health.timeout == 5.0 and isinstance(config.health.timeout, float)
    assert config.environments["staging"].ports == (4500, 4999)
    with pytest.raises(Exception):
        config.grace_hours = 1  # type: ignore[misc]


def test_source_is_the_file_read(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("grace_hours: 1\n")
    assert load_config(path).source == path
    assert parse_config({}).source is None


# --- environment overrides --------------------------------------------------------------------


def test_environment_overrides_apply_over_the_file(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("grace_hours: 10\ncaddy: {admin: 'http://127.0.0.1:2019', listen: ':8080'}\n")
    monkeypatch.setenv("CODEB_DATABASE__DSN", "postgresql://codeb@db:5432/codeb")
    monkeypatch.setenv("CODEB_REGISTRY__ROOT", "reg")
    monkeypatch.setenv("CODEB_CADDY__ADMIN", "http://127.0.0.1:3019")
    monkeypatch.setenv("CODEB_GRACE_HOURS", "24")
    monkeypatch.setenv("CODEB_DOCKER__PULL", "false")
    monkeypatch.setenv("CODEB_ENVIRONMENTS__STAGING__PORTS", "[4600, 4999]")
    monkeypatch.setenv("CODEB_CONSOLE__KEYMAP__DEPLOY", "ctrl+d")
    config = load_config(path)
    assert config.database.dsn == "postgresql://codeb@db:5432/codeb"
    assert config.registry.root == tmp_path / "reg"
    assert config.caddy.admin == "http://127.0.0.1:3019"
    assert config.caddy.listen == ":8080"  # the file's other keys stay
    assert config.grace_hours == 24.0
    assert config.docker.pull is False
    assert config.environments["staging"].ports == (4600, 4999)
    assert config.environments["staging"].domain == "{project}.staging.example.com"
    assert config.console.keymap == {"deploy": "ctrl+d"}


def test_environment_overrides_apply_without_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("CODEB_GRACE_HOURS", "0")
    assert load_config().grace_hours == 0.0


def test_environment_overrides_are_not_read_by_parse_config(monkeypatch):
    monkeypatch.setenv("CODEB_GRACE_HOURS", "1")
    assert parse_config({}).grace_hours == 48.0


@pytest.mark.parametrize("name", ["CODEB_CONFIG", "CODEB_API_KEY", "CODEB_SERVICES_DIR",
                                  "CODEB_SKIP_PG", "CODEB_TEST_PG_DSN", "CODEB_PG_DSN",
                                  "CODEB_CADDY_ADMIN", "CODEB_REGISTRY_URL", "CODEB_DEMO_IMAGE",
                                  "CODEB_BUSYBOX", "CODEB_PROJECT", "CODEB_ENVIRONMENT", "CODEB_SLOT",
                                  "CODEB_SERVER"])
def test_codeb_variables_with_another_meaning_are_not_overrides(name, tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("grace_hours: 1\n")
    monkeypatch.setenv(name, "not a config value")
    if name == "CODEB_CONFIG":
        monkeypatch.setenv(name, str(path))
    assert load_config(path).grace_hours == 1.0


@pytest.mark.parametrize("api, error", [
    ({"lsten": "127.0.0.1:1"}, "api.lsten: unknown key"),
    ({"listen": "8700"}, "api.listen: expected host:port"),
    ({"public_url": "api.example.com"}, "api.public_url: expected an http(s) URL"),
    ({"domain": "https://api.example.com"}, "api.domain: expected a host name"),
    ({"max_body_bytes": 10}, "api.max_body_bytes: must be 1024 or more"),
    ({"rate_limit_per_minute": 0}, "api.rate_limit_per_minute: must be 1 or more"),
    ({"request_timeout": 0}, "api.request_timeout: must be greater than 0"),
    ({"idle_timeout": "5"}, "api.idle_timeout: expected a number"),
])
def test_api_section_names_the_bad_key(api, error):
    with pytest.raises(ConfigError, match=re.escape(error)):
        parse_config({"api": api})


def test_api_urls():
    assert parse_config({}).api.url == "http://127.0.0.1:8700"
    assert parse_config({"api": {"listen": ":9000"}}).api.dial == "127.0.0.1:9000"
    assert parse_config({"api": {"public_url": "https://api.example.com/"}}).api.url == \
        "https://api.example.com"

