"""Deploy a project that has no row to select: project name, environment and image (the image
picker is DeployModal's: the registry's tags, filtered as you type, or free entry)."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.events import Mount
from textual.widgets import Input, Label, OptionList, RadioButton, RadioSet, Static

from codeb_tui.domain.errors import CodebError
from codeb_tui.domain.model import Environment, validate_image_ref, validate_project_name
from codeb_tui.tui.screens.deploy import DeployModal
from codeb_tui.tui.session import ConsoleSession


class NewDeployModal(DeployModal):
    """Returns (project, environment, image), or None. The name is checked with the engine's own
    rule before the dialog closes, so a bad one is shown here and never reaches an operation."""

    def __init__(self, session: ConsoleSession, environment: Environment = Environment.PRODUCTION,
                 project: str = "") -> None:
        super().__init__(session, None, None, None)
        self.environment = environment
        self.project = project

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Deploy a project", id="dialog-title")
            yield Static("A new project gets a blue/green port pair in the environment's range; "
                         "its first deploy goes to blue (preview URL only, no production traffic). "
                         "An existing one deploys into its idle slot.", id="dialog-body")
            yield Input(value=self.project, placeholder="project name: a-z, 0-9 and -, up to 40",
                        id="project", max_length=40)
            yield Static(id="new-deploy-error")
            with RadioSet(id="environment"):
                for env in Environment:
                    yield RadioButton(env.value, value=env is self.environment, name=env.value)
            yield Input(placeholder="image reference, e.g. 127.0.0.1:5000/app:v1", id="image",
                        select_on_focus=False)
            yield OptionList(id="images")
            yield Static("loading tags…", id="images-status")

    def on_mount(self, event: Mount) -> None:
        event.prevent_default()  # not DeployModal's on_mount: the name comes first
        self.query_one("#project", Input).focus()
        self._load()

    def chosen_environment(self) -> Environment:
        pressed = self.query_one(RadioSet).pressed_button
        return Environment(pressed.name) if pressed is not None and pressed.name else self.environment

    def show_error(self, message: str | None) -> None:
        box = self.query_one("#new-deploy-error", Static)
        box.update(message or "")
        box.set_class(bool(message), "-error")

    def checked_project(self) -> str | None:
        box = self.query_one("#project", Input)
        try:
            return validate_project_name(box.value.strip())
        except CodebError as exc:
            self.show_error(str(exc))
            box.focus()
            return None

    @on(Input.Changed, "#project")
    def _project_changed(self) -> None:
        self.show_error(None)

    @on(Input.Submitted, "#project")
    def _project_submitted(self) -> None:
        if self.checked_project() is not None:
            self.query_one(RadioSet).focus()

    @on(RadioSet.Changed)
    def _environment_changed(self) -> None:
        self.query_one("#image", Input).focus()

    def _deploy(self, ref: str) -> None:  # DeployModal's Enter (typed or picked) ends here
        project = self.checked_project()
        if project is None:
            return
        if ref.endswith(":") or not ref:
            self.show_error("Add an image with a tag, or pick one with ↓")
            return
        try:
            validate_image_ref(ref)
        except CodebError as exc:
            self.show_error(str(exc))
            return
        self.dismiss((project, self.chosen_environment(), ref))  # type: ignore[arg-type]
