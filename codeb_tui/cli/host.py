"""`codeb host list | check | trust`: the machines codeb deploys to (config `hosts:`, and
`local`), whether each answers, and recording a host's SSH key after the operator checked it.

They read this machine's config and known_hosts, so they run here, never through --server.
"""

from __future__ import annotations

import sys

import click

from codeb_tui.cli import remote, render
from codeb_tui.cli.app import Session, codeb, command, run, session
from codeb_tui.domain.errors import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, BadInput
from codeb_tui.domain.hosts import HostCheck, HostKeyOffer


@codeb.group(help="remote hosts (config hosts:): list, check, trust")
def host() -> None:
    pass


def _here() -> Session:
    if remote.server_url():
        raise BadInput("codeb host reads this machine's config and known_hosts: run it without "
                       "--server")
    return session()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def checks_text(checks: list[HostCheck]) -> str:
    return render.table(
        [(c.name, c.target, "ok" if c.ok else ("problem" if c.reachable else "unreachable"),
          _ms(c.latency_ms), c.docker_version or "-",
          (c.caddy_version or "?") if c.caddy_admin else "-", c.error or "")
         for c in checks],
        ("HOST", "TARGET", "STATE", "LATENCY", "DOCKER", "CADDY", "DETAIL"))


@command(host, "list", "the hosts of the config")
def host_list() -> int:
    async def work(engine, s: Session) -> None:
        infos = await engine.hosts(s.principal)
        render.emit(s.as_json, {"hosts": [i.to_json() for i in infos]},
                    lambda: render.table([(i.name, i.target, i.known_hosts or "-") for i in infos],
                                         ("HOST", "TARGET", "KNOWN_HOSTS")))
    return run(work, _here())


@command(host, "check", "reachability, Docker and Caddy versions, latency of each host")
@click.argument("names", nargs=-1, metavar="[NAME]...")
def host_check(names: tuple[str, ...]) -> int:
    async def work(engine, s: Session) -> int:
        checks = await engine.check_hosts(s.principal, list(names))
        render.emit(s.as_json, {"hosts": [c.to_json() for c in checks]},
                    lambda: checks_text(checks))
        return EXIT_OK if all(c.ok for c in checks) else EXIT_FAILED
    return run(work, _here())


def _offer_text(offer: HostKeyOffer) -> str:
    lines = [f"{offer.name} ({offer.target}) offers {offer.fingerprint}"]
    if offer.already_trusted:
        lines.append(f"already trusted in {offer.known_hosts}")
    elif offer.known:
        lines.append(f"WARNING: the key CHANGED: {offer.known_hosts} records "
                     f"{', '.join(offer.known)}. Trust the new one only if you know why (the host "
                     "was reinstalled); otherwise someone may be in between.")
    else:
        lines.append(f"not in {offer.known_hosts} yet; compare the fingerprint with the host's own "
                     "(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on it)")
    return "\n".join(lines)


@command(host, "trust", "show a host's SSH key fingerprint and record it in known_hosts")
@click.argument("name")
@click.option("--yes", is_flag=True, help="record it without asking (scripts)")
def host_trust(name: str, yes: bool) -> int:
    s = _here()

    offers: list[HostKeyOffer] = []

    async def fetch(engine, s: Session) -> None:
        offers.append(await engine.host_key(s.principal, name))

    # Two engine runs, the question between them: nothing waits on the operator's answer.
    run(fetch, s)
    offer = offers[0]
    if offer.already_trusted and len(offer.known) == 1:
        render.emit(s.as_json, {**offer.to_json(), "recorded": False}, _offer_text(offer))
        return EXIT_OK
    if not s.as_json:
        print(_offer_text(offer), flush=True)
    if not yes:
        if not sys.stdin.isatty():
            raise BadInput(f"host trust {name}: not at a terminal; check the fingerprint, then "
                           f"confirm it with --yes")
        if not click.confirm(f"Record {offer.fingerprint} for {name} in {offer.known_hosts}?",
                             default=False):
            print("nothing recorded", flush=True)
            return EXIT_REFUSED

    async def trust(engine, s: Session) -> None:
        # Only the key shown: a host that offers another one by now is refused.
        trusted = await engine.trust_host(s.principal, name, offer.fingerprint)
        render.emit(s.as_json, {**trusted.to_json(), "recorded": True},
                    f"recorded {trusted.fingerprint} for {name} in {trusted.known_hosts}")
    return run(trust, s)
