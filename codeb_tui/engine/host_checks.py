"""`codeb host list | check | trust`: the hosts of the config, whether each answers (Docker and
Caddy versions, latency), and recording a host's SSH key once the operator has checked it.

Checks run on every host at once, each bounded by its own timeouts: a host that is down is
reported unreachable and holds up no other. asyncssh is imported only here and in
infra/ssh_host.py, when a remote host is asked for.
"""

from __future__ import annotations

import asyncio

from codeb_tui.domain.errors import BadInput, CodebError, HostKeyRefused
from codeb_tui.domain.hosts import HostCheck, HostInfo, HostKeyOffer
from codeb_tui.domain.model import LOCAL_HOST
from codeb_tui.engine.context import Context


def host_list(ctx: Context) -> list[HostInfo]:
    infos = [HostInfo(LOCAL_HOST, "this machine", None)]
    for name in sorted(ctx.config.hosts):
        spec = ctx.config.hosts[name]
        infos.append(HostInfo(name, spec.target, str(spec.known_hosts)))
    return infos


def _known(ctx: Context, name: str) -> None:
    if name != LOCAL_HOST and name not in ctx.config.hosts:
        raise BadInput(f"Unknown host {name!r}: declare it under hosts: in the config (known: "
                       f"{', '.join(ctx.host_names())})")


async def check_hosts(ctx: Context, names: list[str] | None = None) -> list[HostCheck]:
    names = ctx.host_names() if not names else names
    for name in names:
        _known(ctx, name)
    return list(await asyncio.gather(*[check_host(ctx, name) for name in names]))


async def check_host(ctx: Context, name: str) -> HostCheck:
    host = ctx.host_named(name)
    spec = ctx.config.hosts.get(name)
    # Connect, then at most three requests one after the other on the connection.
    bound = (spec.connect_timeout + 3 * spec.request_timeout) if spec else 10.0
    try:
        async with asyncio.timeout(bound):
            latency = await host.round_trip()  # opens the connection when there is none
            connect_ms = getattr(host, "last_connect_ms", None)
            docker_version: str | None = None
            error = None
            try:
                docker_version = await host.docker.version()
            except CodebError as exc:
                error = f"Docker: {exc}"
            caddy_admin, caddy_version = await asyncio.gather(host.caddy.ping(),
                                                              host.caddy_version())
    except TimeoutError:
        return HostCheck(name, host.target, False, error=f"no answer within {bound:g} s")
    except CodebError as exc:
        return HostCheck(name, host.target, False, error=str(exc))
    if error is None and not caddy_admin:
        error = "Caddy's admin API does not answer"
    return HostCheck(name, host.target, True, latency_ms=latency, connect_ms=connect_ms,
                     docker_version=docker_version, caddy_version=caddy_version,
                     caddy_admin=caddy_admin, error=error)


def _remote(ctx: Context, name: str):
    _known(ctx, name)
    if name == LOCAL_HOST:
        raise BadInput(f"{LOCAL_HOST} is this machine: it has no SSH key to trust")
    return ctx.config.hosts[name]


async def host_key(ctx: Context, name: str) -> HostKeyOffer:
    """The key `name` offers now (read without logging in) and what known_hosts records."""
    from codeb_tui.infra.ssh_host import fetch_server_key, known_fingerprints

    spec = _remote(ctx, name)
    fingerprint, line = await fetch_server_key(name, spec)
    return HostKeyOffer(name, spec.target, str(spec.known_hosts), fingerprint, line,
                        tuple(known_fingerprints(spec)))


async def trust_host(ctx: Context, name: str, fingerprint: str) -> HostKeyOffer:
    """Record the key `name` offers in known_hosts (replacing what it recorded for the host),
    only if it is still the one the operator confirmed (`fingerprint`)."""
    from codeb_tui.infra.ssh_host import record_host_key

    offer = await host_key(ctx, name)
    if offer.fingerprint != fingerprint:
        raise HostKeyRefused(name, f"Host {name} ({offer.target}) now offers {offer.fingerprint}, "
                                   f"not the {fingerprint} confirmed; nothing recorded",
                             offer.fingerprint)
    if not offer.already_trusted or len(offer.known) > 1:
        await asyncio.to_thread(record_host_key, ctx.config.hosts[name], offer.key_line)
    # A connection refused before may now be opened.
    return await host_key(ctx, name)
