"""Work on each host of a project at once.

A project lives on one host or on several (its slot file's `hosts`); every procedure does its
per-host part through `on_hosts`, which runs the parts concurrently, lets each one finish (a
half-done part is never cut off: its undo must know what it did), and fails naming the host.
A project on the local host only runs exactly as before: one part, awaited directly, its errors
unchanged and no host in any message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from codeb_tui.domain.errors import CodebError, OperationFailed
from codeb_tui.domain.model import LOCAL_HOST
from codeb_tui.engine.context import Context
from codeb_tui.infra.host import Host

T = TypeVar("T")


def labelled(names: Sequence[str]) -> bool:
    """Whether messages name the host: always, unless the project is on the local host only."""
    return tuple(names) != (LOCAL_HOST,)


def host_label(host: Host | str, names: Sequence[str]) -> str:
    """The prefix of a per-host message ("web1: "), empty for a local-only project."""
    return f"{host if isinstance(host, str) else host.name}: " if labelled(names) else ""


def named(host: str, exc: BaseException) -> BaseException:
    """The error of one host's part, its message naming the host; the class (and so the exit
    code) stays. Anything else than a codeb error (a bug, an OSError) becomes an
    OperationFailed naming the host."""
    if str(exc).startswith((f"{host}: ", f"Host {host} ")):
        return exc
    message = f"{host}: {exc}"
    if isinstance(exc, CodebError):
        try:
            renamed = type(exc)(message)
        except TypeError:  # a class with its own constructor (HostUnreachable names it anyway)
            return exc
        renamed.__cause__ = exc.__cause__
        return renamed
    return OperationFailed(message)


async def on_hosts(ctx: Context, names: Sequence[str],
                   part: Callable[[Host], Awaitable[T]]) -> list[T]:
    """`part` on each host, all at once; every part runs to its end. Raises the first host's
    failure (in the order of `names`), named; the results are in the order of `names`."""
    if not labelled(names):
        return [await part(ctx.host)]
    results = await gather_hosts(ctx, names, part)
    for name, result in zip(names, results):
        if isinstance(result, BaseException):
            raise named(name, result)
    return results  # type: ignore[return-value]


async def gather_hosts(ctx: Context, names: Sequence[str],
                       part: Callable[[Host], Awaitable[T]]) -> list[T | BaseException]:
    """`part` on each host at once: its result or its error, per host (for undo and status,
    which must hear from every host)."""

    async def one(name: str) -> T:
        return await part(ctx.host_named(name))

    results = await asyncio.gather(*[one(name) for name in names], return_exceptions=True)
    for result in results:
        if isinstance(result, (KeyboardInterrupt, SystemExit)):
            raise result
    return results
