"""The operator's actions on one project+environment row, shared by the keys of the main view and
the command palette: each asks what it must (image, confirmation) and starts the operation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from codeb_tui.tui.rows import ProjectRow, SlotView, group_rows
from codeb_tui.tui.screens.confirm import ConfirmModal
from codeb_tui.tui.screens.deploy import DeployModal
from codeb_tui.tui.screens.logs import LogsScreen

if TYPE_CHECKING:
    from codeb_tui.tui.app import CodebApp

ACTIONS = {
    "deploy": "Deploy an image into the idle slot",
    "promote": "Send production traffic to the deployed slot",
    "rollback": "Send production traffic back to the grace slot",
    "cleanup": "Empty the grace (or deployed) slot",
    "logs": "Follow the container's output",
}


def describe(slot: SlotView) -> str:
    health = slot.health_detail or slot.health
    if slot.latency_ms is not None and slot.health == "healthy":
        health = f"{health} in {slot.latency_ms:.0f} ms"
    return f"{slot.name} (port {slot.port}) {slot.image or '-'}  [{slot.state}, {health}]"


def _typed(row: ProjectRow) -> str | None:
    """Production asks for the project name to be typed."""
    return row.project if row.environment == "production" else None


def deploy(app: CodebApp, row: ProjectRow) -> None:
    target = row.deploy_target()
    current = row.deployed.image if row.deployed else (row.active.image if row.active else None)

    def chosen(image: str | None) -> None:
        if image:
            deploy_image(app, row, image)

    app.push_screen(DeployModal(row, target, current), chosen)


def deploy_image(app: CodebApp, row: ProjectRow, image: str) -> None:
    """Deploy `image` into the row's idle slot; a grace slot (the rollback target) asks first."""
    target = row.deploy_target()
    if target.state == "grace":
        lines = [
            f"Deploy {image} to {row.project} ({row.environment}), slot {target.name}.",
            f"Slot {target.name} is in GRACE: it holds the rollback target {target.image}.",
            "Deploying into it destroys the rollback target.",
        ]
        app.push_screen(
            ConfirmModal("Deploy into the grace slot?", lines, confirm_label="Deploy",
                         require_text=_typed(row)),
            lambda ok: ok and app.start_operation("deploy", row.project, row.environment,
                                                  image=image, confirm_grace=True))
    else:
        app.start_operation("deploy", row.project, row.environment, image=image)


def deploy_new(app: CodebApp, environment: str | None = None) -> None:
    """Ask for project, environment and image; a project+environment that already has slots
    deploys like `d` on its row (grace confirmation included), a new one allocates ports."""
    from codeb_tui.tui.screens.new_deploy import NewDeployModal

    def chosen(answer: tuple[str, str, str] | None) -> None:
        if not answer:
            return
        project, env, image = answer
        row = next((r for r in group_rows(app.status_rows)
                    if (r.project, r.environment) == (project, env)), None)
        if row is not None:
            app.notify(f"{project} ({env}) exists: deploying into its idle slot {row.deploy_target().name}",
                       timeout=4)
            deploy_image(app, row, image)
        else:
            app.start_operation("deploy", project, env, image=image)

    app.push_screen(NewDeployModal(environment or "production"), chosen)


def promote(app: CodebApp, row: ProjectRow) -> None:
    target = row.deployed
    if target is None:
        app.notify(f"Cannot promote {row.project} ({row.environment}): no deployed slot "
                   f"(blue is {row.blue.state}, green is {row.green.state}). Run deploy first",
                   severity="warning", title="Refused")
        return
    active = row.active
    lines = [f"Promote {row.project} ({row.environment}):",
             f"  to    {describe(target)}  -> active"]
    if active is not None:
        lines.append(f"  from  {describe(active)}  -> grace for {app.config.grace_hours:g} h")
    else:
        lines.append("  no slot is active yet: this is the first production traffic")
    if row.grace is not None:
        lines.append(f"  the current grace slot {row.grace.name} ({row.grace.image}) is unaffected")
    if target.health == "unhealthy":
        lines.append(f"  warning: {target.name} is {target.health}; the final health check will refuse it")
    _confirm(app, row, "Promote?", lines, "Promote", "promote")


def rollback(app: CodebApp, row: ProjectRow) -> None:
    grace = row.grace
    if grace is None:
        app.notify(f"No grace slot: cannot roll back {row.project} ({row.environment})",
                   severity="warning", title="Refused")
        return
    active = row.active
    lines = [f"Roll back {row.project} ({row.environment}):",
             f"  to    {describe(grace)}  -> active"]
    if active is not None:
        lines.append(f"  from  {describe(active)}  -> grace for {app.config.grace_hours:g} h")
    if grace.health == "unhealthy":
        lines.append(f"  warning: {grace.name} is {grace.health}; the engine refuses an unhealthy grace slot")
    _confirm(app, row, "Roll back?", lines, "Roll back", "rollback")


def cleanup(app: CodebApp, row: ProjectRow) -> None:
    slot = row.grace or row.deployed
    if slot is None:
        app.notify(f"Nothing to clean up in {row.project} ({row.environment}): no grace or deployed slot",
                   severity="warning", title="Refused")
        return
    lines = [f"Clean up {row.project} ({row.environment}):",
             f"  remove {describe(slot)}  -> empty"]
    if slot.state == "grace":
        left = row.grace_left(app.now())
        lines.append(f"  grace left: {left}; after this, rollback is no longer possible")
    else:
        lines.append("  the deployed (not yet promoted) container and its preview URL go away")
    _confirm(app, row, "Clean up?", lines, "Clean up", "cleanup", force=True, slot=slot.name)


def _confirm(app: CodebApp, row: ProjectRow, title: str, lines: list[str], label: str,
             operation: str, **kwargs) -> None:
    def answered(ok: bool | None) -> None:
        if ok:
            app.start_operation(operation, row.project, row.environment, **kwargs)

    app.push_screen(ConfirmModal(title, lines, confirm_label=label, require_text=_typed(row)), answered)


def logs(app: CodebApp, row: ProjectRow) -> None:
    with_container = [s for s in (row.active, row.deployed, row.grace) if s is not None]
    if not with_container:
        app.notify(f"{row.project} ({row.environment}) has no container", severity="warning")
        return
    app.push_screen(LogsScreen(row, with_container[0].name))
