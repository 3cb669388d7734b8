"""`codeb serve`: uvicorn in the caller's event loop (the loop the engine lives in), until
SIGTERM or SIGINT: then it stops accepting, lets running operations end, and returns."""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from codeb_tui.api.app import create_app
from codeb_tui.domain.config import Config, listen_address

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline on each request's headers. uvicorn times out
    only idle keep-alive connections, and any byte restarts that clock, so a client that opens a
    connection and trickles a header (or says nothing) would hold it for ever."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self._in_request():
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self._in_request():
            self._arm()

    def _in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.timeout_keep_alive, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self._in_request() and not self.transport.is_closing():
            self.transport.close()


def log_config() -> dict[str, Any]:
    handler = {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": LOG_FORMAT}},
        "handlers": {"stderr": handler},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "codeb": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        },
    }


def uvicorn_config(config: Config, app: Any = None) -> uvicorn.Config:
    host, port = listen_address(config.api.listen)
    api = config.api
    return uvicorn.Config(
        app if app is not None else create_app(config),
        host=host or "0.0.0.0",
        port=port,
        http=DeadlineH11Protocol,
        lifespan="on",
        # The access log would be harmless (no headers), but one line per request is ours
        # (app.RequestLog), with the key's public label.
        access_log=False,
        log_config=log_config(),
        server_header=False,
        timeout_keep_alive=api.idle_timeout,  # type: ignore[arg-type]
        # Requests still running at shutdown get this long; operations run on regardless and
        # the app's lifespan waits for them.
        timeout_graceful_shutdown=int(api.request_timeout),
        h11_max_incomplete_event_size=16 * 1024,
    )


async def serve(config: Config) -> None:
    """Serve until SIGTERM or SIGINT, then drain and return (the caller exits 0)."""
    server = uvicorn.Server(uvicorn_config(config))
    # uvicorn raises the signal that stopped it again once it has shut down, under the handler
    # that was there before it: the default one would end the process by that signal instead
    # of the clean exit that follows a drain.
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, _after_drain) for sig in (signal.SIGTERM,
                                                                       signal.SIGINT)}
    try:
        await server.serve()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _after_drain(signum: int, frame: Any) -> None:
    """The signal uvicorn raises again after its graceful shutdown: already handled."""
