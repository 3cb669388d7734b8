"""`codeb serve`: the HTTP API that CI calls, until SIGTERM (then running operations end first
and the exit code is 0)."""

from __future__ import annotations

import asyncio

import click

from codeb_tui.cli.app import codeb, command, config_listening_on
from codeb_tui.domain.errors import EXIT_OK


@command(codeb, "serve", "serve the HTTP API (POST /api/tool) until SIGTERM",
         "Serve the HTTP API that CI calls (README, \"How CI calls codeb\") on api.listen or "
         "--listen, in one process with one engine. SIGTERM or ctrl+c stops accepting, lets "
         "running operations end, and exits 0.")
@click.option("--listen", metavar="ADDR", help="host:port (default: api.listen, 127.0.0.1:8700)")
def serve(listen: str | None) -> int:
    from codeb_tui.api.server import serve as run_server  # uvicorn only when serving

    config = config_listening_on("api", listen)
    asyncio.run(run_server(config))
    return EXIT_OK
