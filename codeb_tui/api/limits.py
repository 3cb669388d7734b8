"""What keeps one caller from holding the server: a rate per key, a bounded body read in
bounded time."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import Callable

from starlette.requests import ClientDisconnect, Request

from codeb_tui.api.errors import ApiError

WINDOW = 60.0
_PRUNE_AT = 4096


class RateLimiter:
    """At most `per_minute` requests in any 60 s per caller (a sliding window)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}

    def admit(self, caller: str) -> None:
        """Count one request of `caller`, or raise 429 saying when to come back."""
        now = self._clock()
        hits = self._hits.get(caller)
        if hits is None:
            if len(self._hits) >= _PRUNE_AT:
                self._prune(now)
            hits = self._hits[caller] = deque()
        while hits and now - hits[0] >= WINDOW:
            hits.popleft()
        if len(hits) >= self.per_minute:
            wait = max(1, int(WINDOW - (now - hits[0])) + 1)
            raise ApiError(429, f"Too many requests: at most {self.per_minute} a minute per API "
                                f"key; retry in {wait} s", "RateLimited", retry_after=wait)
        hits.append(now)

    def _prune(self, now: float) -> None:
        """Forget callers silent for a whole window (random keys must not grow the table)."""
        for caller in [c for c, hits in self._hits.items() if not hits or now - hits[-1] >= WINDOW]:
            del self._hits[caller]


def caller_of(request: Request) -> str:
    """Whom a request counts against: its key (hashed: no key is kept in memory as given), or
    its client address when it has none."""
    key = request.headers.get("x-api-key")
    if key:
        return "key:" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
    return "addr:" + (request.client.host if request.client else "?")


async def read_body(request: Request, max_bytes: int, timeout: float) -> bytes:
    """The body, refused past `max_bytes` (413) or when it takes longer than `timeout` (408)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, f"Bad Content-Length {declared[:20]!r}", "BadInput")
        if int(declared) > max_bytes:
            raise ApiError(413, _too_large(max_bytes), "BodyTooLarge")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise ApiError(413, _too_large(max_bytes), "BodyTooLarge")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, f"The request body did not arrive within {timeout:g} s",
                       "RequestTimeout") from None
    except ClientDisconnect:
        raise ApiError(400, "The client left before sending the whole body", "BadInput") from None
    return b"".join(chunks)


def _too_large(max_bytes: int) -> str:
    return f"Request body too large: at most {max_bytes} bytes (api.max_body_bytes)"
