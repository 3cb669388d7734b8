"""Typed, validated configuration.

Loaded from YAML into frozen dataclasses. Unknown keys and values of the wrong type or range are
a `ConfigError` whose message names the key (`caddy.admin: ...`), never a silent default.
"""

from __future__ import annotations

import os
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from codeb_tui.domain.errors import ConfigError
from codeb_tui.domain.model import Environment


@dataclass(frozen=True)
class RegistryConfig:
    root: Path = Path("/opt/codeb/registry")
    lock_timeout: float = 0.0
    """Seconds to wait for a project lock before refusing; 0 refuses at once."""


@dataclass(frozen=True)
class EnvironmentConfig:
    ports: tuple[int, int]
    domain: str
    preview_domain: str


def _default_environments() -> dict[str, EnvironmentConfig]:
    return {
        "production": EnvironmentConfig((4100, 4499), "{project}.example.com",
                                        "{slot}.{project}.preview.example.com"),
        "staging": EnvironmentConfig((4500, 4999), "{project}.staging.example.com",
                                     "{slot}.{project}.staging-preview.example.com"),
        "preview": EnvironmentConfig((5000, 5499), "{project}.preview.example.com",
                                     "{slot}.{project}.pr-preview.example.com"),
    }


@dataclass(frozen=True)
class DockerConfig:
    endpoint: str = "unix:///var/run/docker.sock"
    network_mode: str = "host"
    bind_address: str = "127.0.0.1"
    stop_timeout: int = 10
    pull: bool = True
    """Pull the image before running it; false runs what the engine already has."""
    registry_url: str | None = None
    """The private image registry's HTTP API (http://127.0.0.1:5000), for the image picker."""


@dataclass(frozen=True)
class CaddyConfig:
    admin: str = "http://127.0.0.1:2019"
    listen: str = "127.0.0.1:80"
    url_scheme: str = "http"
    config_dir: Path = Path("/opt/codeb/caddy")
    keep_backups: int = 20
    switch_mode: str = "file"
    """How promote and rollback switch traffic. `file`: the config routes each production host to
    both slots, each route gated by a marker file in `switch_dir` that Caddy checks per request,
    so a switch is a rename and Caddy never reloads. `reload`: the config routes to the active
    slot only and every switch POSTs a new config (a reload: idle keep-alive connections and
    connections queued on the old listener are cut; see bench/switch.py)."""
    switch_dir: Path | None = None
    """Where the marker files live; Caddy must be able to read it. Default: config_dir/switch."""
    close_connections: bool = False
    """Answer with `Connection: close`, so that a reload finds no idle keep-alive connection to
    cut (costs a TCP handshake per request)."""

    @property
    def markers(self) -> Path:
        return self.switch_dir or self.config_dir / "switch"


@dataclass(frozen=True)
class HealthConfig:
    path: str = "/health"
    timeout: float = 60.0
    interval: float = 0.25
    request_timeout: float = 2.0


@dataclass(frozen=True)
class DatabaseConfig:
    dsn: str | None = None
    """PostgreSQL DSN; when unset, the embedded SQLite database at `sqlite_path` is used."""
    sqlite_path: Path = Path("/opt/codeb/codeb.sqlite3")
    connect_timeout: float = 3.0


@dataclass(frozen=True)
class ConsoleConfig:
    theme: str = "codeb-dark"
    """The console's theme: codeb-dark, codeb-light, codeb-high-contrast (or any Textual theme)."""
    keymap: dict[str, str] = field(default_factory=dict)
    """Binding id -> keys (comma-separated), e.g. {deploy: ctrl+d}; ids are on the help screen."""
    poll_interval: float = 1.0
    """Seconds between live status polls (health of every slot with a container)."""
    registry_watch_interval: float = 0.5
    """Seconds between checks of the slot files for changes made by another process."""


@dataclass(frozen=True)
class Config:
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    environments: dict[str, EnvironmentConfig] = field(default_factory=_default_environments)
    docker: DockerConfig = field(default_factory=DockerConfig)
    caddy: CaddyConfig = field(default_factory=CaddyConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    grace_hours: float = 48.0
    source: Path | None = None

    def env(self, environment: Environment) -> EnvironmentConfig:
        return self.environments[environment.value]

    def production_url(self, project: str, environment: Environment) -> str:
        host = self.env(environment).domain.format(project=project, env=environment.value)
        return self._url(host)

    def preview_url(self, project: str, environment: Environment, slot: str) -> str:
        host = self.env(environment).preview_domain.format(
            project=project, env=environment.value, slot=slot
        )
        return self._url(host)

    def _url(self, host: str) -> str:
        port = self.caddy.listen.rsplit(":", 1)[-1]
        default = {"http": "80", "https": "443"}.get(self.caddy.url_scheme)
        suffix = "" if port == default else f":{port}"
        return f"{self.caddy.url_scheme}://{host}{suffix}"


def default_config_path() -> Path:
    """Where the config lives when neither --config nor $CODEB_CONFIG says (the seam tests set)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "codeb" / "config.yaml"


def load_config(path: str | Path | None = None) -> Config:
    """--config, else $CODEB_CONFIG, else the user's config dir; a missing default file means
    built-in defaults, a missing named file is an error."""
    explicit = path or os.environ.get("CODEB_CONFIG")
    candidate = Path(explicit) if explicit else default_config_path()
    if not candidate.exists():
        if explicit:
            raise ConfigError(f"Config file not found: {candidate}")
        return Config()
    try:
        data = yaml.safe_load(candidate.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{candidate}: cannot read config: {first}") from None
    return parse_config(data, base_dir=candidate.parent, source=candidate)


def parse_config(data: Any, base_dir: Path | None = None, source: Path | None = None) -> Config:
    if not isinstance(data, dict):
        raise ConfigError("config: expected a mapping at the top level")
    envs = data.get("environments")
    if envs is not None:
        if not isinstance(envs, dict):
            raise ConfigError("environments: expected a mapping")
        defaults = _default_environments()
        merged: dict[str, Any] = {}
        for name, value in envs.items():
            if name not in defaults:
                raise ConfigError(
                    f"environments.{name}: unknown environment (production, staging, preview)"
                )
            if not isinstance(value, dict):
                raise ConfigError(f"environments.{name}: expected a mapping")
            base = defaults[name]
            merged[name] = {
                "ports": list(base.ports), "domain": base.domain,
                "preview_domain": base.preview_domain, **value,
            }
        data = {**data, "environments": {**{k: _env_dict(v) for k, v in defaults.items()},
                                         **merged}}
    config = _build(Config, {k: v for k, v in data.items()}, "", base_dir or Path.cwd())
    config = _replace_source(config, source)
    _check(config)
    return config


def _env_dict(env: EnvironmentConfig) -> dict:
    return {"ports": list(env.ports), "domain": env.domain, "preview_domain": env.preview_domain}


def _replace_source(config: Config, source: Path | None) -> Config:
    from dataclasses import replace

    return replace(config, source=source)


def _build(cls: type, data: Any, prefix: str, base_dir: Path) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.name != "source"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{prefix}{key}: unknown key")
    values = {}
    for name, f in known.items():
        if name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(f"{prefix}{name}: required")
            continue
        values[name] = _coerce(hints[name], data[name], f"{prefix}{name}", base_dir)
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str, base_dir: Path) -> Any:
    origin = typing.get_origin(hint)
    if is_dataclass(hint):
        return _build(hint, value, key + ".", base_dir)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, key, base_dir)
    if origin is dict:
        _, value_type = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping")
        return {k: _coerce(value_type, v, f"{key}.{k}", base_dir) for k, v in value.items()}
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values")
        return tuple(_coerce(a, v, f"{key}[{i}]", base_dir) for i, (a, v) in enumerate(zip(args, value)))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a path, got {value!r}")
        path = Path(os.path.expanduser(value))
        return path if path.is_absolute() else (base_dir / path).resolve()
    raise ConfigError(f"{key}: unsupported setting")  # pragma: no cover - a schema bug


def _check(config: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    ranges = []
    for name, env in config.environments.items():
        low, high = env.ports
        if not (1024 <= low < high <= 65535):
            raise ConfigError(f"environments.{name}.ports: expected 1024 <= low < high <= 65535")
        if low % 2:
            raise ConfigError(f"environments.{name}.ports: the range must start on an even port")
        for other, (olow, ohigh) in ranges:
            if low <= ohigh and olow <= high:
                raise ConfigError(f"environments.{name}.ports: overlaps environments.{other}.ports")
        ranges.append((name, (low, high)))
        for key in ("domain", "preview_domain"):
            pattern = getattr(env, key)
            try:
                pattern.format(project="p", env="e", slot="s")
            except (KeyError, IndexError, ValueError):
                raise ConfigError(
                    f"environments.{name}.{key}: only {{project}}, {{env}} and {{slot}} may be used"
                ) from None
            if "{project}" not in pattern:
                raise ConfigError(f"environments.{name}.{key}: must contain {{project}}")
        if "{slot}" not in env.preview_domain:
            raise ConfigError(f"environments.{name}.preview_domain: must contain {{slot}}")
    if config.caddy.switch_mode not in ("file", "reload"):
        raise ConfigError("caddy.switch_mode: expected file or reload")
    if config.caddy.url_scheme not in ("http", "https"):
        raise ConfigError("caddy.url_scheme: expected http or https")
    if ":" not in config.caddy.listen:
        raise ConfigError("caddy.listen: expected host:port")
    if config.docker.network_mode != "host":
        raise ConfigError("docker.network_mode: only 'host' is supported (slots bind loopback ports)")
    if not config.health.path.startswith("/"):
        raise ConfigError("health.path: must start with '/'")
    for key in ("timeout", "interval", "request_timeout"):
        if getattr(config.health, key) <= 0:
            raise ConfigError(f"health.{key}: must be greater than 0")
    for key in ("poll_interval", "registry_watch_interval"):
        if getattr(config.console, key) <= 0:
            raise ConfigError(f"console.{key}: must be greater than 0")
    if config.grace_hours < 0:
        raise ConfigError("grace_hours: must be 0 or more")
    if config.database.dsn and not config.database.dsn.startswith(("postgres://", "postgresql://")):
        raise ConfigError("database.dsn: expected a postgresql:// DSN")
