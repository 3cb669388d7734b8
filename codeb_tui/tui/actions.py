"""The operator's actions on one project+environment row, shared by the keys of the main view and
the command palette: each asks what it must (image, confirmation), then posts an
`OperationRequested` from the screen it was started on; the App runs the operation."""

from __future__ import annotations

from collections.abc import Callable

from textual.screen import Screen

from codeb_tui.domain.model import Environment, SlotState
from codeb_tui.domain.status import Health, SlotStatus
from codeb_tui.tui.messages import OperationRequested
from codeb_tui.tui.rows import ProjectRow, describe_slot
from codeb_tui.tui.screens.confirm import ConfirmModal
from codeb_tui.tui.screens.deploy import DeployModal
from codeb_tui.tui.screens.logs import LogsScreen
from codeb_tui.tui.screens.new_deploy import NewDeployModal
from codeb_tui.tui.session import ConsoleSession

RowAction = Callable[[Screen, ConsoleSession, ProjectRow], None]


def on_row(screen: Screen, session: ConsoleSession, action: str, row: ProjectRow) -> None:
    """Run one of ROW_ACTIONS on `row`, unless the principal may not (then say why)."""
    if not session.refused(screen.notify, action, row.environment):
        ROW_ACTIONS[action][0](screen, session, row)


def _request(screen: Screen, row: ProjectRow, operation: str, **options) -> None:
    screen.post_message(OperationRequested(operation, row.project, row.environment, **options))


def _typed(row: ProjectRow) -> str | None:
    """Production asks for the project name to be typed."""
    return row.project if row.environment is Environment.PRODUCTION else None


def deploy(screen: Screen, session: ConsoleSession, row: ProjectRow) -> None:
    current = row.deployed.image if row.deployed else (row.active.image if row.active else None)

    def chosen(image: str | None) -> None:
        if image:
            deploy_image(screen, row, image)

    screen.app.push_screen(DeployModal(session, row, row.deploy_target(), current), chosen)


def deploy_image(screen: Screen, row: ProjectRow, image: str) -> None:
    """Deploy `image` into the row's idle slot; a grace slot (the rollback target) asks first."""
    target = row.deploy_target()
    if target.state is not SlotState.GRACE:
        _request(screen, row, "deploy", image=image)
        return
    lines = [
        f"Deploy {image} to {row.project} ({row.environment}), slot {target.slot}.",
        f"Slot {target.slot} is in GRACE: it holds the rollback target {target.image}.",
        "Deploying into it destroys the rollback target.",
    ]

    def answered(ok: bool | None) -> None:
        if ok:
            _request(screen, row, "deploy", image=image, confirm_grace=True)

    screen.app.push_screen(ConfirmModal("Deploy into the grace slot?", lines, confirm_label="Deploy",
                                        require_text=_typed(row)), answered)


def deploy_new(screen: Screen, session: ConsoleSession, environment: Environment | None = None) -> None:
    """Ask for project, environment and image; a project+environment that already has slots
    deploys like `d` on its row (grace confirmation included), a new one allocates ports."""
    if session.refused(screen.notify, "deploy_new"):
        return

    def chosen(answer: tuple[str, Environment, str] | None) -> None:
        if not answer:
            return
        project, env, image = answer
        if session.refused(screen.notify, "deploy_new", env):
            return
        row = next((r for r in session.rows() if (r.project, r.environment) == (project, env)), None)
        if row is not None:
            screen.notify(f"{project} ({env}) exists: deploying into its idle slot "
                          f"{row.deploy_target().slot}", timeout=4)
            deploy_image(screen, row, image)
        else:
            screen.post_message(OperationRequested("deploy", project, env, image=image))

    screen.app.push_screen(NewDeployModal(session, environment or Environment.PRODUCTION), chosen)


def promote(screen: Screen, session: ConsoleSession, row: ProjectRow) -> None:
    target = row.deployed
    if target is None:
        screen.notify(f"Cannot promote {row.project} ({row.environment}): no deployed slot "
                      f"(blue is {row.blue.state}, green is {row.green.state}). Run deploy first",
                      severity="warning", title="Refused")
        return
    lines = [f"Promote {row.project} ({row.environment}):",
             f"  to    {describe_slot(target)}  -> active"]
    if row.active is not None:
        lines.append(_to_grace(session, row.active))
    else:
        lines.append("  no slot is active yet: this is the first production traffic")
    if row.grace is not None:
        lines.append(f"  the current grace slot {row.grace.slot} ({row.grace.image}) is unaffected")
    if target.health is Health.UNHEALTHY:
        lines.append(f"  warning: {target.slot} is {target.health}; the final health check will refuse it")
    _confirm(screen, row, "Promote?", lines, "Promote", "promote")


def rollback(screen: Screen, session: ConsoleSession, row: ProjectRow) -> None:
    grace = row.grace
    if grace is None:
        screen.notify(f"No grace slot: cannot roll back {row.project} ({row.environment})",
                      severity="warning", title="Refused")
        return
    lines = [f"Roll back {row.project} ({row.environment}):",
             f"  to    {describe_slot(grace)}  -> active"]
    if row.active is not None:
        lines.append(_to_grace(session, row.active))
    if grace.health is Health.UNHEALTHY:
        lines.append(f"  warning: {grace.slot} is {grace.health}; the engine refuses an unhealthy grace slot")
    _confirm(screen, row, "Roll back?", lines, "Roll back", "rollback")


def _to_grace(session: ConsoleSession, active: SlotStatus) -> str:
    return f"  from  {describe_slot(active)}  -> grace for {session.config.grace_hours:g} h"


def cleanup(screen: Screen, session: ConsoleSession, row: ProjectRow) -> None:
    slot = row.grace or row.deployed
    if slot is None:
        screen.notify(f"Nothing to clean up in {row.project} ({row.environment}): no grace or "
                      "deployed slot", severity="warning", title="Refused")
        return
    lines = [f"Clean up {row.project} ({row.environment}):",
             f"  remove {describe_slot(slot)}  -> empty"]
    if slot.state is SlotState.GRACE:
        left = row.grace_left(session.now())
        lines.append(f"  grace left: {left}; after this, rollback is no longer possible")
    else:
        lines.append("  the deployed (not yet promoted) container and its preview URL go away")
    _confirm(screen, row, "Clean up?", lines, "Clean up", "cleanup", force=True, slot=slot.slot.value)


def _confirm(screen: Screen, row: ProjectRow, title: str, lines: list[str], label: str,
             operation: str, **options) -> None:
    def answered(ok: bool | None) -> None:
        if ok:
            _request(screen, row, operation, **options)

    screen.app.push_screen(ConfirmModal(title, lines, confirm_label=label, require_text=_typed(row)),
                           answered)


def logs(screen: Screen, session: ConsoleSession, row: ProjectRow) -> None:
    with_container = [s for s in (row.active, row.deployed, row.grace) if s is not None]
    if not with_container:
        screen.notify(f"{row.project} ({row.environment}) has no container", severity="warning")
        return
    screen.app.push_screen(LogsScreen(session, row, with_container[0].slot))


ROW_ACTIONS: dict[str, tuple[RowAction, str]] = {
    "deploy": (deploy, "Deploy an image into the idle slot"),
    "promote": (promote, "Send production traffic to the deployed slot"),
    "rollback": (rollback, "Send production traffic back to the grace slot"),
    "cleanup": (cleanup, "Empty the grace (or deployed) slot"),
    "logs": (logs, "Follow the container's output"),
}
