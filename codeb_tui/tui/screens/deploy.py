"""The image picker: tags the registry's HTTP API offers, filtered as you type, or free entry."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from codeb_tui.domain.errors import CodebError
from codeb_tui.domain.model import SlotState, validate_image_ref
from codeb_tui.domain.status import SlotStatus
from codeb_tui.tui.rows import ProjectRow
from codeb_tui.tui.session import ConsoleSession


class DeployModal(ModalScreen[str | None]):
    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="deploy-cancel"),
        Binding("down", "to_list", "Pick", show=False, id="deploy-pick"),
    ]

    def __init__(self, session: ConsoleSession, row: ProjectRow | None, target: SlotStatus | None,
                 current: str | None) -> None:
        super().__init__()
        self.session = session
        self.row = row
        self.target = target
        self.current = current
        self.references: list[str] = []

    def compose(self) -> ComposeResult:
        row, target = self.row, self.target
        with Vertical(id="dialog"):
            yield Label(f"Deploy to {row.project} ({row.environment})", id="dialog-title")
            what = f"into {target.slot} (port {target.port}, now {target.state}"
            what += f", {target.image})" if target.image else ")"
            if target.state is SlotState.GRACE:
                what += "  - the rollback target: you will be asked to confirm"
            yield Static(what, id="dialog-body")
            yield Input(value=self._suggested(), placeholder="image reference, e.g. 127.0.0.1:5000/app:v2",
                        id="image", select_on_focus=False)
            yield OptionList(id="images")
            yield Static("loading tags…", id="images-status")

    def _suggested(self) -> str:
        if self.current and ":" in self.current.rsplit("/", 1)[-1]:
            return self.current.rsplit(":", 1)[0] + ":"
        return ""

    def on_mount(self) -> None:
        self.query_one("#image", Input).focus()
        self._load()

    @work(exclusive=True, group="image-picker", exit_on_error=False)
    async def _load(self) -> None:
        status = self.query_one("#images-status", Static)
        engine = self.session.engine
        if engine.image_registry_host is None:
            status.update("no docker.registry_url in the config: type the reference")
            return
        try:
            self.references = await engine.images(self.session.principal)
        except CodebError as exc:
            status.update(f"{exc}; type the reference")
            return
        status.update(f"{len(self.references)} images in {engine.image_registry_host}  "
                      "(↓ to pick, Enter to deploy)")
        self._fill(self.query_one("#image", Input).value)

    def _fill(self, text: str) -> None:
        options = self.query_one("#images", OptionList)
        needle = text.strip().lower()
        matches = [r for r in self.references if needle in r.lower()] or self.references
        options.clear_options()
        options.add_options([Option(r, id=r) for r in reversed(matches)])

    @on(Input.Changed, "#image")
    def _changed(self, event: Input.Changed) -> None:
        self._fill(event.value)

    @on(Input.Submitted, "#image")
    def _submitted(self, event: Input.Submitted) -> None:
        self._deploy(event.value.strip())

    @on(OptionList.OptionSelected, "#images")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        # Enter on a listed image deploys it, as the hint under the list says.
        self._deploy(str(event.option.prompt))

    def _deploy(self, ref: str) -> None:
        if ref.endswith(":"):
            self.notify("Add a tag, or pick an image with ↓", severity="warning")
            return
        try:
            validate_image_ref(ref)
        except CodebError as exc:
            self.notify(str(exc), severity="error")
            return
        self.dismiss(ref)

    def action_to_list(self) -> None:
        options = self.query_one("#images", OptionList)
        if options.option_count and options.highlighted is None:
            options.highlighted = 0
        options.focus()

    def action_cancel(self) -> None:
        self.dismiss(None)
