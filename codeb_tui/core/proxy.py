"""The whole Caddy configuration, generated from the registry (never patched as strings).

One server on `caddy.listen`; per project+environment a route on its production domain to the
active slot, and a route on each deployed slot's preview domain. Anything else gets a 404.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from codeb_tui.config import Config
from codeb_tui.core.model import ProjectSlots, SlotState

SERVER_NAME = "codeb"


def _host(url: str) -> str:
    return urlsplit(url).hostname or url


def _route(host: str, dial: str, tag: str, close_connections: bool) -> dict[str, Any]:
    handlers: list[dict[str, Any]] = []
    if close_connections:
        handlers.append({"handler": "headers", "response": {"set": {"Connection": ["close"]}}})
    handlers.append({
        "handler": "reverse_proxy",
        "upstreams": [{"dial": dial}],
        "headers": {"request": {"set": {"X-Codeb-Slot": [tag]}}},
    })
    return {"@id": f"codeb-{tag}", "match": [{"host": [host]}], "handle": handlers, "terminal": True}


def routes_for(config: Config, all_slots: list[ProjectSlots]) -> list[tuple[str, int, str]]:
    """(host, port, tag) for every route, sorted so the config is stable."""
    routes = []
    for pair in all_slots:
        env = pair.environment
        active = pair.active
        if active is not None:
            host = _host(config.production_url(pair.project, env))
            routes.append((host, active.port, f"{pair.project}-{env.suffix}-{active.name.value}"))
        for slot in pair.slots():
            if slot.state in (SlotState.DEPLOYED, SlotState.ACTIVE, SlotState.GRACE):
                host = _host(config.preview_url(pair.project, env, slot.name.value))
                routes.append((host, slot.port, f"{pair.project}-{env.suffix}-{slot.name.value}-preview"))
    return sorted(routes)


def build_caddy_config(config: Config, all_slots: list[ProjectSlots]) -> dict[str, Any]:
    bind = config.docker.bind_address
    routes = [
        _route(host, f"{bind}:{port}", tag, config.caddy.close_connections)
        for host, port, tag in routes_for(config, all_slots)
    ]
    routes.append({
        "handle": [{"handler": "static_response", "status_code": 404,
                    "body": "codeb: no site for this host\n"}],
    })
    admin_listen = urlsplit(config.caddy.admin).netloc
    return {
        "admin": {"listen": admin_listen},
        "apps": {
            "http": {
                "servers": {
                    SERVER_NAME: {
                        "listen": [config.caddy.listen],
                        "automatic_https": {"disable": True},
                        "routes": routes,
                    }
                }
            }
        },
    }
