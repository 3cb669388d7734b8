"""Start-up without the cyclic garbage collector's passes."""

from __future__ import annotations

import gc
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
