"""The textual application of `callsctl top`: polling, events, connection state, actions.

Data arrives three ways and all end in one place (poll_once → update_view):
a timer every --refresh seconds, the server's event stream (a mute or a join
shows at once instead of at the next tick), and the refresh after a host
control. poll_once never runs twice at the same time; a request made while one
is in flight is folded into one more round, so a burst of events costs at
most one extra fetch.

Failures never end the app: an unreachable server shows a banner and is
retried on every tick (the banner clears by itself when it answers again); a
refused key shows what to pass instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.screen import Screen

from callsctl.top.client import AdminAuthError, AdminError
from callsctl.top.model import ACTION_VERBS, Action, DataSource, TopState
from callsctl.top.screens import HelpScreen, MainScreen, TopScreen
from callsctl.top.view import fmt_duration

POLL_ROUNDS = 3  # one poll plus at most two catch-up rounds for requests made meanwhile
EVENT_RETRY_S = (1.0, 10.0)  # backoff of the event stream after it fails: first, most
EVENT_MIN_GAP_S = 0.5  # event-triggered refreshes are at least this far apart
# Server-wide events that do not change what the tables show.
QUIET_EVENTS = {"stats", "message"}


class TopApp(App[None]):
    """Live calls, sessions and server health of one `callsctl serve`, with host controls."""

    TITLE = "callsctl top"
    ENABLE_COMMAND_PALETTE = False
    # Shown in the footer by each screen (screens.TopScreen); here they also work
    # wherever a screen does not bind them.
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit", show=False),
        Binding("question_mark", "help", "Help", show=False),
        Binding("p", "pause", "Pause", show=False),
    ]

    def __init__(self, source: DataSource, refresh: float = 1.0, read_only: bool = False,
                 clock: Callable[[], float] = time.time, live: bool = True,
                 follow_events: bool = True) -> None:
        super().__init__()
        self.source = source
        self.refresh_s = refresh
        self.read_only = read_only
        self.clock = clock
        self.live = live
        self.follow_events = follow_events
        self.state = TopState()
        self.paused = False
        self.problem: str | None = None
        self.auth_failed = False
        self.polls = 0
        self._polling = False
        self._again = False
        self._last_event_poll = 0.0
        self._deferred = False

    def get_default_screen(self) -> Screen[Any]:
        return MainScreen()

    async def on_mount(self) -> None:
        if self.live:
            self.set_interval(self.refresh_s, self._tick)
            self._tick()
            if self.follow_events and hasattr(self.source, "events"):
                self.run_worker(self._follow_events(), group="events", exit_on_error=False)
        self.update_screens()

    async def on_unmount(self) -> None:
        with contextlib.suppress(Exception):
            await self.source.aclose()

    # -- polling -------------------------------------------------------------------------

    def _tick(self) -> None:
        if not self.paused:
            self.request_poll()

    def request_poll(self) -> None:
        """Refresh in the background now (folded into a poll already under way)."""
        self.run_worker(self.poll_once(), group="poll", exit_on_error=False)

    def watched_calls(self) -> list[str]:
        """Calls whose detail some open screen shows (usually zero or one)."""
        calls: list[str] = []
        for screen in self.screen_stack:
            call = getattr(screen, "watched_call", None)
            if call and call not in calls:
                calls.append(call)
        return calls

    async def poll_once(self) -> None:
        """Fetch the overview and watched calls once, then redraw every screen."""
        if self._polling:
            self._again = True
            return
        self._polling = True
        try:
            for _ in range(POLL_ROUNDS):
                self._again = False
                await self._fetch()
                if not self._again:
                    break
        finally:
            self._polling = False

    async def _fetch(self) -> None:
        try:
            overview = await self.source.overview()
            watched = self.watched_calls()
            details = await asyncio.gather(*(self.source.call_detail(c) for c in watched))
        except AdminAuthError as exc:
            self.problem, self.auth_failed = exc.message, True
        except AdminError as exc:
            self.problem, self.auth_failed = exc.message, False
        except Exception as exc:  # a bug or odd answer must not take the operator's view down
            self.problem, self.auth_failed = f"{type(exc).__name__}: {exc}", False
        else:
            now = self.clock()
            self.state.apply_overview(overview, now)
            for call_id, detail in zip(watched, details, strict=True):
                self.state.apply_detail(call_id, detail)
            self.problem, self.auth_failed = None, False
            self.polls += 1
        self.update_screens()

    def update_screens(self) -> None:
        for screen in self.screen_stack:
            if isinstance(screen, TopScreen) and screen.is_mounted:
                screen.update_view()

    async def _follow_events(self) -> None:
        """Refresh soon after any call event; reconnect with backoff if the stream drops."""
        delay = EVENT_RETRY_S[0]
        while self.is_running:
            try:
                async for event in self.source.events():  # type: ignore[attr-defined]
                    delay = EVENT_RETRY_S[0]
                    if event.get("type") in QUIET_EVENTS or self.paused:
                        continue
                    await self._poll_soon()
            except AdminError:
                pass  # the timer's poll reports the problem in the banner
            await asyncio.sleep(delay)
            delay = min(delay * 2, EVENT_RETRY_S[1])

    async def _poll_soon(self) -> None:
        """An event arrived: refresh now, or at the end of the gap if one just happened.

        Voice activity alone can produce several events a second per call; the gap
        keeps that to a couple of fetches a second, and the deferred fetch makes
        sure the last event of a burst is still shown promptly.
        """
        if self._polling:
            self._again = True
            return
        wait = self._last_event_poll + EVENT_MIN_GAP_S - time.monotonic()
        if wait > 0:
            if not self._deferred:
                self._deferred = True
                self.set_timer(wait, self._deferred_poll)
            return
        self._last_event_poll = time.monotonic()
        self.request_poll()

    def _deferred_poll(self) -> None:
        self._deferred = False
        self._last_event_poll = time.monotonic()
        if not self.paused:
            self.request_poll()

    # -- what the screens show -------------------------------------------------------------

    def server_now(self) -> float:
        """The server's clock now: call and session ages are differences from its stamps."""
        return self.clock() + self.state.clock_offset

    def status_text(self, where: str) -> str:
        parts = ["callsctl top", self.source.base_url]
        if where:
            parts.append(where)
        if self.read_only:
            parts.append("read-only")
        if self.paused:
            parts.append("PAUSED (p resumes)")
        return "  ·  ".join(parts)

    def banner_text(self) -> tuple[str | None, bool]:
        """(message, is it mere information) for the banner; None when all is well."""
        if self.problem is None:
            return None, False
        if self.auth_failed:
            return f"Admin key refused: {self.problem}", False
        if self.state.updated_at is None:
            return (f"Not connected: {self.problem}. Retrying every {self.refresh_s:g} s.",
                    False)
        age = fmt_duration(self.clock() - self.state.updated_at)
        return (f"Connection lost: {self.problem}. Retrying every {self.refresh_s:g} s; "
                f"showing data from {age} ago.", False)

    # -- keys -----------------------------------------------------------------------------

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.read_only))

    def action_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            self._tick()
        self.update_screens()

    # -- host controls ----------------------------------------------------------------------

    def perform(self, action: Action) -> None:
        """Run a confirmed host control in the background, report, refresh."""
        if self.read_only:
            return
        self.run_worker(self._perform(action), group="actions", exit_on_error=False)

    async def _perform(self, action: Action) -> None:
        label = f"{ACTION_VERBS[action.kind]} {action.who or action.call_id}".strip()
        try:
            answer = await self.source.act(action)
        except AdminError as exc:
            self.notify(exc.message, title=f"{label}: failed", severity="error", timeout=8)
            return
        changed = answer.get("changed")
        note = " (no change needed)" if changed is False else ""
        self.notify(f"{label}: done{note}", timeout=4)
        await self.poll_once()
