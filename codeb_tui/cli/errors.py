"""The one place a failure becomes an exit code and one line `codeb: <message>` on stderr.

Exit codes: 0 done, 1 the operation or the database failed, 2 bad input (usage included),
refused transition, held lock or denied access, 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

import click

from codeb_tui.cli.render import printable
from codeb_tui.domain.errors import EXIT_FAILED, EXIT_REFUSED, CodebError
from codeb_tui.engine.facade import StoreError, StoreRefused

EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # as if killed by SIGPIPE, like other tools whose reader left (| head)


def guarded(call: Callable[[], int]) -> int:
    """`call()`'s exit code, or the code of the error it raised, reported on stderr."""
    try:
        return call()
    except click.exceptions.Exit as exc:  # --help, already printed
        return exc.exit_code
    except click.ClickException as exc:  # usage errors: exit_code 2
        return _fail(_click_message(exc), exc.exit_code)
    except CodebError as exc:
        return _fail(str(exc), exc.exit_code)
    except StoreRefused as exc:  # before StoreError, its base class
        return _fail(str(exc), EXIT_REFUSED)
    except StoreError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        # Nothing to say to a reader that left; point stdout at /dev/null so that the flush at
        # exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _fail(message: str, code: int) -> int:
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    sys.stderr.write(f"codeb: {printable(line)}\n")
    return code


def invalid_choice(value: Any, choices: Iterable[str]) -> str:
    return f"invalid choice: {value!r} (choose from {', '.join(map(repr, choices))})"


class Choice(click.Choice):
    """A choice refused in the words codeb has always used ("invalid choice: ...")."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value in self.choices:
            return value
        self.fail(invalid_choice(value, self.choices), param, ctx)


class Group(click.Group):
    """A missing or unknown subcommand is a one-line usage error, not click's help page."""

    group_class = type  # nested groups are Groups too

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args and not self.invoke_without_command:
            raise click.UsageError("the following arguments are required: "
                                   f"{{{','.join(self.commands)}}}", ctx)
        return super().parse_args(ctx, args)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name = args[0]
        if name not in self.commands and not name.startswith("-"):
            raise click.UsageError(f"argument command: {invalid_choice(name, self.commands)}", ctx)
        return super().resolve_command(ctx, args)


def _click_message(exc: click.ClickException) -> str:
    if isinstance(exc, click.NoSuchOption):
        return f"unrecognized arguments: {exc.option_name}"
    if isinstance(exc, click.BadParameter) and exc.param is not None:
        param = exc.param
        name = "/".join(param.opts) if isinstance(param, click.Option) else param.name
        if isinstance(exc, click.MissingParameter):
            return f"the following arguments are required: {name}"
        return f"argument {name}: {exc.message}"
    return exc.format_message()
