"""Port pairs: blue on an even port, green on the next odd one."""

from __future__ import annotations

from dataclasses import dataclass

from codeb_tui.domain.errors import PortRangeFull


@dataclass(frozen=True)
class PortSources:
    """Every port known to be taken, by where it was seen (all sources combined)."""

    registry: frozenset[int]  # ssot.json
    containers: frozenset[int]  # ports of codeb containers, running or stopped
    listening: frozenset[int]  # sockets listening on the host

    @property
    def taken(self) -> frozenset[int]:
        return self.registry | self.containers | self.listening

    def why_taken(self, port: int) -> list[str]:
        reasons = []
        if port in self.registry:
            reasons.append("ssot.json")
        if port in self.containers:
            reasons.append("container")
        if port in self.listening:
            reasons.append("listening socket")
        return reasons


def allocate_port_pair(port_range: tuple[int, int], sources: PortSources, environment: str) -> tuple[int, int]:
    """The first even port p in the range such that neither p nor p+1 is taken."""
    low, high = port_range
    taken = sources.taken
    start = low + (low % 2)
    for port in range(start, high, 2):
        if port not in taken and port + 1 not in taken:
            return port, port + 1
    raise PortRangeFull(
        f"No free port pair left in {environment}'s range {low}-{high}: "
        f"{sum(1 for p in range(low, high + 1) if p in taken)} of {high - low + 1} ports are taken"
    )
