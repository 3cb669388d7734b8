"""The command palette offers the row actions by name: /we:deploy blog (production), ..."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from codeb_tui.tui import actions
from codeb_tui.tui.rows import group_rows


class OperationCommands(Provider):
    def _commands(self):
        app = self.app
        yield ("/we:reconcile (files vs database vs reality)", app.action_reconcile,  # type: ignore[attr-defined]
               "Compare the slot files with the database, containers, proxy and ports; repair")
        yield ("/we:history (audit trail)", app.action_history,  # type: ignore[attr-defined]
               "Every operation from the database: search by project, action, team, time")
        yield ("/we:deploy-new (project, environment, image)", partial(actions.deploy_new, app),
               "Deploy a new project, or a project into another environment")
        for row in sorted(group_rows(app.status_rows), key=lambda r: (r.project, r.environment)):  # type: ignore[attr-defined]
            for name, help_text in actions.ACTIONS.items():
                yield (f"/we:{name} {row.project} ({row.environment})",
                       partial(getattr(actions, name), app, row), help_text)

    async def discover(self) -> Hits:
        for text, callback, help_text in self._commands():
            yield DiscoveryHit(text, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, callback, help_text in self._commands():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), callback, help=help_text)
