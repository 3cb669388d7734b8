"""`codeb reconcile`: the slot files against the database, the containers and the proxy.

    codeb reconcile [PROJECT|PATTERN ...] [--repair] [--prune] [--db-only] [--json]

Exit 0 when everything agrees (or every drift was repaired), 1 when drift remains. Wired into
cli.py with `add_reconcile_command(sub, common)` and `run_reconcile(args, config)`.
"""

from __future__ import annotations

import argparse
import json
import sys

from codeb_tui.domain.config import Config
from codeb_tui.engine.facade import Engine
from codeb_tui.domain.errors import EXIT_FAILED, EXIT_OK, CodebError
from codeb_tui.engine.reconcile import ReconcileReport, reconcile


def add_reconcile_command(sub, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "reconcile", parents=[common],
        help="compare the slot files with the database, containers and proxy; --repair fixes",
        description="The slot files are the truth. Lists every disagreement with the database, "
                    "codeb's containers, Caddy's live routes and the ports in use. --repair "
                    "brings the database in line with the files and re-applies the proxy config; "
                    "--prune removes containers no slot references.")
    p.add_argument("projects", nargs="*", metavar="PROJECT",
                   help="only these projects (names or shell patterns such as 'shop-*')")
    p.add_argument("--repair", action="store_true",
                   help="fix the database from the files and re-apply the proxy config")
    p.add_argument("--prune", action="store_true",
                   help="remove codeb-labelled containers that no slot references")
    p.add_argument("--db-only", action="store_true",
                   help="compare the files with the database only (skip Docker, Caddy, ports)")
    return p


def report_text(report: ReconcileReport) -> str:
    summary = report.summary()
    lines: list[str] = []
    if report.drift:
        header = ("KIND", "PROJECT", "ENV", "SLOT", "STATUS", "DETAIL")
        rows = [header]
        for d in report.drift:
            status = "fixed" if d.fixed else ("fixable" if d.fixable else "cannot fix")
            rows.append((d.kind.value, d.project or "-", d.environment or "-", d.slot or "-",
                         status, d.detail))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1])
    checked = summary["checked"]
    parts = [f"{checked.get('slots', 0)} slots in {checked.get('slot_files', 0)} files"]
    if "db_rows" in checked:
        parts.append(f"{checked['db_rows']} database rows ({summary['database']})")
    if "containers" in checked:
        parts.append(f"{checked['containers']} containers")
    if "routes_live" in checked:
        parts.append(f"{checked['routes_live']} live routes")
    lines.append(f"checked {', '.join(parts)} in {summary['elapsed_ms']:.0f} ms")
    if summary["busy"]:
        lines.append(f"skipped (an operation is running): {', '.join(summary['busy'])}")
    for error in summary["errors"]:
        lines.append(f"error: {error}")
    if report.in_sync:
        lines.append("in sync" if not report.drift else
                     f"in sync: {summary['fixed']} drift(s) repaired")
    else:
        remaining = summary["remaining"]
        fixable = remaining - summary["unfixable"]
        advice = []
        if fixable:
            hint = " / ".join(sorted({"--prune" if d.kind == "orphan_container" else "--repair"
                                      for d in report.remaining if d.fixable}))
            advice.append(f"{fixable} fixable with {hint}")
        if summary["unfixable"]:
            advice.append(f"{summary['unfixable']} need an operator")
        lines.append(f"drift remains: {remaining} ({'; '.join(advice)})")
    return "\n".join(lines)


async def run_reconcile(args: argparse.Namespace, config: Config) -> int:
    engine = Engine(config)
    try:
        report = await reconcile(engine, repair=getattr(args, "repair", False),
                                 prune=getattr(args, "prune", False),
                                 projects=getattr(args, "projects", None) or None,
                                 live=not getattr(args, "db_only", False))
    except CodebError as exc:
        sys.stderr.write(f"codeb: {exc}\n")
        return EXIT_FAILED
    finally:
        await engine.aclose()
    if getattr(args, "json", False):
        print(json.dumps(report.to_json(), default=str))
    else:
        print(report_text(report))
    return EXIT_OK if report.in_sync else EXIT_FAILED
