"""The `codeb` command: the console by default, the engine's operations headless (design.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator

from codeb_tui.admin_cli import ADMIN_COMMANDS, add_admin_commands, add_api_key_option, api_key_of, run_admin
from codeb_tui.domain.config import Config, load_config
from codeb_tui.reconcile_cli import add_reconcile_command, run_reconcile
from codeb_tui.domain import events
from codeb_tui.engine.facade import Engine, dumps_event
from codeb_tui.engine.access import authorize
from codeb_tui.domain.errors import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, AccessDenied, CodebError
from codeb_tui.store.base import StoreError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other refusal
        sys.stderr.write(f"codeb: {message}\n")
        raise SystemExit(EXIT_REFUSED)


def build_parser() -> argparse.ArgumentParser:
    def global_options(suppress: bool) -> argparse.ArgumentParser:
        # Accepted before and after the subcommand; the subcommand's copy must not reset a value
        # given before it, hence SUPPRESS there.
        options = argparse.ArgumentParser(add_help=False)
        default = {"default": argparse.SUPPRESS} if suppress else {}
        options.add_argument("--config", help="config file (default: $CODEB_CONFIG, then "
                             "~/.config/codeb/config.yaml)", **default)
        options.add_argument("--json", action="store_true", help="one JSON object per line",
                             **default)
        return options

    common = global_options(suppress=True)
    parser = _Parser(prog="codeb", parents=[global_options(suppress=False)],
                     description="Blue-green deploys of Docker containers behind Caddy.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    def env_arg(p: argparse.ArgumentParser, default: str | None = "production") -> None:
        p.add_argument("--env", default=default, help="production | staging | preview")

    p = sub.add_parser("deploy", parents=[common], help="deploy an image into the idle slot")
    p.add_argument("project")
    p.add_argument("--image", required=True)
    env_arg(p)
    p.add_argument("--yes", action="store_true", help="confirm deploying into a grace slot")

    for name, text in (("promote", "send production traffic to the deployed slot"),
                       ("rollback", "send production traffic back to the grace slot")):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("project")
        env_arg(p)

    p = sub.add_parser("cleanup", parents=[common], help="empty expired grace slots")
    p.add_argument("project", nargs="?")
    env_arg(p, default=None)
    p.add_argument("--force", action="store_true", help="also grace slots that have not expired")
    p.add_argument("--slot", choices=["blue", "green"], help="with PROJECT and --force: this slot")

    p = sub.add_parser("status", parents=[common], help="every slot with its live health")
    p.add_argument("project", nargs="?")
    env_arg(p, default=None)

    sub.add_parser("ports", parents=[common], help="port ranges, allocations and conflicts")
    add_reconcile_command(sub, common)
    for name in ("deploy", "promote", "rollback", "cleanup", "status", "ports", "reconcile"):
        add_api_key_option(sub.choices[name])
    add_admin_commands(sub, common)
    return parser


async def _print_stream(stream: AsyncIterator[events.Event], as_json: bool) -> int:
    terminal: events.Event | None = None
    async for event in stream:
        if as_json:
            print(dumps_event(event), flush=True)
        elif not isinstance(event, (events.Finished, events.Failed)):
            print(event.line(), flush=True)
        if isinstance(event, (events.Finished, events.Failed)):
            terminal = event
    if isinstance(terminal, events.Finished):
        if not as_json:
            print(terminal.line())
        for warning in terminal.warnings:
            sys.stderr.write(f"warning: {warning}\n")
        return EXIT_OK
    if isinstance(terminal, events.Failed):
        for warning in terminal.warnings:
            sys.stderr.write(f"warning: {warning}\n")
        sys.stderr.write(f"codeb: {terminal.error}\n")
        return terminal.exit_code
    return EXIT_FAILED


async def _reconcile(args: argparse.Namespace, config: Config) -> int:
    key = api_key_of(args)
    if key is not None:  # repairing and pruning change things: admins only (docs/access.md)
        action = "reconcile.prune" if args.prune else "reconcile.repair" if args.repair else "reconcile"
        engine = Engine(config)
        try:
            await authorize(await _store_or_denied(engine), key, action, None)
        finally:
            await engine.aclose()
    return await run_reconcile(args, config)


async def _store_or_denied(engine: Engine):
    try:
        return await engine.store()
    except StoreError as exc:
        raise AccessDenied(f"Access Denied: cannot verify the API key: {exc}") from None


def _status_table(rows: list[dict]) -> str:
    if not rows:
        return "no slots yet: deploy a project first"
    header = ("PROJECT", "ENV", "SLOT", "STATE", "PORT", "IMAGE", "HEALTH", "URL")
    lines = [header]
    for r in rows:
        health = r["health"] if not r["health_detail"] else f"{r['health']} ({r['health_detail']})"
        lines.append((r["project"], r["environment"], r["slot"], r["state"], str(r["port"]),
                      r["image"] or "-", health, r["url"] or "-"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def _ports_text(report: dict) -> str:
    out = []
    for env in report["environments"]:
        low, high = env["range"]
        out.append(f"{env['environment']} {low}-{high}: {len(env['used_pairs'])} pairs used, "
                   f"{env['free_pairs']} free")
        for pair in env["used_pairs"]:
            who = pair["project"] or "(not codeb)"
            out.append(f"  {pair['blue']}/{pair['green']}  {who}")
    if report["conflicts"]:
        out.append("conflicts:")
        out.extend(f"  {c['port']}  {c['kind']}: {c['detail']}" for c in report["conflicts"])
    else:
        out.append("no conflicts")
    return "\n".join(out)


async def _run(args: argparse.Namespace, config: Config) -> int:
    engine = Engine(config, api_key=api_key_of(args))
    try:
        if args.command == "deploy":
            return await _print_stream(
                engine.deploy(args.project, args.image, args.env, confirm_grace=args.yes), args.json)
        if args.command == "promote":
            return await _print_stream(engine.promote(args.project, args.env), args.json)
        if args.command == "rollback":
            return await _print_stream(engine.rollback(args.project, args.env), args.json)
        if args.command == "cleanup":
            return await _print_stream(
                engine.cleanup(args.project, args.env, force=args.force, slot=args.slot), args.json)
        if args.command in ("status", "ports") and engine.api_key is not None:
            await authorize(await _store_or_denied(engine), engine.api_key, args.command,
                            getattr(args, "env", None))
        if args.command == "status":
            rows = await engine.status(args.project, args.env)
            print(json.dumps({"slots": rows}, default=str) if args.json else _status_table(rows))
            return EXIT_OK
        if args.command == "ports":
            report = await engine.ports_report()
            print(json.dumps(report) if args.json else _ports_text(report))
            return EXIT_OK
        raise AssertionError(args.command)
    finally:
        await engine.aclose()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        if args.command is None:
            return _console(config)
        if args.command in ADMIN_COMMANDS:
            return asyncio.run(run_admin(args, config))
        if args.command == "reconcile":
            return asyncio.run(_reconcile(args, config))
        return asyncio.run(_run(args, config))
    except CodebError as exc:
        sys.stderr.write(f"codeb: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("codeb: interrupted\n")
        return 130


def _console(config: Config) -> int:
    try:
        from codeb_tui.tui.app import run_console
    except ImportError:  # the console is optional for headless installs
        return asyncio.run(_run(build_parser().parse_args(["status"]), config))
    return run_console(config)


if __name__ == "__main__":
    raise SystemExit(main())
