"""`callsctl top`: the TUI against a real `callsctl serve` with aiortc participants.

Live tests drive the textual app with Pilot in the same event loop as the
participants, so what is asserted is what an operator would see and what a
participant would hear: calls and sessions appear, drill-down and back work,
sorting and filtering work, a mute from the TUI reaches the participant and
stops its audio being forwarded, read-only mode offers no controls, a server
that goes away shows a banner that clears when it is back, a wrong key is a
message and not a crash.

Snapshot tests (pytest-textual-snapshot) pin the layout of each screen. They
use a stub data source with fixed data and a fixed clock, because they test
layout, not the server: live numbers would change every run.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import DataTable, Static
from textual.widgets.data_table import ColumnKey

from callsctl.errors import CliError
from callsctl.top.app import TopApp
from callsctl.top.client import AdminApiError, AdminClient, SseParser, parse_rcvbuf_errors
from callsctl.top.command import normalize_url, resolve_connection
from callsctl.top.model import Action, Overview, ServerRates, ServerSample, TopState
from callsctl.top.screens import CallScreen, ConfirmScreen, MainScreen, SessionScreen
from callsctl.top.view import TableRow, level, order_rows, session_rows
from callsctl.top.widgets import Banner, LiveTable, spark_text
from callsctl_sfu.client.participant import Participant
from tests.support.helpers import run_cli
from tests.support.top import T0, before, prime, stub_app

SIZE = (120, 34)

# -- pure parts ----------------------------------------------------------------------------


def test_spark_text_scales_from_zero_and_keeps_the_newest_on_the_right() -> None:
    assert spark_text([], 10) == ""
    assert spark_text([0, 0], 10) == "▁▁"
    # A steady value is a steady full bar, not min-max magnified noise.
    assert spark_text([500, 505, 500], 10) == "███"
    assert spark_text([0, 50, 100], 10) == "▁▅█"
    # Longer than the width: buckets, so the whole history still fits.
    assert len(spark_text(list(range(300)), 40)) == 40


def _row(key: str, value: float | None, text: str = "") -> TableRow:
    return TableRow(key, (Text(text or key),), {"v": value})


def test_order_rows_sorts_numbers_not_text_puts_unknowns_last_and_filters() -> None:
    rows = [_row("a", 9.5), _row("b", None), _row("c", 12.0), _row("d", 1.0, "Dave")]
    assert [r.key for r in order_rows(rows, "v", False)] == ["d", "a", "c", "b"]
    assert [r.key for r in order_rows(rows, "v", True)] == ["c", "a", "d", "b"]
    assert [r.key for r in order_rows(rows, None, False)] == ["a", "b", "c", "d"]
    assert [r.key for r in order_rows(rows, "v", False, "dav")] == ["d"]


def test_thresholds_flag_bad_values() -> None:
    assert level(None, (1, 2)) == ""
    assert level(0.5, (1, 2)) == ""
    assert level(1.5, (1, 2)) == "yellow"
    assert level(2, (1, 2)) == "bold red"
    rows = session_rows({"host": "s1", "sessions": [
        {"session_id": "s1", "user": "carol", "rtt_ms": 420, "loss": 0.07, "jitter_ms": 55,
         "ice_state": "failed", "candidate_pair": {"type": "relay", "protocol": "tcp"}}]})
    styles = [str(cell.style) for cell in rows[0].cells[2:6]]
    assert styles == ["bold red", "bold red", "bold red", "bold red"]  # ICE failed, RTT, ...
    # Once connected, the ICE column names the path; relayed or TCP media is flagged.
    rows = session_rows({"sessions": [
        {"session_id": "s1", "ice_state": "completed",
         "candidate_pair": {"type": "relay", "protocol": "tcp"}}]})
    assert rows[0].cells[2].plain == "relay/tcp" and str(rows[0].cells[2].style) == "yellow"


def test_rates_come_from_counter_deltas_and_a_restart_gives_no_rate() -> None:
    def overview(rtp: int, octets: int, drops: int) -> Overview:
        return Overview(calls=[], stats={"forwarding": {"rtp_in": rtp, "rtp_forwarded": rtp * 2},
                                         "media_socket": {"bytes_in": octets,
                                                          "bytes_out": octets}},
                        rcvbuf_errors=drops)

    state = TopState()
    state.apply_overview(overview(100, 1000, 5), 10.0)
    assert state.rates == ServerRates()
    state.apply_overview(overview(300, 3000, 9), 12.0)
    assert state.rates.in_pps == 100 and state.rates.out_pps == 200
    assert state.rates.in_bps == 8000 and state.rates.rcvbuf_errors_per_s == 2
    state.apply_overview(overview(10, 10, 0), 13.0)  # counters went down: server restarted
    assert state.rates.in_pps is None and state.rates.in_bps is None
    assert list(state.history["in_pps"]) == [100]
    state.apply_overview(Overview(calls=[], system={"time": 113.5}), 14.0)
    assert state.clock_offset == 99.5  # the server's clock runs 99.5 s ahead of ours
    assert ServerRates.between(ServerSample(1, 0, 0, 0, 0, 0), ServerSample(1, 5, 5, 5, 5, 5)) \
        == ServerRates()


def test_stale_audio_skipped_by_a_server_short_of_cpu_is_named_on_the_udp_line() -> None:
    """forwarding.dropped_late rising (media_late_drop_ms) shows as a rate, in red, first."""
    from callsctl.top.view import BAD_STYLE
    from callsctl.top.widgets import udp_text

    def overview(late: int) -> Overview:
        return Overview(calls=[], stats={"forwarding": {"rtp_in": 0, "dropped_late": late}},
                        rcvbuf_errors=0)

    state = TopState()
    state.apply_overview(overview(40), 10.0)
    state.apply_overview(overview(40), 11.0)
    assert state.rates.late_per_s == 0 and "late" not in udp_text(state).plain
    state.apply_overview(overview(340), 13.0)
    line = udp_text(state)
    assert state.rates.late_per_s == 150
    assert line.plain.startswith("late 150/s  UDP drops 0/s"), line.plain
    assert [str(span.style) for span in line.spans][0] == BAD_STYLE


def test_session_history_is_kept_while_the_session_lives_and_then_dropped() -> None:
    state = TopState()
    detail = {"sessions": [{"session_id": "a", "rtt_ms": 10, "loss": 0.0},
                           {"session_id": "b", "rtt_ms": None, "loss": None}]}
    state.apply_detail("room", detail)
    state.apply_detail("room", detail)
    assert list(state.sessions["a"].rtt_ms) == [10, 10]
    state.apply_detail("room", {"sessions": [{"session_id": "b"}]})
    assert "a" not in state.sessions and "b" in state.sessions
    state.apply_detail("room", None)
    assert not state.sessions


def test_sse_parser_reads_events_and_skips_comments() -> None:
    parser = SseParser()
    lines = ["retry: 2000", ": keepalive", "", "event: user_muted",
             'data: {"call":"room","session_id":"x"}', "", "data: not json", ""]
    events = [e for e in (parser.feed(line) for line in lines) if e is not None]
    assert events == [{"call": "room", "session_id": "x", "type": "user_muted"},
                      {"data": "not json", "type": "message"}]


def test_rcvbuf_errors_are_read_from_the_prometheus_text() -> None:
    text = ("# HELP callsctl_udp_rcvbuf_errors_total drops\n"
            "# TYPE callsctl_udp_rcvbuf_errors_total counter\n"
            "callsctl_udp_rcvbuf_errors_total 42.0\n")
    assert parse_rcvbuf_errors(text) == 42
    assert parse_rcvbuf_errors("other_metric 1\n") is None


def test_action_questions_name_the_target() -> None:
    assert Action("mute", "room", "s1", "alice").question() == "Mute alice in call 'room'?"
    assert Action("end_call", "room").question() == "End call 'room' for everyone in it?"


def test_server_and_key_are_found_like_callsctl_calls_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CALLSCTL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "admin_key").write_text("from-data-dir\n")
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")

    def resolve(key: str | None = None, key_file_: str | None = None,
                data: str | None = None, host: str | None = None) -> tuple[str, str]:
        conn = resolve_connection(host, key, key_file_, data, None, False, None, 5.0)
        return conn.key, conn.server

    assert resolve("from-flag", str(key_file), str(data_dir)) == \
        ("from-flag", "http://127.0.0.1:8045")
    assert resolve(None, str(key_file), str(data_dir))[0] == "from-file"
    assert resolve(None, None, str(data_dir), "127.0.0.1:9000/") == \
        ("from-data-dir", "http://127.0.0.1:9000")
    with pytest.raises(CliError, match="no admin key"):
        resolve(None, None, str(tmp_path / "elsewhere"))
    with pytest.raises(CliError, match="no admin key"):
        resolve()  # nothing anywhere, not even in the default data dir
    default_dir = tmp_path / "xdg-data" / "callsctl"
    default_dir.mkdir(parents=True)
    (default_dir / "admin_key").write_text("from-default\n")
    assert resolve()[0] == "from-default"


def test_host_urls_are_normalised() -> None:
    assert normalize_url("127.0.0.1:8045/") == "http://127.0.0.1:8045"
    assert normalize_url("https://calls.example:8045") == "https://calls.example:8045"
    with pytest.raises(CliError):
        normalize_url("ftp://x")


# -- snapshots: fixed data, fixed clock ---------------------------------------------------------


def test_snapshot_calls_screen(snap_compare: Any) -> None:
    app, _ = stub_app()
    assert snap_compare(app, terminal_size=SIZE, run_before=before())


def test_snapshot_call_screen_highlights_bad_values(snap_compare: Any) -> None:
    app, _ = stub_app()
    # Sorted by duration, longest first: the second row is "standup".
    assert snap_compare(app, terminal_size=SIZE, run_before=before("down", "enter", 3))


def test_snapshot_session_screen(snap_compare: Any) -> None:
    app, _ = stub_app()
    assert snap_compare(app, terminal_size=SIZE,
                        run_before=before("down", "enter", 3, "enter", 1))


def test_snapshot_confirm_dialog(snap_compare: Any) -> None:
    app, _ = stub_app()
    assert snap_compare(app, terminal_size=SIZE, run_before=before("down", "enter", 1, "m"))


def test_snapshot_help_read_only(snap_compare: Any) -> None:
    app, _ = stub_app(read_only=True)
    assert snap_compare(app, terminal_size=SIZE, run_before=before("question_mark"))


def test_snapshot_connection_lost_banner_and_filter(snap_compare: Any) -> None:
    app, source = stub_app()

    async def run(pilot: Pilot[None]) -> None:
        await prime(pilot)
        await pilot.press("slash", "s", "t", "a", "enter")
        source.down = True
        source.polls += 5  # the clock moves on while the server is away
        await app.poll_once()
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run)


@pytest.mark.parametrize(("engine", "shown"), [("c", "forwarding C"),
                                               ("python", "forwarding in Python")])
async def test_server_line_names_the_forwarding_engine(engine: str, shown: str) -> None:
    app, source = stub_app()
    source.engine = engine
    async with app.run_test(size=SIZE) as pilot:
        await prime(pilot, 2)
        line = app.query_one("#server-line", Static).render()
        assert shown in str(line)


async def test_stub_actions_confirm_and_read_only() -> None:
    """Keys behave without a server: confirmation, No by default, read-only hides controls."""
    app, source = stub_app()
    async with app.run_test(size=SIZE) as pilot:
        await prime(pilot, 2)
        await pilot.press("down", "enter")
        await app.poll_once()
        await pilot.pause()
        assert isinstance(app.screen, CallScreen) and app.screen.call_id == "standup"
        await pilot.press("m")  # alice: confirm, then answer No with Enter (No is focused)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("enter")
        await pilot.pause()
        assert source.actions == []
        await pilot.press("down", "l", "y")  # bob has a raised hand
        await pilot.pause()
        for _ in range(20):
            if source.actions:
                break
            await pilot.pause(0.05)
        assert source.actions == [Action("lower_hand", "standup", "b2", "bob (Bob)")]
        await pilot.press("down", "l")  # carol's hand is down: control dimmed, no dialog
        assert not isinstance(app.screen, ConfirmScreen)
        await pilot.press("e", "y")
        for _ in range(20):
            if len(source.actions) == 2:
                break
            await pilot.pause(0.05)
        assert source.actions[-1] == Action("end_call", "standup")

        # p pauses: the timer's polls stop until p again.
        await pilot.press("escape")
        await pilot.press("p")
        polls = source.polls
        app._tick()
        await pilot.pause()
        assert app.paused and source.polls == polls
        assert "PAUSED" in str(app.screen.query_one("#status").render())
        await pilot.press("p")
        for _ in range(20):
            if source.polls > polls:
                break
            await pilot.pause(0.05)
        assert not app.paused and source.polls > polls
        # Clicking a column header sorts by it; again reverses.
        calls = app.screen.query_one(LiveTable)
        header = DataTable.HeaderSelected(calls, ColumnKey("participants"), 1, Text(""))
        calls.post_message(header)
        await pilot.pause()
        assert calls.shown_keys == ["support", "design-review", "standup"]
        calls.post_message(DataTable.HeaderSelected(calls, ColumnKey("participants"), 1,
                                                    Text("")))
        await pilot.pause()
        assert calls.shown_keys == ["standup", "design-review", "support"]

    app, source = stub_app(read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await prime(pilot, 2)
        await pilot.press("down", "enter")
        await app.poll_once()
        await pilot.pause()
        for key in ("m", "o", "l", "x", "k", "h", "e"):
            await pilot.press(key)
            assert not isinstance(app.screen, ConfirmScreen)
        assert source.actions == []
        shown = {b.binding.action for b in app.screen.active_bindings.values()
                 if app.screen.check_action(b.binding.action.split("(")[0],
                                            _params(b.binding.action))}
        assert not any(a.startswith("control") for a in shown)


def _params(action: str) -> tuple[object, ...]:
    if "(" not in action:
        return ()
    inner = action.split("(", 1)[1].rstrip(")").strip("'\"")
    return (inner,)


# -- live: a real server and real participants ---------------------------------------------------


KEY_CHARS = {"slash": "/", "question_mark": "?", "escape": None, "enter": "\r",
             "down": None, "up": None}


async def press(pilot: Pilot[None], *keys: str) -> None:
    """Pilot.press, minus its wait for the process to go idle.

    Pilot.press waits (up to 1 s, twice per key) until this process uses almost
    no CPU, which never happens while aiortc participants encode and decode
    audio in it. Instead: deliver the key as the terminal driver would, then
    let the app, the screen and the focused widget each drain their queues (a
    key travels app → screen → widget and bubbles back, one queue per hop).
    """
    from textual import events

    app = pilot.app
    for key in keys:
        event = events.Key(key, KEY_CHARS.get(key, key if len(key) == 1 else None))
        event.set_sender(app)
        app.post_message(event)
        for _ in range(4):
            await pilot._wait_for_screen()


async def until(predicate: Callable[[], bool], timeout: float, what: str,
                pilot: Pilot[None] | None = None) -> float:
    """Wait (bounded) until predicate holds; returns the seconds it took."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        if pilot is not None:
            await pilot.pause(0.05)
        else:
            await asyncio.sleep(0.05)


async def join(server: Any, call: str, user: str) -> Participant:
    participant = Participant(server.ws_url, server.token(call, user), call, user.title())
    await participant.join()
    return participant


def admin_key(server: Any) -> str:
    return (server.data_dir / "admin_key").read_text().strip()


def table(app: TopApp) -> LiveTable:
    return app.screen.query_one(LiveTable)


def banner(app: TopApp) -> str:
    widget = app.screen.query_one(Banner)
    return str(widget.render()) if widget.has_class("-shown") else ""


async def test_live_calls_drill_down_sort_filter_and_mute(serve_factory: Any) -> None:
    server = serve_factory()
    alice = await join(server, "room", "alice")
    bob = await join(server, "room", "bob")
    carol = await join(server, "lobby", "carol")
    participants = [alice, bob, carol]
    try:
        for participant in participants:
            await participant.wait_connected(20)
        assert alice.session_id and bob.session_id
        # A slow timer: whatever shows up faster than 5 s came from the event stream,
        # the first fetch on start, or the fetch when a call is opened.
        app = TopApp(AdminClient(server.api_url, admin_key(server)), refresh=5.0)
        async with app.run_test(size=SIZE) as pilot:
            calls = table(app)
            await until(lambda: sorted(calls.shown_keys) == ["lobby", "room"], 2.0,
                        "both calls listed", pilot)

            # Sorting: by call id, both ways; the selection follows its call.
            # Each key travels through textual's queues; the assertions below wait
            # (bounded) for the table to show the result rather than racing them.
            while calls.sort_column != "id":
                await press(pilot, "s")
            await until(lambda: calls.shown_keys == ["lobby", "room"], 2.0, "sorted by id",
                        pilot)
            await press(pilot, "down")
            await until(lambda: calls.selected_key == "room", 2.0, "room selected", pilot)
            await press(pilot, "r")
            await until(lambda: calls.shown_keys == ["room", "lobby"], 2.0, "reversed", pilot)
            assert calls.selected_key == "room"
            # Filtering by text; Esc clears it.
            await press(pilot, "slash")
            await until(lambda: getattr(app.focused, "id", None) == "filter", 2.0,
                        "the filter line has focus", pilot)
            await press(pilot, "l", "o", "b")
            await until(lambda: calls.shown_keys == ["lobby"], 2.0, "filtered to lobby", pilot)
            await press(pilot, "escape")
            await until(lambda: sorted(calls.shown_keys) == ["lobby", "room"], 2.0,
                        "filter cleared", pilot)
            assert isinstance(app.screen, MainScreen)

            # Drill down into the call: both sessions within 2 s.
            calls.move_cursor(row=calls.shown_keys.index("room"))
            await press(pilot, "enter")
            assert isinstance(app.screen, CallScreen)
            sessions = table(app)
            await until(lambda: set(sessions.shown_keys) == {alice.session_id, bob.session_id},
                        2.0, "both sessions listed", pilot)
            # Sort sessions by user so alice is first, and open her detail.
            while sessions.sort_column != "user":
                await press(pilot, "s")
            assert sessions.shown_keys == [alice.session_id, bob.session_id]
            await press(pilot, "enter")
            assert isinstance(app.screen, SessionScreen)
            tracks = table(app)
            await until(lambda: len(tracks.shown_keys) >= 2, 3.0, "alice's tracks", pilot)
            await press(pilot, "escape")
            assert isinstance(app.screen, CallScreen)

            # Mute alice from the TUI, confirming.
            await until(lambda: bob.frames_from[alice.session_id] > 20, 10.0,
                        "bob hears alice")
            assert app.screen.table.selected_key == alice.session_id
            mark = len(alice.events)
            await press(pilot, "m")
            assert isinstance(app.screen, ConfirmScreen)
            await press(pilot, "y")
            await alice.wait_for(lambda e: e["type"] == "host_mute", 5, since=mark)
            await alice.wait_for(lambda e: e["type"] == "user_muted", 5, since=mark)
            await bob.wait_for(lambda e: e["type"] == "user_muted"
                               and e.get("session_id") == alice.session_id, 5)
            await asyncio.sleep(0.5)  # packets already in flight
            heard = bob.frames_from[alice.session_id]
            await asyncio.sleep(1.5)
            assert bob.frames_from[alice.session_id] - heard <= 2, "alice still forwarded"
            assert carol.frames_from[alice.session_id] == 0  # other call: never heard her
            # The TUI shows her muted and no longer offers to mute her.
            await until(lambda: "muted" in sessions.shown_row(alice.session_id)
                        .cells[1].plain, 3.0, "alice shown muted", pilot)
            assert app.screen.check_action("control", ("mute",)) is None
            # A change made by a participant arrives through the event stream.
            await bob.send({"type": "raise_hand"})
            await until(lambda: "hand" in sessions.shown_row(bob.session_id).cells[1].plain,
                        2.0, "bob's raised hand shown", pilot)

            # Back to the calls; end the lobby call from the TUI.
            await press(pilot, "escape")
            assert isinstance(app.screen, MainScreen)
            calls.move_cursor(row=calls.shown_keys.index("lobby"))
            await press(pilot, "e", "y")
            await carol.wait_for(lambda e: e["type"] == "call_end", 5)
            await until(lambda: calls.shown_keys == ["room"], 3.0, "lobby gone", pilot)
            await press(pilot, "q")

        # Read-only against the same server: no controls at all.
        app = TopApp(AdminClient(server.api_url, admin_key(server)), refresh=0.5,
                     read_only=True)
        async with app.run_test(size=SIZE) as pilot:
            calls = table(app)
            await until(lambda: "room" in calls.shown_keys, 2.0, "calls listed", pilot)
            calls.move_cursor(row=calls.shown_keys.index("room"))
            await press(pilot, "enter")
            sessions = table(app)
            await until(lambda: bob.session_id in sessions.shown_keys, 2.0, "sessions", pilot)
            sessions.move_cursor(row=sessions.shown_keys.index(bob.session_id))
            mark = len(bob.events)
            for key in ("m", "o", "k", "h", "e"):
                await press(pilot, key)
                assert not isinstance(app.screen, ConfirmScreen)
            footer_actions = {b.binding.action for b in app.screen.active_bindings.values()
                              if b.binding.show and app.screen.check_action(
                                  b.binding.action.split("(")[0], _params(b.binding.action))}
            assert not any(a.startswith("control") for a in footer_actions)
            await asyncio.sleep(0.5)
            assert not any(e["type"] in ("host_mute", "host_removed", "call_end")
                           for e in bob.events[mark:])
    finally:
        for participant in participants:
            await participant.close()


async def test_live_banner_when_the_server_goes_away_and_comes_back(serve_factory: Any
                                                                   ) -> None:
    server = serve_factory()
    app = TopApp(AdminClient(server.api_url, admin_key(server), timeout=2.0), refresh=0.3)
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: app.polls > 0 and app.problem is None, 3.0, "connected", pilot)
        assert banner(app) == ""
        server.stop()
        await until(lambda: "Connection lost" in banner(app), 5.0, "lost banner", pilot)
        assert "refused" in banner(app)
        # The same server (same ports, same data dir and key) starts again.
        # (wait=False: the fixture would poll the fresh port it picked, not this one.)
        serve_factory("--api-port", str(server.api_port), "--udp-port", str(server.udp_port),
                      "--data-dir", str(server.data_dir), wait=False)
        await until(lambda: banner(app) == "", 20.0, "banner cleared", pilot)
        assert app.problem is None


async def test_live_wrong_admin_key_is_a_message_not_a_crash(serve_factory: Any) -> None:
    server = serve_factory()
    app = TopApp(AdminClient(server.api_url, "not-the-key"), refresh=0.3)
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: "Admin key refused" in banner(app), 3.0, "key banner", pilot)
        assert "--admin-key" in banner(app)
        await press(pilot, "enter", "s", "question_mark", "escape")  # still responsive
        assert app.is_running

    client = AdminClient(server.api_url, admin_key(server))
    with pytest.raises(AdminApiError) as caught:
        await client.act(Action("mute", "no-such-call", "nobody"))
    assert caught.value.status == 404
    await client.aclose()


def test_once_json_and_cli_errors(serve_factory: Any) -> None:
    """`top --once --json` prints one object; a wrong key or no server is one error line."""
    server = serve_factory()
    env = {"CALLSCTL_ADMIN_KEY": admin_key(server)}
    result = run_cli("top", "--host", server.api_url, "--once", "--json", "--refresh", "0.2",
                     env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    snapshot = json.loads(result.stdout)
    assert snapshot["host"] == server.api_url and snapshot["calls"] == []
    assert snapshot["server"]["version"] and snapshot["server"]["udp_rcvbuf_errors"] is not None
    assert snapshot["server"]["in_pps"] == 0
    assert snapshot["server"]["late_audio_per_s"] == 0  # no call: nothing skipped as stale
    # The server process's own CPU (a rate over --refresh) and drops since it started.
    assert 0 <= snapshot["server"]["process_cpu"] < 4
    assert snapshot["server"]["udp_rcvbuf_errors_since_start"] >= 0
    assert snapshot["server"]["forwarding_engine"] in ("c", "python")

    result = run_cli("top", "--host", server.api_url, "--once", "--json",
                     env={"CALLSCTL_ADMIN_KEY": "wrong-key-wrong-key"}, timeout=30)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "refused the admin key" in result.stderr

    server.stop(signal.SIGKILL)
    result = run_cli("top", "--host", server.api_url, "--once", env=env, timeout=30)
    assert result.returncode == 1 and "connection refused" in result.stderr
    assert "Traceback" not in result.stderr

    result = run_cli("top", "--data-dir", str(server.data_dir / "nope"), "--once",
                     env={"CALLSCTL_ADMIN_KEY": "", "CALLSCTL_ADMIN_KEY_FILE": ""},
                     timeout=30)
    assert result.returncode == 1 and "no admin key" in result.stderr


async def test_a_fleet_shows_its_nodes_panel_and_a_single_node_none() -> None:
    """Nodes of a fleet: state, load, calls, sessions; a draining and a stale one flagged."""
    app, source = stub_app()
    plain = stub_app()[0]
    nodes = [
        {"node_id": "node-b", "state": "draining", "cpu_load": 41.0, "calls": 1,
         "sessions": 12, "media_host": "203.0.113.7", "media_port": 8443,
         "updated_at": T0 + 2},
        {"node_id": "node-a", "state": "active", "cpu_load": 12.0, "calls": 3, "sessions": 6,
         "media_host": "203.0.113.6", "media_port": 8443, "updated_at": T0 + 2},
        {"node_id": "node-c", "state": "active", "cpu_load": 3.0, "calls": 0, "sessions": 0,
         "media_host": "203.0.113.8", "media_port": 8444, "updated_at": T0 - 60},
    ]
    stub_overview = source.overview

    async def fleet_overview() -> Overview:
        overview = await stub_overview()
        overview.nodes = nodes
        overview.version = {**(overview.version or {}), "node": "node-a"}
        return overview

    source.overview = fleet_overview  # type: ignore[method-assign]
    async with app.run_test(size=SIZE) as pilot:
        await prime(pilot, 2)
        panel = app.query_one("#nodes", Static)
        assert panel.display
        lines = str(panel.render()).splitlines()
        # Sorted by id; the node this top talks to is starred.
        assert [line.lstrip("* ").split()[0] for line in lines] == \
            ["node-a", "node-b", "node-c"], lines
        assert lines[0].startswith("* ") and not lines[1].startswith("*"), lines
        assert "draining" in lines[1] and "41 %" in lines[1] and "sessions   12" in lines[1]
        assert "203.0.113.8:8444" in lines[2] and "no update for" in lines[2], lines
        assert "no update" not in lines[0] + lines[1]
    async with plain.run_test(size=SIZE) as pilot:
        await prime(pilot, 2)
        assert not plain.query_one("#nodes", Static).display
