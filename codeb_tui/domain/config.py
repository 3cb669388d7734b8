"""Typed, validated configuration.

Pydantic models, frozen, that refuse unknown keys. `load_config` reads YAML (a key given twice is
refused), applies `CODEB_*` environment overrides and validates. Every problem is one
`ConfigError` line that starts with the dotted key (`caddy.admin: expected an http(s) URL, got
'x'`), never a silent default.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from string import Formatter
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from codeb_tui.domain.errors import ConfigError
from codeb_tui.domain.model import HOST_NAME_RE, LOCAL_HOST, PROJECT_NAME_RE, Environment

OVERRIDE_PREFIX = "CODEB_"
OVERRIDE_DELIMITER = "__"
NOT_OVERRIDES = frozenset({
    "CODEB_CONFIG",  # the config file itself
    "CODEB_API_KEY", "CODEB_SERVER",  # the CLI's key and remote server
    # set by scripts/services.sh for the demo, tests and benches
    "CODEB_SERVICES_DIR", "CODEB_REGISTRY_URL", "CODEB_DEMO_IMAGE", "CODEB_CADDY_ADMIN",
    "CODEB_PG_DSN", "CODEB_SKIP_PG", "CODEB_BUSYBOX",
    # what codeb passes to the containers it runs (codeb may itself run in one)
    "CODEB_PROJECT", "CODEB_ENVIRONMENT", "CODEB_SLOT",
})
"""`CODEB_*` variables with another meaning, never read as config overrides (nor `CODEB_TEST_*`)."""
NOT_OVERRIDE_PREFIXES = ("CODEB_TEST_",)


class _ErrorAt(ValueError):
    """A problem below the value being validated, at `path` relative to it, so that the message
    can still name the exact key (`environments.qa`, not `environments`)."""

    def __init__(self, path: tuple[str, ...], reason: str) -> None:
        super().__init__(reason)
        self.path = path


# ---------------------------------------------------------------------------------------------
# Field types


def _resolve_path(value: Any, info: ValidationInfo) -> Path:
    """`~` is expanded; a relative path is relative to the config file's folder."""
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a path, got {_shown(value)}")
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    base_dir = (info.context or {}).get("base_dir") or Path.cwd()
    return (base_dir / path).resolve()


def _url_of(schemes: tuple[str, ...], expected: str, show_value: bool = True) -> AfterValidator:
    def check(value: str) -> str:
        try:
            parts = urlsplit(value)
        except ValueError:
            parts = urlsplit("")
        place = parts.path if parts.scheme == "unix" else parts.netloc
        if parts.scheme not in schemes or not place or any(c.isspace() for c in value):
            raise ValueError(f"expected {expected}, got {_shown(value)}" if show_value
                             else f"expected {expected}")
        return value

    return AfterValidator(check)


def _check_listen(value: str) -> str:
    host, colon, port = value.rpartition(":")
    valid_port = port.isascii() and port.isdigit() and 1 <= int(port) <= 65535
    if not colon or not valid_port or any(c.isspace() or c == "/" for c in host):
        raise ValueError(f"expected host:port with a port in 1..65535, got {_shown(value)}")
    return value


def listen_address(value: str) -> tuple[str, int]:
    """(host, port) of a checked `host:port` listen value, IPv6 brackets removed ("" stays:
    every address)."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def _check_url_path(value: str) -> str:
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError(f"must start with '/' and have no spaces, got {_shown(value)}")
    return value


Text = Annotated[str, Field(min_length=1)]
Seconds = Annotated[float, Field(gt=0)]
ConfigPath = Annotated[Path, BeforeValidator(_resolve_path)]
Port = Annotated[int, Field(ge=1024, le=65535)]
HttpUrl = Annotated[Text, _url_of(("http", "https"), "an http(s) URL")]
DockerEndpoint = Annotated[Text, _url_of(
    ("unix", "tcp", "http", "https", "ssh"), "a unix://, tcp://, http://, https:// or ssh:// URL")]
# The value is not repeated in the message: a DSN may carry a password.
PostgresDsn = Annotated[Text, _url_of(("postgresql", "postgres"), "a postgresql:// DSN",
                                      show_value=False)]
ListenAddress = Annotated[Text, AfterValidator(_check_listen)]
UrlPath = Annotated[Text, AfterValidator(_check_url_path)]

_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _check_host_pattern(pattern: str, allowed: tuple[str, ...]) -> str:
    """A host name with placeholders: only `allowed` ones, {project} always, and once filled in a
    valid DNS name (no scheme, path, port or spaces)."""
    names = ["{" + name + "}" for name in allowed]
    only = ", ".join(names[:-1]) + " and " + names[-1]
    try:
        fields = [(name, spec, conversion)
                  for _, name, spec, conversion in Formatter().parse(pattern) if name is not None]
    except ValueError:
        raise ValueError(f"unbalanced braces in {_shown(pattern)}") from None
    if any(name not in allowed or spec or conversion for name, spec, conversion in fields):
        raise ValueError(f"only {only} may be used, got {_shown(pattern)}")
    if "{project}" not in pattern:
        raise ValueError("must contain {project}")
    host = pattern.format(project="shop", env="production", slot="green")
    labels = host.split(".")
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            f"expected a host name pattern like {{project}}.example.com (letters, digits, '-' "
            f"and '.'; no scheme, port, path or spaces), got {_shown(pattern)}"
        )
    return pattern


# ---------------------------------------------------------------------------------------------
# Sections


class _Section(BaseModel):
    # strict: "yes" is not true and "60" is not a number; the YAML types must be right.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class RegistryConfig(_Section):
    root: ConfigPath = Path("/opt/codeb/registry")
    lock_timeout: Annotated[float, Field(ge=0)] = 0.0
    """Seconds to wait for a project lock before refusing; 0 refuses at once."""


class EnvironmentConfig(_Section):
    # strict=False: YAML gives a list, the model keeps a tuple (the ports themselves stay strict).
    ports: Annotated[tuple[Port, Port], Field(strict=False)]
    """Inclusive range; blue slots take the even ports, green the next odd one."""
    domain: Text
    preview_domain: Text

    @field_validator("ports")
    @classmethod
    def _ports_from_even_low_to_high(cls, ports: tuple[int, int]) -> tuple[int, int]:
        low, high = ports
        if low >= high:
            raise ValueError(f"expected [low, high] with low < high, got {list(ports)}")
        if low % 2:
            raise ValueError("the range must start on an even port")
        return ports

    @field_validator("domain")
    @classmethod
    def _domain_pattern(cls, pattern: str) -> str:
        return _check_host_pattern(pattern, ("project", "env"))

    @field_validator("preview_domain")
    @classmethod
    def _preview_domain_pattern(cls, pattern: str) -> str:
        _check_host_pattern(pattern, ("project", "env", "slot"))
        if "{slot}" not in pattern:
            raise ValueError("must contain {slot}")
        return pattern


def _default_environments() -> dict[str, EnvironmentConfig]:
    return {
        "production": EnvironmentConfig(ports=(4100, 4499), domain="{project}.example.com",
                                        preview_domain="{slot}.{project}.preview.example.com"),
        "staging": EnvironmentConfig(ports=(4500, 4999), domain="{project}.staging.example.com",
                                     preview_domain="{slot}.{project}.staging-preview.example.com"),
        "preview": EnvironmentConfig(ports=(5000, 5499), domain="{project}.preview.example.com",
                                     preview_domain="{slot}.{project}.pr-preview.example.com"),
    }


class DockerConfig(_Section):
    endpoint: DockerEndpoint = "unix:///var/run/docker.sock"
    network_mode: Literal["host"] = "host"
    """Slots bind loopback ports on the host; no other mode is supported."""
    bind_address: Text = "127.0.0.1"
    stop_timeout: Annotated[int, Field(ge=0)] = 10
    pull: bool = True
    """Pull the image before running it; false runs what the engine already has."""
    registry_url: HttpUrl | None = None
    """The private image registry's HTTP API (http://127.0.0.1:5000), for the image picker."""


class CaddyConfig(_Section):
    admin: HttpUrl = "http://127.0.0.1:2019"
    listen: ListenAddress = "127.0.0.1:80"
    url_scheme: Literal["http", "https"] = "http"
    config_dir: ConfigPath = Path("/opt/codeb/caddy")
    keep_backups: Annotated[int, Field(ge=1)] = 20
    switch_mode: Literal["file", "reload"] = "file"
    """How promote and rollback switch traffic. `file`: the config routes each production host to
    both slots, each route gated by a marker file in `switch_dir` that Caddy checks per request,
    so a switch is a rename and Caddy never reloads. `reload`: the config routes to the active
    slot only and every switch POSTs a new config (a reload: idle keep-alive connections and
    connections queued on the old listener are cut; see bench/switch.py)."""
    switch_dir: ConfigPath | None = None
    """Where the marker files live; Caddy must be able to read it. Default: config_dir/switch."""
    close_connections: bool = False
    """Answer with `Connection: close`, so that a reload finds no idle keep-alive connection to
    cut (costs a TCP handshake per request)."""

    @property
    def markers(self) -> Path:
        return self.switch_dir or self.config_dir / "switch"


class HealthConfig(_Section):
    path: UrlPath = "/health"
    timeout: Seconds = 60.0
    interval: Seconds = 0.25
    request_timeout: Seconds = 2.0


class DatabaseConfig(_Section):
    dsn: PostgresDsn | None = None
    """PostgreSQL DSN; when unset, the embedded SQLite database at `sqlite_path` is used."""
    sqlite_path: ConfigPath = Path("/opt/codeb/codeb.sqlite3")
    connect_timeout: Seconds = 3.0


class ConsoleConfig(_Section):
    theme: Text = "codeb-dark"
    """The console's theme: codeb-dark, codeb-light, codeb-high-contrast (or any Textual theme)."""
    keymap: dict[str, Text] = Field(default_factory=dict)
    """Binding id -> keys (comma-separated), e.g. {deploy: ctrl+d}; ids are on the help screen."""
    poll_interval: Seconds = 1.0
    """Seconds between health checks of the rows on screen (and the selected one); every other
    slot is checked in the background at least every 4 s."""
    registry_watch_interval: Seconds = 2.0
    """Seconds between stats of the slot files, only where the machine gives no file-system
    events (inotify): with them, outside changes arrive as they happen."""


def _check_host_name(value: str) -> str:
    labels = value.split(".")
    if len(value) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"expected a host name like api.example.com (no scheme, port, path or "
                         f"spaces), got {_shown(value)}")
    return value.lower()


HostName = Annotated[Text, AfterValidator(_check_host_name)]


class ApiConfig(_Section):
    """`codeb serve`: the HTTP API that CI calls."""

    listen: ListenAddress = "127.0.0.1:8700"
    public_url: HttpUrl | None = None
    """The URL CI calls (https://api.example.com); `codeb workflow init` writes it into the
    workflow. Default: http://<listen>."""
    domain: HostName | None = None
    """A host name the generated Caddy config routes to `listen`; unset: no route."""
    max_body_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 64 * 1024
    rate_limit_per_minute: Annotated[int, Field(ge=1)] = 60
    """Requests per API key (or per client address without one) per minute."""
    request_timeout: Seconds = 600.0
    """Seconds a request that does not stream may take (a deploy pulls and waits for health);
    after it the answer is 504 and the operation goes on to its end."""
    idle_timeout: Seconds = 5.0
    """Seconds a connection may wait for a complete request: idle keep-alive, unfinished
    headers, or an unfinished body."""

    @property
    def dial(self) -> str:
        """host:port where a client on this host reaches the server (a listen on every address
        is reached on 127.0.0.1)."""
        host, _, port = self.listen.rpartition(":")
        return f"{'127.0.0.1' if host in ('', '0.0.0.0', '::', '[::]') else host}:{port}"

    @property
    def url(self) -> str:
        """The URL CI calls: public_url, else the listen address over http."""
        return (self.public_url or f"http://{self.dial}").rstrip("/")


_OPERATOR_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")  # what `ssh NAME@host` can carry
_PUBLIC_KEY = re.compile(r"^(ssh|ecdsa|sk)-[A-Za-z0-9@.-]+ [A-Za-z0-9+/]+={0,3}( .*)?$")


def check_operator_name(value: str) -> str:
    if not _OPERATOR_NAME.fullmatch(value):
        raise ValueError(f"expected a user name (a-z, 0-9, '_' and '-', up to 32, starting with "
                         f"a letter), got {_shown(value)}")
    return value


def check_public_key(value: str) -> str:
    if not _PUBLIC_KEY.fullmatch(value.strip()):
        raise ValueError(f"expected a public key line such as 'ssh-ed25519 AAAA... comment', got "
                         f"{_shown(value)}")
    return value.strip()


OperatorName = Annotated[Text, AfterValidator(check_operator_name)]
PublicKeyLine = Annotated[Text, AfterValidator(check_public_key)]


class SshOperatorConfig(_Section):
    """One operator of `codeb ssh-serve`: who they are and which keys prove it."""

    name: OperatorName
    """The user name they connect as: `ssh -p PORT name@host`."""
    keys: list[PublicKeyLine] = Field(default_factory=list)
    authorized_keys: ConfigPath | None = None
    """An authorized_keys file, read when the server starts (options before a key are ignored)."""
    team: Text | None = None
    role: Literal["admin", "member", "viewer"]

    @model_validator(mode="after")
    def _some_key(self) -> SshOperatorConfig:
        if not self.keys and self.authorized_keys is None:
            raise _ErrorAt(("keys",), "an operator needs keys or an authorized_keys file")
        return self


class SshConfig(_Section):
    """`codeb ssh-serve`: the console served over SSH, one console process per session."""

    listen: ListenAddress = "127.0.0.1:2022"
    state_dir: ConfigPath = Path("/opt/codeb/ssh")
    """The host key (0600, made on first start) and the operators `codeb operator add` keeps."""
    operators: list[SshOperatorConfig] = Field(default_factory=list)
    max_sessions: Annotated[int, Field(ge=1, le=1000)] = 10
    spare_consoles: Annotated[int, Field(ge=0, le=10)] = 1
    """Console processes started ahead, loaded and waiting for a session: a session's first
    frame then waits for no Python start (each costs an idle process's memory)."""
    idle_timeout: Seconds = 900.0
    """Seconds without a key press before a session is closed (its operations still finish)."""

    @model_validator(mode="after")
    def _names_once(self) -> SshConfig:
        seen: set[str] = set()
        for index, operator in enumerate(self.operators):
            if operator.name in seen:
                raise _ErrorAt(("operators", str(index), "name"), f"{operator.name} is declared twice")
            seen.add(operator.name)
        return self


def _check_remote_path(value: str) -> str:
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError(f"expected an absolute path on that host, got {_shown(value)}")
    return value


RemotePath = Annotated[Path, BeforeValidator(_check_remote_path), Field(strict=False)]
"""A path on another machine: absolute, never resolved against this machine's folders."""


def _check_host_key(value: str) -> str:
    if not HOST_NAME_RE.fullmatch(value):
        raise ValueError(f"expected a host name (letters, digits, '.', '_', '-'), got {_shown(value)}")
    if value == LOCAL_HOST:
        raise ValueError(f"{LOCAL_HOST!r} is this machine and cannot be declared")
    return value


class HostConfig(_Section):
    """A machine codeb reaches over SSH (`hosts: {web1: {...}}`). There is no password key:
    a key file or the SSH agent authenticates, and the host's key must be in known_hosts."""

    address: Text
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    user: Text
    identity_file: ConfigPath | None = None
    """A private key without a passphrase (keys with one go through the agent)."""
    agent: bool = False
    """Authenticate with the keys of the SSH agent at $SSH_AUTH_SOCK."""
    known_hosts: ConfigPath = Field(default=Path("~/.ssh/known_hosts"), validate_default=True)
    """Checked strictly: an unknown or changed host key refuses the connection
    (`codeb host trust NAME` records one)."""
    docker_socket: RemotePath = Path("/var/run/docker.sock")
    caddy_admin: HttpUrl = "http://127.0.0.1:2019"
    """Caddy's admin API as the host itself reaches it (through the SSH connection)."""
    bind_address: Text = "127.0.0.1"
    """Where slots listen on that host (and where its Caddy and health checks reach them)."""
    marker_dir: RemotePath = Path("/opt/codeb/caddy/switch")
    """The proxy's switch markers on that host (Caddy there must be able to read it)."""
    forward_registry: ListenAddress | None = None
    """host:port of the image registry as image references name it (127.0.0.1:5000), for a
    host that cannot reach it: offered there, at the same address, through the connection."""
    connect_timeout: Seconds = 5.0
    request_timeout: Seconds = 5.0
    """Seconds any one request over the connection may take (keepalives use it too): a host
    that is down or hangs fails within it and never holds up the others."""

    @model_validator(mode="after")
    def _one_way_to_log_in(self) -> HostConfig:
        if self.identity_file is None and not self.agent:
            raise _ErrorAt(("identity_file",), "required (or agent: true)")
        return self

    @property
    def target(self) -> str:
        """user@address:port, as errors and `codeb host list` show it."""
        return f"{self.user}@{self.address}:{self.port}"


class ProjectConfig(_Section):
    """Per project: `projects: {shop: {hosts: [web1, web2]}}`."""

    hosts: list[Text]
    """Where a first deploy puts the project (then its slot file says): declared hosts or
    `local`."""

    @field_validator("hosts")
    @classmethod
    def _some_host(cls, hosts: list[str]) -> list[str]:
        if not hosts:
            raise ValueError("expected at least one host")
        return hosts


class Config(_Section):
    registry: RegistryConfig = RegistryConfig()
    environments: dict[str, EnvironmentConfig] = Field(default_factory=_default_environments)
    docker: DockerConfig = DockerConfig()
    caddy: CaddyConfig = CaddyConfig()
    health: HealthConfig = HealthConfig()
    database: DatabaseConfig = DatabaseConfig()
    console: ConsoleConfig = ConsoleConfig()
    api: ApiConfig = ApiConfig()
    ssh: SshConfig = SshConfig()
    hosts: dict[Annotated[str, AfterValidator(_check_host_key)], HostConfig] = Field(
        default_factory=dict)
    """Machines reached over SSH, by name; `local` (this machine) is always there."""
    projects: dict[str, ProjectConfig] = Field(default_factory=dict)
    grace_hours: Annotated[float, Field(ge=0)] = 48.0
    _source: Path | None = PrivateAttr(default=None)

    @property
    def source(self) -> Path | None:
        """The file this config was read from; None for built-in defaults or a dict."""
        return self._source

    @field_validator("environments", mode="before")
    @classmethod
    def _merge_over_defaults(cls, given: Any) -> Any:
        """Each environment, and each of its keys, may be left out: the defaults fill the gaps."""
        if not isinstance(given, dict):
            return given
        merged: dict[str, Any] = {name: env.model_dump()
                                  for name, env in _default_environments().items()}
        for name, env in given.items():
            if name not in merged:
                raise _ErrorAt((str(name),), "unknown environment (production, staging, preview)")
            merged[name] = {**merged[name], **env} if isinstance(env, dict) else env
        return merged

    @model_validator(mode="after")
    def _projects_on_known_hosts(self) -> Config:
        for project, spec in self.projects.items():
            if not PROJECT_NAME_RE.fullmatch(project):
                raise _ErrorAt(("projects", project), "expected a project name (a-z, 0-9, '-')")
            for index, host in enumerate(spec.hosts):
                if host != LOCAL_HOST and host not in self.hosts:
                    raise _ErrorAt(("projects", project, "hosts", str(index)),
                                   f"unknown host {host!r} (declare it under hosts:, or use "
                                   f"{LOCAL_HOST})")
            if len(set(spec.hosts)) != len(spec.hosts):
                raise _ErrorAt(("projects", project, "hosts"), "a host is named twice")
        return self

    @model_validator(mode="after")
    def _environments_apart(self) -> Config:
        """Two environments may share neither ports nor host names."""
        ranges: list[tuple[str, tuple[int, int]]] = []
        hosts: dict[str, str] = {}
        for name, env in self.environments.items():
            low, high = env.ports
            for other, (other_low, other_high) in ranges:
                if low <= other_high and other_low <= high:
                    raise _ErrorAt(("environments", name, "ports"),
                                   f"overlaps environments.{other}.ports")
            ranges.append((name, env.ports))
            for key in ("domain", "preview_domain"):
                # {env} is filled in: "{project}.{env}.x" in two environments never collides.
                pattern = getattr(env, key).replace("{env}", name)
                if pattern in hosts:
                    raise _ErrorAt(("environments", name, key),
                                   f"same host names as {hosts[pattern]}")
                hosts[pattern] = f"environments.{name}.{key}"
        return self

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


# ---------------------------------------------------------------------------------------------
# Loading


def default_config_path() -> Path:
    """Where the config lives when neither --config nor $CODEB_CONFIG says (the seam tests set)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "codeb" / "config.yaml"


def load_config(path: str | Path | None = None) -> Config:
    """--config, else $CODEB_CONFIG, else the user's config dir; a missing default file means
    built-in defaults, a missing named file is an error. `CODEB_*` overrides apply over either."""
    explicit = path or os.environ.get("CODEB_CONFIG")
    candidate = Path(explicit) if explicit else default_config_path()
    overrides = environment_overrides(os.environ)
    if not candidate.exists():
        if explicit:
            raise ConfigError(f"Config file not found: {candidate}")
        return _validate({}, None, None, overrides)
    try:
        data = yaml.load(candidate.read_text(), Loader=UniqueKeyLoader)
    except UnicodeDecodeError:
        raise ConfigError(f"{candidate}: cannot read config: not UTF-8 text") from None
    except (OSError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{candidate}: cannot read config: {first}") from None
    except ConfigError as exc:
        raise ConfigError(f"{candidate}: {exc}") from None
    return _validate({} if data is None else data, candidate.parent, candidate, overrides)


def parse_config(data: Any, base_dir: Path | None = None, source: Path | None = None) -> Config:
    """A config from already-parsed data (no environment overrides); relative paths are
    resolved against `base_dir`, else the working directory."""
    return _validate(data, base_dir, source, {})


Overrides = dict[tuple[str, ...], tuple[str, Any]]
"""Config key path -> (environment variable, value)."""


def environment_overrides(environ: Any) -> Overrides:
    """`CODEB_SECTION__KEY=value` sets section.key (`CODEB_GRACE_HOURS` a top-level key); values
    are YAML, so numbers, booleans and `[4100, 4499]` keep their type."""
    overrides: Overrides = {}
    for name, raw in sorted(environ.items()):
        if (not name.startswith(OVERRIDE_PREFIX) or name in NOT_OVERRIDES
                or name.startswith(NOT_OVERRIDE_PREFIXES)):
            continue
        key = tuple(name[len(OVERRIDE_PREFIX):].lower().split(OVERRIDE_DELIMITER))
        if not all(key):
            raise ConfigError(
                f"{name}: expected CODEB_KEY or CODEB_SECTION__KEY naming a config key")
        try:
            value = yaml.load(raw, Loader=UniqueKeyLoader)
        except yaml.YAMLError:
            value = raw  # not YAML (e.g. starts with '@'): the text itself
        except ConfigError as exc:
            raise ConfigError(f"{name}: {exc}") from None
        overrides[key] = (name, value)
    return overrides


def _validate(data: Any, base_dir: Path | None, source: Path | None,
              overrides: Overrides) -> Config:
    if not isinstance(data, dict):
        raise ConfigError("config: expected a mapping at the top level")
    for key, (_, value) in overrides.items():
        data = _with_value(data, key, value)
    try:
        config = Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, overrides)) from None
    config._source = source
    return config


def _with_value(data: dict, key: tuple[str, ...], value: Any) -> dict:
    """A copy of `data` with the value at `key` set; the file's own dicts are left as they are."""
    head, rest = key[0], key[1:]
    if not rest:
        return {**data, head: value}
    inner = data.get(head)
    if not isinstance(inner, dict):
        inner = {}  # the variable says what this key holds, whatever the file had
    return {**data, head: _with_value(inner, rest, value)}


# ---------------------------------------------------------------------------------------------
# Errors


def _one_line(error: ValidationError, overrides: Overrides) -> str:
    """The first problem as `dotted.key: reason`, naming the variable if an override set it."""
    first = error.errors()[0]
    exc = (first.get("ctx") or {}).get("error")
    key = tuple(str(part) for part in first["loc"] if part != "[key]")
    if isinstance(exc, _ErrorAt):
        key += exc.path
    line = f"{'.'.join(key) or 'config'}: {_reason(first)}"
    for path, (variable, _) in overrides.items():
        # At or below the overridden key, or above it: a key the variable named that does not
        # exist, or a section it had to create.
        shorter = min(len(path), len(key))
        if shorter and path[:shorter] == key[:shorter]:
            return f"{line} (set by {variable})"
    return line


def _reason(error: Any) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    got = f", got {_shown(error.get('input'))}"
    if kind in ("value_error", "assertion_error"):
        return str(ctx["error"])
    reasons = {
        "extra_forbidden": "unknown key",
        "missing": "required",
        "bool_type": "expected true or false" + got,
        "int_type": "expected an integer" + got,
        "float_type": "expected a number" + got,
        "finite_number": "expected a finite number" + got,
        "string_type": "expected a string" + got,
        "string_too_short": "expected a non-empty string",
        "dict_type": "expected a mapping" + got,
        "model_type": "expected a mapping" + got,
        "tuple_type": "expected a list [low, high]" + got,
        "too_short": "expected a list [low, high]" + got,
        "too_long": "expected a list [low, high]" + got,
        "literal_error": f"expected {ctx.get('expected')}" + got,
        "greater_than": f"must be greater than {ctx.get('gt', 0):g}",
        "greater_than_equal": f"must be {ctx.get('ge', 0):g} or more",
        "less_than_equal": f"must be {ctx.get('le', 0):g} or less",
    }
    if kind in reasons:
        return reasons[kind]
    message = " ".join(error["msg"].split())
    return message[:1].lower() + message[1:]


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# YAML


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last one,
    so the first would be silently ignored)."""

    def construct_document(self, node: yaml.Node) -> Any:
        _refuse_duplicate_keys(node, (), set())
        return super().construct_document(node)


def _refuse_duplicate_keys(node: yaml.Node, key: tuple[str, ...], visited: set[int]) -> None:
    if id(node) in visited:  # aliases may repeat a node, or make a cycle
        return
    visited.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_duplicate_keys(item, (*key, str(index)), visited)
    elif isinstance(node, yaml.MappingNode):
        seen: set[tuple[str, str]] = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may be overridden
                continue
            name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            if (key_node.tag, name) in seen:
                raise ConfigError(f"{'.'.join((*key, name))}: duplicate key "
                                  f"on line {key_node.start_mark.line + 1}")
            seen.add((key_node.tag, name))
            _refuse_duplicate_keys(value_node, (*key, name), visited)
