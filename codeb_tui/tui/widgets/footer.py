"""The key bar at the bottom of every screen."""

from __future__ import annotations

from textual.screen import Screen
from textual.widgets import Footer


class KeyFooter(Footer):
    """Textual's footer, recomposed once for all the binding changes made before a refresh:
    it recomposed (every key removed and mounted again, ~20 ms) once per change, three times
    while the console starts."""

    _recompose_queued = False

    def bindings_changed(self, screen: Screen) -> None:  # Footer's, with the queue checked
        self._bindings_ready = True
        if not screen.app.app_focus or self._recompose_queued:
            return
        if self.is_attached and screen is self.screen:
            self._recompose_queued = True
            self.call_after_refresh(self._recompose_now)

    async def _recompose_now(self) -> None:
        self._recompose_queued = False
        await self.recompose()
