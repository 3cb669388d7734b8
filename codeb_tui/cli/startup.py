"""Start-up: without the cyclic garbage collector's passes; room for a connection per slot."""

from __future__ import annotations

import gc
import resource
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic collection inside, and what was built inside is never walked by one later
    (frozen): imports build long-lived objects (modules, classes, pydantic's schemas,
    Textual's), so the passes their allocations set off find nothing, and cost tens of ms
    of `codeb`'s start. Afterwards collection is as it was before."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if collecting:
            gc.enable()


OPEN_FILES_WANTED = 65536


def raise_open_files_limit(wanted: int = OPEN_FILES_WANTED) -> None:
    """The soft limit on open files up to `wanted`, never past the hard one: the health checks
    keep a connection per slot, and 1,200 slots pass the usual soft limit of 1,024 (an SSH
    login's). Go's runtime does the same at start. Where it cannot be raised, the checks keep
    fewer connections (infra/health.py)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass
