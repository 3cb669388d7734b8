"""Who may connect to `codeb ssh-serve`: the operators config declares (`ssh.operators`) and the
ones `codeb operator add` keeps in `<ssh.state_dir>/operators.json` (0600, written atomically).

An operator is a user name, public keys, a team and a role. The server matches the key a client
proves against the keys of the user name it asked for; the console process it starts looks the
same name up again here, so the role comes from this store and never from the client.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncssh

from codeb_tui.domain.access import Principal, validate_role
from codeb_tui.domain.config import Config, SshOperatorConfig, check_operator_name, check_public_key
from codeb_tui.domain.durable import atomic_write
from codeb_tui.domain.errors import BadInput, ConfigError

STORE_FORMAT = 1


@dataclass(frozen=True)
class Operator:
    name: str
    role: str
    team: str | None
    keys: tuple[str, ...]
    """Public key lines (`ssh-ed25519 AAAA... comment`)."""
    source: str
    """"config" or "operators.json": where it is declared (config wins, and is edited there)."""

    @property
    def principal(self) -> Principal:
        return Principal.operator(self.name, self.team, self.role)

    def fingerprints(self) -> list[str]:
        return [public_key(line).get_fingerprint() for line in self.keys]

    def holds(self, key: asyncssh.SSHKey) -> bool:
        """Whether `key` (as a client proved it) is one of this operator's."""
        return any(public_key(line).public_data == key.public_data for line in self.keys)


def public_key(line: str) -> asyncssh.SSHKey:
    try:
        return asyncssh.import_public_key(line)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise BadInput(f"not a public key: {line[:40]!r}... ({exc})") from None


def authorized_keys_lines(path: Path) -> list[str]:
    """The key lines of an authorized_keys file; options before a key are dropped (this server
    runs no commands and forwards nothing, so none would apply)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read authorized_keys: {exc.strerror}") from None
    lines = []
    for raw in text.splitlines():
        raw = raw.strip()
        if not raw or raw.startswith("#"):
            continue
        words = raw.split()
        start = next((i for i, w in enumerate(words) if w.startswith(("ssh-", "ecdsa-", "sk-"))), None)
        if start is None or start + 1 >= len(words):
            raise ConfigError(f"{path}: not an authorized_keys line: {raw[:40]!r}...")
        lines.append(" ".join(words[start:]))
    return lines


class OperatorStore:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.path = config.ssh.state_dir / "operators.json"

    # reading -------------------------------------------------------------------------------------
    def all(self) -> list[Operator]:
        """Config's operators, then the stored ones; every key is parsed (a bad one is an error
        naming where it is)."""
        operators = [self._from_config(index, o) for index, o in enumerate(self.config.ssh.operators)]
        declared = {o.name for o in operators}
        operators += [o for o in self._stored() if o.name not in declared]
        return operators

    def find(self, name: str) -> Operator | None:
        return next((o for o in self.all() if o.name == name), None)

    def _from_config(self, index: int, declared: SshOperatorConfig) -> Operator:
        lines = list(declared.keys)
        if declared.authorized_keys is not None:
            lines += authorized_keys_lines(declared.authorized_keys)
        for number, line in enumerate(lines):
            try:
                public_key(line)
            except BadInput as exc:
                raise ConfigError(f"ssh.operators.{index}.keys.{number}: {exc}") from None
        return Operator(declared.name, declared.role, declared.team, tuple(lines), "config")

    def _stored(self) -> list[Operator]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.path}: cannot read the operators: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != STORE_FORMAT:
            raise ConfigError(f"{self.path}: not an operators file of format {STORE_FORMAT}")
        try:
            return [Operator(o["name"], o["role"], o.get("team"), tuple(o["keys"]), "operators.json")
                    for o in data.get("operators", [])]
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{self.path}: an operator lacks {exc}") from None

    # `codeb operator add | remove` -------------------------------------------------------------
    def add(self, name: str, role: str, team: str | None, keys: list[str]) -> Operator:
        _valid(name, check_operator_name, "operator name")
        validate_role(role)
        if not keys:
            raise BadInput("an operator needs at least one key (--key or --key-file)")
        lines = [_valid(k, check_public_key, "public key") for k in keys]
        for line in lines:
            public_key(line)
        existing = self.find(name)
        if existing is not None and existing.source == "config":
            raise BadInput(f"operator {name} is declared in the config ({self.config.source or 'ssh.operators'}): "
                           "change it there")
        operator = Operator(name, role, team, tuple(lines), "operators.json")
        self._write([o for o in self._stored() if o.name != name] + [operator])
        return operator

    def remove(self, name: str) -> Operator:
        found = self.find(name)
        if found is None:
            raise BadInput(f"no operator {name}")
        if found.source == "config":
            raise BadInput(f"operator {name} is declared in the config: remove it there")
        self._write([o for o in self._stored() if o.name != name])
        return found

    def _write(self, operators: list[Operator]) -> None:
        rows = [{k: v for k, v in asdict(o).items() if k != "source"} for o in operators]
        for row in rows:
            row["keys"] = list(row["keys"])
        data = json.dumps({"format": STORE_FORMAT, "operators": rows}, indent=1).encode()
        atomic_write(self.path, data, mode=0o600)


def _valid(value: str, check, what: str) -> str:
    try:
        return check(value)
    except ValueError as exc:
        raise BadInput(f"invalid {what}: {exc}") from None
