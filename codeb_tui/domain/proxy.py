"""The whole Caddy configuration, generated from the registry (never patched as strings).

One server on `caddy.listen`. Two ways to route a project+environment (`caddy.switch_mode`):

- `file` (default): the production host has a route to each slot, each gated by a marker file
  (`<project>-<suffix>.<slot>.live`) that Caddy's `file` matcher checks on every request; preview
  hosts likewise (`.preview`). The config then depends only on which project+environments exist,
  so a promote or a rollback creates one marker and removes the other: no reload, no connection
  cut. Blue's route comes first, so while both markers exist for an instant blue answers.
- `reload`: the production host routes to the active slot and each preview host to its slot;
  every switch loads a new config.

With `api.domain` set, that host goes to `codeb serve` (`api.listen`). Anything else gets a 404.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from codeb_tui.domain.config import Config
from codeb_tui.domain.model import Environment, ProjectSlots, SlotName, SlotState

SERVER_NAME = "codeb"
LIVE_STATES = (SlotState.DEPLOYED, SlotState.ACTIVE, SlotState.GRACE)


@dataclass(frozen=True, order=True)
class Route:
    host: str
    port: int
    tag: str  # codeb-<project>-<suffix>-<slot>[-preview]
    marker: str | None  # file mode: the marker file gating this route


def _host(url: str) -> str:
    """urlsplit(url).hostname or url, for the scheme://host[:port] that config.production_url
    and preview_url build: by hand, since urlsplit costs ~7 us and reconcile over 10,000 slots
    asks for 15,000 hosts."""
    host = url.partition("://")[2].partition("/")[0].rpartition("@")[2]
    if host.startswith("["):  # an IPv6 literal
        return host[1:host.find("]")].lower() if "]" in host else url
    return host.partition(":")[0].lower() or url


MARKER_KINDS = ("live", "preview")


def marker_name(pair: ProjectSlots, slot: SlotName, kind: str) -> str:
    return _marker(route_tag_prefix(pair.project, pair.environment), slot, kind)


def project_markers(project: str, environment: Environment) -> set[str]:
    """Every marker name one project+environment can have."""
    prefix = route_tag_prefix(project, environment)
    return {_marker(prefix, slot, kind) for slot in SlotName for kind in MARKER_KINDS}


def _marker(prefix: str, slot: SlotName, kind: str) -> str:
    return f"{prefix}.{slot.value}.{kind}"


def wanted_markers(all_slots: list[ProjectSlots]) -> set[str]:
    """The marker files that should exist for the registry as given (file mode)."""
    names = set()
    for pair in all_slots:
        for slot in pair.slots():
            if slot.state is SlotState.ACTIVE:
                names.add(marker_name(pair, slot.name, "live"))
            if slot.state in LIVE_STATES:
                names.add(marker_name(pair, slot.name, "preview"))
    return names


def routes_for(config: Config, all_slots: list[ProjectSlots]) -> list[Route]:
    """Every route, in the order Caddy tries them (stable, so an unchanged registry gives an
    identical config and Caddy does not reload)."""
    file_mode = config.caddy.switch_mode == "file"
    routes = []
    for pair in sorted(all_slots, key=lambda p: (p.project, p.environment.value)):
        env = pair.environment
        production = _host(config.production_url(pair.project, env))
        for slot in pair.slots():  # blue first
            tag = f"{route_tag_prefix(pair.project, env)}-{slot.name.value}"
            preview = _host(config.preview_url(pair.project, env, slot.name.value))
            if file_mode:
                routes.append(Route(production, slot.port, tag, marker_name(pair, slot.name, "live")))
                routes.append(Route(preview, slot.port, tag + "-preview",
                                    marker_name(pair, slot.name, "preview")))
                continue
            if slot.state is SlotState.ACTIVE:
                routes.append(Route(production, slot.port, tag, None))
            if slot.state in LIVE_STATES:
                routes.append(Route(preview, slot.port, tag + "-preview", None))
    return routes


def live_routes(config: Config, all_slots: list[ProjectSlots]) -> dict[str, tuple[int, str]]:
    """host -> (port, route tag) as traffic flows for this registry, in either mode: in file
    mode a route counts only if its marker should exist (reconcile compares this with Caddy)."""
    markers = wanted_markers(all_slots)
    live: dict[str, tuple[int, str]] = {}
    for route in routes_for(config, all_slots):
        if route.marker is None or route.marker in markers:
            live.setdefault(route.host.lower(), (route.port, route.tag))
    return live


def _caddy_route(route: Route, config: Config) -> dict[str, Any]:
    match: dict[str, Any] = {"host": [route.host]}
    if route.marker is not None:
        match["file"] = {"root": str(config.caddy.markers), "try_files": ["/" + route.marker]}
    handlers: list[dict[str, Any]] = []
    if config.caddy.close_connections:
        handlers.append({"handler": "headers", "response": {"set": {"Connection": ["close"]}}})
    handlers.append({
        "handler": "reverse_proxy",
        "upstreams": [{"dial": f"{config.docker.bind_address}:{route.port}"}],
        "headers": {"request": {"set": {"X-Codeb-Slot": [route.tag]}}},
    })
    return {"@id": route.tag, "match": [match], "handle": handlers, "terminal": True}


def build_caddy_config(config: Config, all_slots: list[ProjectSlots],
                       kept_routes: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """The whole config for the registry. `kept_routes` are taken over as they are from the live
    config: those of a project whose slot file cannot be read right now stay online."""
    routes = [_caddy_route(route, config) for route in routes_for(config, all_slots)]
    routes.extend(kept_routes)
    if config.api.domain:
        routes.append(_api_route(config))
    routes.append({
        "handle": [{"handler": "static_response", "status_code": 404,
                    "body": "codeb: no site for this host\n"}],
    })
    return {
        "admin": {"listen": urlsplit(config.caddy.admin).netloc},
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


def live_parts(config: Config, pair: ProjectSlots) -> list[tuple[str, Any]]:
    """What Caddy's admin API answers for the parts of build_caddy_config's output a switch of
    `pair` relies on, as (path, object; None where there is none): each of the pair's routes by
    its @id (`/id/<tag>`), the server's listen address and the API route. A file-mode switch
    that keeps the pair's ports finds all of them live and sets markers only; the other
    project+environments' routes are checked by their own switches."""
    parts: list[tuple[str, Any]] = [(f"/id/{route.tag}", _caddy_route(route, config))
                                    for route in routes_for(config, [pair])]
    parts.append((f"/config/apps/http/servers/{SERVER_NAME}/listen", [config.caddy.listen]))
    parts.append((f"/id/{API_ROUTE_ID}", _api_route(config) if config.api.domain else None))
    return parts


API_ROUTE_ID = "codeb-api"


def _api_route(config: Config) -> dict[str, Any]:
    """`api.domain` to the API server. The host matcher sits inside a subroute: reconcile holds
    every top-level host route to be a slot's, and this one is not."""
    inner = {"match": [{"host": [config.api.domain]}],
             "handle": [{"handler": "reverse_proxy",
                         "upstreams": [{"dial": config.api.dial}]}],
             "terminal": True}
    return {"@id": API_ROUTE_ID, "handle": [{"handler": "subroute", "routes": [inner]}]}


def route_tag_prefix(project: str, environment: Environment) -> str:
    """Every route and marker of one project+environment starts with this."""
    return f"{project}-{environment.suffix}"


def routes_of(caddy_config: dict[str, Any] | None, prefixes: set[str]) -> list[dict[str, Any]]:
    """The routes of a (live) config that belong to these project+environments."""
    if not caddy_config or not prefixes:
        return []
    try:
        routes = caddy_config["apps"]["http"]["servers"][SERVER_NAME]["routes"]
    except (KeyError, TypeError):
        return []
    return [r for r in routes if isinstance(r, dict) and _owner(str(r.get("@id", ""))) in prefixes]


def _owner(tag: str) -> str:
    """`shop-prod` of the route tags `shop-prod-blue` and `shop-prod-green-preview`."""
    return tag.removesuffix("-preview").rsplit("-", 1)[0]


def route_count(caddy_config: dict[str, Any]) -> int:
    return len(caddy_config["apps"]["http"]["servers"][SERVER_NAME]["routes"]) - 1
