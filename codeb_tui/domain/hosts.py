"""Typed records about hosts, as `codeb host list` and `codeb host check` show them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HostInfo:
    """A host as config declares it (`local` is this machine)."""

    name: str
    target: str  # user@address:port, or "this machine"
    known_hosts: str | None  # the file its key is checked against (None for local)

    def to_json(self) -> dict:
        return {"name": self.name, "target": self.target, "known_hosts": self.known_hosts}


@dataclass(frozen=True)
class HostCheck:
    """What `codeb host check` found on one host."""

    name: str
    target: str
    reachable: bool
    latency_ms: float | None = None
    """One request-answer round trip over the open connection (SFTP stat; local: a file stat)."""
    connect_ms: float | None = None
    """Opening the SSH connection, when this check opened it."""
    docker_version: str | None = None
    caddy_version: str | None = None
    caddy_admin: bool = False
    """Whether Caddy's admin API answered."""
    error: str | None = None
    """Why the host is unreachable, or the first thing that failed on it."""

    @property
    def ok(self) -> bool:
        return self.reachable and self.error is None

    def to_json(self) -> dict:
        return {
            "name": self.name, "target": self.target, "reachable": self.reachable,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 2),
            "connect_ms": None if self.connect_ms is None else round(self.connect_ms, 2),
            "docker_version": self.docker_version, "caddy_version": self.caddy_version,
            "caddy_admin": self.caddy_admin, "error": self.error, "ok": self.ok,
        }


@dataclass(frozen=True)
class HostKeyOffer:
    """The key a host offers, for `codeb host trust`: shown, then recorded once confirmed."""

    name: str
    target: str
    known_hosts: str
    fingerprint: str  # SHA256:...
    key_line: str  # the known_hosts line that records it
    known: tuple[str, ...]
    """Fingerprints known_hosts records for this host now (empty: unknown host)."""

    @property
    def already_trusted(self) -> bool:
        return self.fingerprint in self.known

    def to_json(self) -> dict:
        return {"name": self.name, "target": self.target, "known_hosts": self.known_hosts,
                "fingerprint": self.fingerprint, "known": list(self.known),
                "already_trusted": self.already_trusted}
