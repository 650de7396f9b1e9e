"""The screens of `callsctl top`: calls → one call's sessions → one session; plus dialogs.

Every screen draws only from the app's TopState (update_view), so a refresh is
the same code path whether it came from the timer, an event or an action.
Host controls are screen actions whose bindings disappear in --read-only mode
(check_action returns False, so the footer does not offer them and the keys
do nothing), and are dimmed when they cannot apply (lowering a hand nobody
raised). Each one asks for confirmation first: these interrupt real people.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, cast

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Input, Label, Static

from callsctl.top.model import Action, ActionKind
from callsctl.top.view import (
    CALL_COLUMNS,
    JITTER_MS,
    LOSS,
    NONE,
    RTT_MS,
    SESSION_COLUMNS,
    TRACK_COLUMNS,
    call_rows,
    candidate_text,
    fmt_bps,
    fmt_duration,
    fmt_loss,
    fmt_ms,
    fmt_rate,
    ice_style,
    level,
    nodes_text,
    session_rows,
    session_state,
    short_id,
    track_rows,
    who,
)
from callsctl.top.widgets import Banner, LiveTable, MetricLine, ServerPanel

if TYPE_CHECKING:
    from callsctl.top.app import TopApp

SESSION_ACTIONS: tuple[ActionKind, ...] = ("mute", "mute_others", "lower_hand", "stop_screen",
                                           "remove", "make_host", "end_call")
ACTION_BINDINGS: dict[str, tuple[str, str]] = {  # action -> (key, footer text)
    "mute": ("m", "Mute"), "mute_others": ("o", "Mute others"),
    "lower_hand": ("l", "Lower hand"), "stop_screen": ("x", "Stop share"),
    "remove": ("k", "Remove"), "make_host": ("h", "Host"), "end_call": ("e", "End call"),
}


def _action_bindings(kinds: tuple[ActionKind, ...]) -> list[BindingType]:
    return [Binding(ACTION_BINDINGS[k][0], f"control('{k}')", ACTION_BINDINGS[k][1])
            for k in kinds]


class FilterInput(Input):
    """The `/` filter line: typing filters live, Enter keeps it, Esc clears it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Clear filter", show=False)]

    DEFAULT_CSS = """
    FilterInput, FilterInput:focus { display: none; border: none; height: 1;
                                     padding: 0 1; background: $boost; }
    FilterInput.-shown { display: block; }
    """

    def action_cancel(self) -> None:
        self.value = ""
        self.screen.query_one(LiveTable).set_query("")
        self.remove_class("-shown")
        self.screen.query_one(LiveTable).focus()
        if isinstance(self.screen, TopScreen):
            self.screen.update_view()


class StatusBar(Static):
    """Top line: what is shown, where from, and whether updates are paused."""

    DEFAULT_CSS = """
    StatusBar { height: 1; background: $panel; padding: 0 1; }
    """


class TopScreen(Screen[None]):
    """What all three levels share: status line, banner, one filterable live table."""

    # The app's own keys come first so a narrow footer still shows them; the help
    # screen (?) lists everything, including the host controls cut off at the end.
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "app.quit", "Quit"),
        Binding("question_mark", "app.help", "Help"),
        Binding("escape", "back", "Back"),
        Binding("slash", "filter", "Filter"),
        Binding("s", "sort", "Sort"),
        Binding("r", "reverse", "Reverse", show=False),
        Binding("p", "app.pause", "Pause"),
    ]
    watched_call: str | None = None
    actions: tuple[ActionKind, ...] = ()

    @property
    def top(self) -> TopApp:
        return self.app  # type: ignore[return-value]

    def compose_head(self) -> ComposeResult:
        yield StatusBar(id="status")
        yield Banner(id="banner")

    def compose_tail(self) -> ComposeResult:
        yield FilterInput(placeholder="filter (Enter keeps it, Esc clears it)", id="filter")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        # A newly opened call has no detail yet: fetch now rather than at the next tick.
        if self.watched_call and self.top.live and not self.top.paused:
            self.top.request_poll()

    def on_screen_resume(self) -> None:
        self.update_view()

    @property
    def table(self) -> LiveTable:
        return self.query_one(LiveTable)

    def update_view(self) -> None:
        """Redraw from the app's state; subclasses draw their content, then call this."""
        app = self.top
        self.query_one("#status", StatusBar).update(app.status_text(self.title_text()))
        banner, info = app.banner_text()
        ended = self.ended_text()
        self.query_one("#banner", Banner).show_message(banner or ended, info=info or
                                                       (not banner and bool(ended)))
        self.refresh_bindings()

    def title_text(self) -> str:
        return ""

    def ended_text(self) -> str | None:
        return None

    def table_caption(self, noun: str) -> Text:
        table = self.table
        caption = Text(no_wrap=True)
        count = len(table.shown_keys)
        caption.append(f"{count} {noun if count != 1 else noun.rstrip('s')}", style="bold")
        caption.append(f"  {table.describe_sort()}", style="dim")
        if table.query_text:
            caption.append(f"  filter: {table.query_text}", style="bold yellow")
        return caption

    # -- keys ------------------------------------------------------------------------------

    def action_back(self) -> None:
        table = self.table
        if table.query_text:
            self.query_one(FilterInput).action_cancel()
        elif len(self.app.screen_stack) > 1 and not isinstance(self, MainScreen):
            self.app.pop_screen()

    def action_filter(self) -> None:
        field = self.query_one(FilterInput)
        field.add_class("-shown")
        # A hidden widget cannot take focus: focus once the line is laid out.
        self.call_after_refresh(field.focus)

    def action_sort(self) -> None:
        self.table.cycle_sort()
        self.update_view()

    def action_reverse(self) -> None:
        self.table.flip_sort()
        self.update_view()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.table.set_query(event.value)
        self.update_view()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if not event.value:
            event.input.remove_class("-shown")
        self.table.focus()

    def on_data_table_row_highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self.refresh_bindings()

    def on_data_table_header_selected(self, _event: DataTable.HeaderSelected) -> None:
        self.call_after_refresh(self.update_view)

    # -- host controls ------------------------------------------------------------------------

    def target(self) -> tuple[str, dict[str, Any] | None] | None:
        """(call id, selected session or None) the controls act on."""
        return None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "back":  # the calls screen has nowhere to go back to
            tables = self.query(LiveTable)
            filtered = bool(tables) and bool(tables.first().query_text)
            return filtered or not isinstance(self, MainScreen)
        if action != "control":
            return True
        kind = str(parameters[0]) if parameters else ""
        if self.top.read_only or kind not in self.actions:
            return False
        target = self.target()
        if target is None:
            return None
        call_id, session = target
        if kind == "end_call":
            return True
        if session is None:
            return None
        host = (self.top.state.details.get(call_id) or {}).get("host")
        applicable = {"mute": not session.get("muted"), "lower_hand": bool(session.get("hand")),
                      "stop_screen": bool(session.get("screen")),
                      "make_host": session.get("session_id") != host}
        return True if applicable.get(kind, True) else None

    def action_control(self, kind: str) -> None:
        if self.check_action("control", (kind,)) is not True:
            return
        target = self.target()
        if target is None:
            return
        call_id, session = target
        if kind == "end_call":
            action = Action("end_call", call_id)
        elif session is not None:
            action = Action(cast(ActionKind, kind), call_id, session.get("session_id"),
                            who(session))
        else:
            return

        def confirmed(answer: bool | None) -> None:
            if answer:
                self.top.perform(action)

        self.app.push_screen(ConfirmScreen(action.question()), confirmed)


class MainScreen(TopScreen):
    """Server panel and the calls table; Enter opens a call."""

    actions = ("end_call",)
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open", "Open", show=False), *_action_bindings(actions)]

    DEFAULT_CSS = """
    MainScreen #calls-caption { height: 1; padding: 0 1; }
    MainScreen #nodes { height: auto; max-height: 8; border: round $primary; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        yield from self.compose_head()
        yield ServerPanel(id="server")
        # The fleet's nodes, shown only when this server is one of a fleet.
        nodes = Static(id="nodes")
        nodes.border_title = "nodes"
        nodes.display = False
        yield nodes
        yield Static(id="calls-caption")
        yield LiveTable(CALL_COLUMNS, sort_column="duration", reverse=True, id="calls")
        yield from self.compose_tail()

    def title_text(self) -> str:
        return "calls"

    def update_view(self) -> None:
        state = self.top.state
        self.query_one(ServerPanel).show(state, self.top.source.base_url)
        fleet = state.overview.nodes if state.overview else None
        panel = self.query_one("#nodes", Static)
        panel.display = bool(fleet)
        if fleet:
            here = (state.overview.version or {}).get("node") if state.overview else None
            panel.update(nodes_text(fleet, self.top.server_now(), here))
        self.table.set_rows(call_rows(state.calls, self.top.server_now(), state.details))
        self.query_one("#calls-caption", Static).update(self.table_caption("calls"))
        super().update_view()

    def target(self) -> tuple[str, dict[str, Any] | None] | None:
        key = self.table.selected_key
        return (key, None) if key else None

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def action_open(self) -> None:
        key = self.table.selected_key
        if key:
            self.app.push_screen(CallScreen(key))


class CallScreen(TopScreen):
    """One call: its sessions with state, connectivity and quality; Enter opens a session."""

    actions = SESSION_ACTIONS
    BINDINGS: ClassVar[list[BindingType]] = _action_bindings(SESSION_ACTIONS)

    DEFAULT_CSS = """
    CallScreen #call-info { height: auto; border: round $primary; padding: 0 1; }
    CallScreen #sessions-caption { height: 1; padding: 0 1; }
    """

    def __init__(self, call_id: str) -> None:
        super().__init__()
        self.watched_call = call_id

    @property
    def call_id(self) -> str:
        assert self.watched_call is not None
        return self.watched_call

    def compose(self) -> ComposeResult:
        yield from self.compose_head()
        yield Static(id="call-info")
        yield Static(id="sessions-caption")
        yield LiveTable(SESSION_COLUMNS, id="sessions")
        yield from self.compose_tail()

    def title_text(self) -> str:
        return f"call {self.call_id}"

    def ended_text(self) -> str | None:
        if self.call_id in self.top.state.details and self.top.state.details[self.call_id] is None:
            return f"Call {self.call_id!r} has ended. Esc goes back to the calls."
        return None

    def update_view(self) -> None:
        state = self.top.state
        detail = state.details.get(self.call_id)
        summary = state.call_summary(self.call_id) or detail or {}
        self.table.set_rows(session_rows(detail))
        info = Text(no_wrap=True)
        info.append(self.call_id, style="bold")
        started = summary.get("started_at")
        duration = self.top.server_now() - started if isinstance(started, int | float) else None
        info.append(f"  up {fmt_duration(duration)}")
        info.append(f"  {summary.get('participants', len((detail or {}).get('sessions') or []))}"
                    " participants")
        host_id = (detail or summary).get("host")
        host = next((s for s in (detail or {}).get("sessions") or []
                     if s.get("session_id") == host_id), None)
        info.append(f"  host {who(host) if host else short_id(host_id)}")
        sharer = (detail or summary).get("screen_sharer")
        if sharer:
            share = next((s for s in (detail or {}).get("sessions") or []
                          if s.get("session_id") == sharer), None)
            info.append(f"  screen {who(share) if share else short_id(sharer)}",
                        style="magenta")
        if summary.get("recording"):
            info.append("  ● recording", style="bold red")
        info.append(f"\nmedia in {fmt_bps(summary.get('in_bps'))}"
                    f"  out {fmt_bps(summary.get('out_bps'))}")
        self.query_one("#call-info", Static).update(info)
        caption = self.table_caption("sessions")
        caption.append("  in/out: kbps", style="dim")
        self.query_one("#sessions-caption", Static).update(caption)
        super().update_view()

    def target(self) -> tuple[str, dict[str, Any] | None] | None:
        key = self.table.selected_key
        session = self.top.state.session(self.call_id, key) if key else None
        return self.call_id, session

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        key = self.table.selected_key
        if key:
            self.app.push_screen(SessionScreen(self.call_id, key))


class SessionScreen(TopScreen):
    """One session: connectivity, quality with its recent history, and every track."""

    actions = SESSION_ACTIONS
    BINDINGS: ClassVar[list[BindingType]] = _action_bindings(SESSION_ACTIONS)

    DEFAULT_CSS = """
    SessionScreen #session-info { height: auto; border: round $primary; padding: 0 1; }
    SessionScreen #tracks-caption { height: 1; padding: 0 1; }
    """

    def __init__(self, call_id: str, session_id: str) -> None:
        super().__init__()
        self.watched_call = call_id
        self.session_id = session_id

    @property
    def call_id(self) -> str:
        assert self.watched_call is not None
        return self.watched_call

    def compose(self) -> ComposeResult:
        yield from self.compose_head()
        with Vertical(id="session-info"):
            yield Static(id="session-fields")
            yield MetricLine(id="history-rtt")
            yield MetricLine(id="history-loss")
        yield Static(id="tracks-caption")
        yield LiveTable(TRACK_COLUMNS, id="tracks")
        yield from self.compose_tail()

    def title_text(self) -> str:
        return f"call {self.call_id} › session {self.session_id}"

    def ended_text(self) -> str | None:
        state = self.top.state
        if self.call_id in state.details and state.session(self.call_id,
                                                           self.session_id) is None:
            return f"Session {self.session_id} is no longer in call {self.call_id!r}."
        return None

    def update_view(self) -> None:
        state = self.top.state
        session = state.session(self.call_id, self.session_id)
        detail = state.details.get(self.call_id) or {}
        names = {s.get("session_id"): who(s) for s in detail.get("sessions") or []}
        self.table.set_rows(track_rows(session, lambda sid: names.get(sid, short_id(sid))))
        self.query_one("#session-fields", Static).update(self._fields(session, detail))
        history = state.sessions.get(self.session_id)
        rtt = session.get("rtt_ms") if session else None
        loss = session.get("loss") if session else None
        rtt_text = Text("RTT  ", no_wrap=True)
        rtt_text.append(fmt_ms(rtt), style=level(rtt, RTT_MS))
        loss_text = Text("loss ", no_wrap=True)
        loss_text.append(fmt_loss(loss), style=level(loss, LOSS))
        if history and history.rtt_ms:
            rtt_text.append(f"  (min {fmt_ms(min(history.rtt_ms))}, "
                            f"max {fmt_ms(max(history.rtt_ms))})", style="dim")
        if history and history.loss:
            loss_text.append(f"  (max {fmt_loss(max(history.loss))})", style="dim")
        self.query_one("#history-rtt", MetricLine).show(rtt_text,
                                                        history.rtt_ms if history else [])
        self.query_one("#history-loss", MetricLine).show(loss_text,
                                                         history.loss if history else [])
        self.query_one("#tracks-caption", Static).update(self.table_caption("tracks"))
        super().update_view()

    def _fields(self, session: dict[str, Any] | None, detail: dict[str, Any]) -> Text:
        text = Text()
        if session is None:
            text.append(f"session {self.session_id}", style="bold")
            return text
        text.append(who(session), style="bold")
        if session.get("session_id") == detail.get("host"):
            text.append("  ★ host", style="bold yellow")
        text.append(f"   session {self.session_id}", style="dim")
        joined = session.get("joined_at")
        if isinstance(joined, int | float):
            text.append(f"   joined {fmt_duration(self.top.server_now() - joined)} ago")
        text.append("\nstate  ")
        text.append_text(session_state(session))
        ice = session.get("ice_state")
        text.append("\nICE    ")
        text.append(str(ice or NONE), style=ice_style(ice))
        pair = session.get("candidate_pair")
        candidate, style = candidate_text(pair)
        text.append("   candidate ")
        text.append(candidate, style=style)
        if isinstance(pair, dict):
            text.append(f"\npair   {pair.get('local') or NONE} ⇄ {pair.get('remote') or NONE}")
        jitter = session.get("jitter_ms")
        text.append("\njitter ")
        text.append(fmt_ms(jitter), style=level(jitter, JITTER_MS))
        text.append(f"   in {fmt_bps(session.get('in_bps'))} "
                    f"{fmt_rate(session.get('in_pps'), 'pkt/s')}"
                    f"   out {fmt_bps(session.get('out_bps'))} "
                    f"{fmt_rate(session.get('out_pps'), 'pkt/s')}")
        return text

    def target(self) -> tuple[str, dict[str, Any] | None] | None:
        return self.call_id, self.top.state.session(self.call_id, self.session_id)


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no before a host control; No is focused, so a stray Enter changes nothing."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical { width: 64; height: auto; border: thick $warning;
                               background: $surface; padding: 1 2; }
    ConfirmScreen Label { width: 100%; margin-bottom: 1; }
    ConfirmScreen Horizontal { height: auto; align-horizontal: right; }
    ConfirmScreen Button { margin-left: 2; }
    """

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question, id="question")
            with Horizontal():
                yield Button("Yes (y)", variant="warning", id="yes")
                yield Button("No (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


HELP_KEYS = (
    ("↑ ↓ PgUp PgDn", "move the selection"),
    ("Enter", "open the selected call or session"),
    ("Esc", "clear the filter, else go back"),
    ("/", "filter rows by text"),
    ("s / r", "sort by the next column / reverse (or click a header)"),
    ("p", "pause or resume live updates"),
    ("?", "this help"),
    ("q", "quit"),
)
HELP_ACTIONS = (
    ("m", "mute the session (the server stops forwarding its audio)"),
    ("o", "mute everyone else in the call"),
    ("l", "lower the session's raised hand"),
    ("x", "stop the session's screen share"),
    ("k", "remove the session from the call"),
    ("h", "make the session the call's host"),
    ("e", "end the call for everyone"),
)


class HelpScreen(ModalScreen[None]):
    """Keys, host controls (unless read-only) and what the colours mean."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "close", "Close")]

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 80; height: auto; max-height: 90%;
                                  border: thick $primary; background: $surface; padding: 1 2; }
    """

    def __init__(self, read_only: bool) -> None:
        super().__init__()
        self.read_only = read_only

    def compose(self) -> ComposeResult:
        text = Text()
        text.append("callsctl top\n\n", style="bold")
        for key, meaning in HELP_KEYS:
            text.append(f"{key:>14}  ", style="bold cyan")
            text.append(f"{meaning}\n")
        text.append("\nHost controls", style="bold")
        if self.read_only:
            text.append(" are off (--read-only).\n")
        else:
            text.append(" (each asks first; y confirms):\n")
            for key, meaning in HELP_ACTIONS:
                text.append(f"{key:>14}  ", style="bold cyan")
                text.append(f"{meaning}\n")
        text.append("\nHighlighted values: ", style="bold")
        text.append(f"RTT ≥ {RTT_MS[0]:.0f} ms", style="yellow")
        text.append(" / ")
        text.append(f"≥ {RTT_MS[1]:.0f} ms", style="bold red")
        text.append(f", loss ≥ {LOSS[0]:.0%}", style="yellow")
        text.append(" / ")
        text.append(f"≥ {LOSS[1]:.0%}", style="bold red")
        text.append(f", jitter ≥ {JITTER_MS[0]:.0f} ms", style="yellow")
        text.append(" / ")
        text.append(f"≥ {JITTER_MS[1]:.0f} ms", style="bold red")
        text.append("; ICE failed/disconnected in red; relayed or TCP media in yellow.\n")
        with VerticalScroll():
            yield Static(text)

    def action_close(self) -> None:
        self.dismiss(None)
