"""The command palette offers the row actions by name: /we:deploy blog (production), ...; only
those the principal may do."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from codeb_tui.tui import actions
from codeb_tui.tui.screens.base import ConsoleScreen


class OperationCommands(Provider):
    def _commands(self):
        screen = self.screen
        if not isinstance(screen, ConsoleScreen):  # a dialog: nothing to offer over it
            return
        session, app = screen.session, self.app
        if session.offers("reconcile"):
            yield ("/we:reconcile (files vs database vs reality)", partial(app.run_action, "reconcile"),
                   "Compare the slot files with the database, containers, proxy and ports; repair")
        if session.offers("history"):
            yield ("/we:history (audit trail)", partial(app.run_action, "history"),
                   "Every operation from the database: search by project, action, team, time")
        if session.offers("deploy_new"):
            yield ("/we:deploy-new (project, environment, image)",
                   partial(actions.deploy_new, screen, session),
                   "Deploy a new project, or a project into another environment")
        for row in sorted(session.rows(), key=lambda r: (r.project, r.environment)):
            for name, (_, help_text) in actions.ROW_ACTIONS.items():
                if session.offers(name, row.environment):
                    yield (f"/we:{name} {row.project} ({row.environment})",
                           partial(actions.on_row, screen, session, name, row), help_text)

    async def discover(self) -> Hits:
        for text, callback, help_text in self._commands():
            yield DiscoveryHit(text, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, callback, help_text in self._commands():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), callback, help=help_text)
