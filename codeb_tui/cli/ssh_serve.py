"""`codeb ssh-serve`: the console over SSH until SIGTERM; `codeb operator add|list|remove`: who
may connect. The hidden `ssh-console` is the process each SSH session runs on its pty."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import sys
import termios

import click

from codeb_tui.cli import render
from codeb_tui.cli.app import codeb, command, common_options, config_listening_on, session
from codeb_tui.cli.errors import Choice
from codeb_tui.domain.access import ROLES
from codeb_tui.domain.errors import EXIT_OK, BadInput


@command(codeb, "ssh-serve", "serve the console over SSH until SIGTERM",
         "Serve the console over SSH (README, \"The console over SSH\") on ssh.listen or "
         "--listen: operators connect with `ssh -p PORT name@host` and their public key, and "
         "each session runs its own console with the operator's role. SIGTERM or ctrl+c stops "
         "accepting, lets running operations end, and exits 0.")
@click.option("--listen", metavar="ADDR", help="host:port (default: ssh.listen, 127.0.0.1:2022)")
def ssh_serve(listen: str | None) -> int:
    from codeb_tui.ssh.server import serve  # asyncssh only when serving

    config = config_listening_on("ssh", listen)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("asyncssh").setLevel(logging.WARNING)  # one line per packet otherwise
    # The console a session runs reads the same config file (and inherits CODEB_* overrides).
    where = ["--config", str(config.source)] if config.source else []

    def console_command(control: int) -> list[str]:
        return [sys.executable, "-m", "codeb_tui.cli", "ssh-console", "--control", str(control),
                *where]

    asyncio.run(serve(config, console_command, listen, ready=_print_ready))
    return EXIT_OK


def _print_ready(host: str, port: int) -> None:
    print(f"codeb ssh-serve: listening on {host}:{port} (connect: ssh -p {port} NAME@{host})",
          flush=True)


@codeb.command("ssh-console", hidden=True)
@click.option("--control", type=int, required=True, metavar="FD")
@common_options
def ssh_console(control: int) -> int:
    """One SSH session's console, started by ssh-serve on the session's pty ahead of the session:
    it loads everything, then reads `{"operator", "term"}` from the pipe `control`."""
    # A session leader (ssh-serve started it so) that makes its terminal its controlling one
    # gets SIGWINCH when the client's window changes.
    with contextlib.suppress(OSError):
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    from codeb_tui.ssh.operators import OperatorStore
    from codeb_tui.tui.app import run_console  # the slow part, done before a session comes

    config = session().config
    with os.fdopen(control) as pipe:
        told = pipe.readline()
    if not told:  # the server stopped, or did not need this spare
        return EXIT_OK
    assigned = json.loads(told)
    os.environ["TERM"] = assigned["term"]
    # Looked up again here, in the store: the client chose nothing but the name it proved.
    found = OperatorStore(config).find(assigned["operator"])
    if found is None:
        raise BadInput(f"no operator {assigned['operator']}")
    return run_console(config, found.principal, served=True)


@codeb.group(help="who may connect to `codeb ssh-serve`: add, list, remove")
def operator() -> None:
    pass


@command(operator, "add", "add (or replace) an operator with public keys, a role and a team")
@click.argument("name")
@click.option("--role", required=True, type=Choice(ROLES))
@click.option("--team", metavar="TEAM", help="the team in their audit rows")
@click.option("--key", "keys", multiple=True, metavar="KEY", help="a public key line (repeatable)")
@click.option("--key-file", "key_files", multiple=True, metavar="FILE",
              type=click.Path(dir_okay=False), help="a .pub or authorized_keys file (repeatable)")
def operator_add(name: str, role: str, team: str | None, keys: tuple[str, ...],
                 key_files: tuple[str, ...]) -> int:
    from pathlib import Path

    from codeb_tui.ssh.operators import OperatorStore, authorized_keys_lines

    s = session()
    lines = list(keys)
    for path in key_files:
        lines += authorized_keys_lines(Path(path))
    added = OperatorStore(s.config).add(name, role, team, lines)
    render.emit(s.as_json, {"operator": _operator_json(added)},
                f"operator {added.name} (role {added.role}, team {added.team or '-'}): "
                f"{', '.join(added.fingerprints())}")
    return EXIT_OK


@command(operator, "list", "operators: name, role, team, key fingerprints, where declared")
def operator_list() -> int:
    from codeb_tui.ssh.operators import OperatorStore

    s = session()
    operators = OperatorStore(s.config).all()
    text = render.table([(o.name, o.role, o.team or "-", " ".join(o.fingerprints()), o.source)
                         for o in operators],
                        ("NAME", "ROLE", "TEAM", "KEYS", "FROM")) if operators else "no operators"
    render.emit(s.as_json, {"operators": [_operator_json(o) for o in operators]}, text)
    return EXIT_OK


@command(operator, "remove", "remove an operator `codeb operator add` added")
@click.argument("name")
def operator_remove(name: str) -> int:
    from codeb_tui.ssh.operators import OperatorStore

    s = session()
    removed = OperatorStore(s.config).remove(name)
    render.emit(s.as_json, {"removed": _operator_json(removed)}, f"removed operator {removed.name}")
    return EXIT_OK


def _operator_json(o) -> dict:
    return {"name": o.name, "role": o.role, "team": o.team, "fingerprints": o.fingerprints(),
            "source": o.source}
