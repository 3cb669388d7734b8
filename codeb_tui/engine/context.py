"""What every procedure works with: the config, the file registry, the host and the history
store. The facade builds one `Context`; procedures receive it and never call the facade."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from codeb_tui.domain.config import Config
from codeb_tui.engine.history import History
from codeb_tui.infra.host import Host
from codeb_tui.registry.files import FileRegistry


@dataclass
class Context:
    config: Config
    registry: FileRegistry
    host: Host
    history: History
    installation: str | None = None
    """This installation's id (port_book.installation_id), once read."""

    async def aclose(self) -> None:
        # Both, whatever happens to one: a process must never exit with a store thread open.
        await asyncio.gather(self.history.aclose(), self.host.aclose(), return_exceptions=True)
