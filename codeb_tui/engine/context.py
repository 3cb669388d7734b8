"""What every procedure works with: the config, the file registry, the hosts and the history
store. The facade builds one `Context`; procedures receive it and never call the facade."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from codeb_tui.domain.config import Config
from codeb_tui.domain.errors import BadInput
from codeb_tui.domain.model import LOCAL_HOST
from codeb_tui.engine.history import History
from codeb_tui.infra.host import Host
from codeb_tui.registry.files import FileRegistry


@dataclass
class Context:
    config: Config
    registry: FileRegistry
    host: Host
    """The local host (`local`), the one every project without `hosts` in its slot file uses."""
    history: History
    installation: str | None = None
    """This installation's id (port_book.installation_id), once read."""
    remote: dict[str, Host] = field(default_factory=dict)
    """Hosts reached over SSH, built when first asked for (one connection each)."""
    host_probes: dict[str, Any] = field(default_factory=dict)
    """What status last heard from each host (engine/host_status.py)."""

    def host_named(self, name: str) -> Host:
        """The host called `name` in config (`local` is this machine)."""
        if name == LOCAL_HOST:
            return self.host
        found = self.remote.get(name)
        if found is None:
            from codeb_tui.infra.ssh_host import SSHHost  # asyncssh loads only when needed

            if name not in self.config.hosts:
                raise BadInput(f"Unknown host {name!r}: declare it under hosts: in the config "
                               f"(known: {', '.join(self.host_names())})")
            found = self.remote[name] = SSHHost(name, self.config.hosts[name], self.config)
        return found

    def host_names(self) -> list[str]:
        """`local` and every host of the config."""
        return [LOCAL_HOST, *sorted(self.config.hosts)]

    def proxy_config(self, host: str) -> Config:
        """The config as the proxy on `host` sees it: its upstreams on the host's bind address,
        its switch markers in the host's marker directory, its own admin address."""
        if host == LOCAL_HOST:
            return self.config
        spec = self.config.hosts[host]
        return self.config.model_copy(update={
            "docker": self.config.docker.model_copy(update={"bind_address": spec.bind_address}),
            "caddy": self.config.caddy.model_copy(update={"switch_dir": spec.marker_dir,
                                                          "admin": spec.caddy_admin}),
        })

    async def aclose(self) -> None:
        # All of them, whatever happens to one: a process must never exit with a store thread
        # or an SSH connection open.
        probes = [p.task for p in self.host_probes.values() if getattr(p, "task", None)]
        for task in probes:
            task.cancel()
        await asyncio.gather(*probes, self.history.aclose(), self.host.aclose(),
                             *[host.aclose() for host in self.remote.values()],
                             return_exceptions=True)
