"""The proxy step of a switch (engine/proxy_switch.py) against the real Caddy: a promote that
keeps the project's ports sets the markers only while Caddy runs the project's routes exactly as
built, and takes the full path (the whole config from the registry, loaded) when it does not."""

from __future__ import annotations

import json

import httpx

from codeb_tui.domain import events
from codeb_tui.domain.model import Environment
from codeb_tui.domain.proxy import build_caddy_config

from conftest import LOCAL, collect, image, ok, through_caddy

PROD = Environment.PRODUCTION
NO_RELOAD = "proxy routes unchanged: no reload"


def logs(evs) -> list[str]:
    return [e.message for e in evs if isinstance(e, events.Log)]


def live_config(caddy) -> dict:
    return httpx.get(f"{caddy['admin']}/config/", timeout=5, trust_env=False).json()


def load(caddy, config: dict) -> None:
    httpx.post(f"{caddy['admin']}/load", json=config, timeout=5,
               trust_env=False).raise_for_status()


def markers(engine, project) -> list[str]:
    return sorted(p.name for p in engine.config.caddy.markers.iterdir()
                  if p.name.startswith(f"{project}-prod."))


async def green_deployed_blue_live(engine, project) -> None:
    ok(await collect(engine.deploy(LOCAL, project, image("v1"))))
    ok(await collect(engine.promote(LOCAL, project)))
    ok(await collect(engine.deploy(LOCAL, project, image("v2"))))


def assert_promoted_to_green(engine, caddy, project) -> None:
    """Caddy runs the registry's config, the live copy is what it runs, the markers send
    production to green."""
    wanted = build_caddy_config(engine.config, engine.context.registry.read_all())
    assert live_config(caddy) == wanted
    live_copy = engine.config.caddy.config_dir / "caddy.json"
    assert json.loads(live_copy.read_text()) == wanted
    assert markers(engine, project) == [f"{project}-prod.blue.preview",
                                        f"{project}-prod.green.live",
                                        f"{project}-prod.green.preview"]
    assert through_caddy(f"{project}.prod.test").text.startswith("healthy v2 slot=green")


async def test_a_promote_with_the_routes_live_sets_the_markers_only(engine, prefix, caddy):
    project = f"{prefix}-fast"
    other = f"{prefix}-other"
    await green_deployed_blue_live(engine, project)
    ok(await collect(engine.deploy(LOCAL, other, image("v1"))))
    before = httpx.get(f"{caddy['admin']}/config/", timeout=5, trust_env=False).content
    # Another project's broken slot file is no concern of this switch: it reads only its own.
    engine.context.registry.slot_path(other, PROD).write_text("{")

    ok(evs := await collect(engine.promote(LOCAL, project)))
    assert NO_RELOAD in logs(evs)
    assert httpx.get(f"{caddy['admin']}/config/", timeout=5, trust_env=False).content == before
    assert markers(engine, project) == [f"{project}-prod.blue.preview",
                                        f"{project}-prod.green.live",
                                        f"{project}-prod.green.preview"]
    assert through_caddy(f"{project}.prod.test").text.startswith("healthy v2 slot=green")
    assert through_caddy(f"blue.{other}.prod-preview.test").text.startswith("healthy v1")


async def test_a_route_changed_behind_codebs_back_is_loaded_again_by_the_promote(engine, prefix,
                                                                                 caddy):
    project = f"{prefix}-edited"
    await green_deployed_blue_live(engine, project)
    pair = engine.context.registry.read_slots(project, PROD)
    # Someone points green's production route at blue's container by hand: markers alone
    # would send production to v1 after the promote.
    config = live_config(caddy)
    for route in config["apps"]["http"]["servers"]["codeb"]["routes"]:
        if route.get("@id") == f"{project}-prod-green":
            route["handle"][-1]["upstreams"][0]["dial"] = f"127.0.0.1:{pair.blue.port}"
    load(caddy, config)

    ok(evs := await collect(engine.promote(LOCAL, project)))
    assert NO_RELOAD not in logs(evs)
    assert any(line.startswith("proxy config applied") for line in logs(evs))
    assert_promoted_to_green(engine, caddy, project)


async def test_caddy_restarted_empty_gets_config_and_markers_from_the_promote(engine, prefix,
                                                                              caddy):
    project = f"{prefix}-cold"
    await green_deployed_blue_live(engine, project)
    load(caddy, {"admin": {"listen": caddy["admin"].split("//")[1]}})

    ok(evs := await collect(engine.promote(LOCAL, project)))
    assert NO_RELOAD not in logs(evs)
    assert_promoted_to_green(engine, caddy, project)


async def test_a_changed_listen_address_is_loaded_by_the_promote(make_config, prefix, caddy):
    """The server around the routes counts too: a config change that touches no route is
    applied by the next switch, as before the fast path."""
    from codeb_tui.engine.facade import Engine

    first = Engine(make_config())
    moved = Engine(make_config(caddy__listen=caddy["listen"].replace("127.0.0.1", "127.0.0.2")))
    try:
        project = f"{prefix}-moved"
        await green_deployed_blue_live(first, project)
        ok(evs := await collect(moved.promote(LOCAL, project)))
        assert NO_RELOAD not in logs(evs)
        assert live_config(caddy)["apps"]["http"]["servers"]["codeb"]["listen"] == [
            moved.config.caddy.listen]
    finally:
        load(caddy, build_caddy_config(first.config, first.context.registry.read_all()))
        await first.aclose()
        await moved.aclose()
