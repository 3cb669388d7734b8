"""The `codeb` command: the console by default, the engine's operations headless.

    codeb [--config FILE] [--json] [--api-key KEY] [COMMAND ...]

`main(argv)` runs it and returns the exit code (errors.py says which), so it can be called in
process as well as from the `codeb` script or `python -m codeb_tui.cli`.
"""

from __future__ import annotations

import sys

from codeb_tui.cli.startup import collector_paused, raise_open_files_limit

with collector_paused():
    from codeb_tui.cli import history, host, serve, ssh_serve, workflow  # noqa: F401 - they add their commands
    from codeb_tui.cli.app import codeb
    from codeb_tui.cli.errors import guarded
    from codeb_tui.domain.errors import EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    raise_open_files_limit()

    def call() -> int:
        # Not codeb.main(): that one prints click's usage block and exits by itself.
        with codeb.make_context("codeb", args) as ctx:
            code = codeb.invoke(ctx)
        return EXIT_OK if code is None else code

    return guarded(call)


__all__ = ["main"]
