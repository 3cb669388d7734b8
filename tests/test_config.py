from pathlib import Path

import pytest

from codeb_tui.domain.config import load_config, parse_config
from codeb_tui.domain.errors import ConfigError


def test_example_config_is_the_defaults():
    example = load_config(Path(__file__).parent.parent / "config.example.yaml")
    defaults = parse_config({})
    assert example.environments == defaults.environments
    assert example.caddy == defaults.caddy
    assert example.health == defaults.health
    assert example.docker == defaults.docker
    assert example.grace_hours == defaults.grace_hours == 48


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
