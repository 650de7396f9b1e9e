"""`callsctl top` and `callsctl calls show` in an 80-column terminal, and top's CPU line.

What an operator on a laptop or a serial console sees: every table fits the
width (no column pushed off screen to the right), no one-line text is cut, and
the figures that identify a participant (full session id, address, path) are
printed whole. The server panel shows the server process's own CPU (from the
process counter, not the machine's load average, which is labelled as the
host's) and UDP drops as a rate and as a count since the server started.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.cells import cell_len
from rich.console import Console
from textual.widgets import Static

from callsctl.calls import render_call
from callsctl.top.command import snapshot_lines
from callsctl.top.model import Overview, TopState
from callsctl.top.screens import CallScreen, SessionScreen
from callsctl.top.widgets import LiveTable, cpu_text, host_text, udp_text
from tests.support.top import StubSource, before, prime, stub_app

NARROW = (80, 24)


def assert_fits(app: Any) -> None:
    """No table scrolls sideways and no one-line text is wider than its widget."""
    screen = app.screen
    for table in screen.query(LiveTable):
        assert table.virtual_size.width <= table.scrollable_content_region.width, (
            type(screen).__name__, [c.label.plain for c in table.columns.values()])
    checked = 0
    for widget in screen.query(Static):
        if not widget.display or widget.content_region.width == 0:
            continue
        plain = getattr(widget.render(), "plain", None)  # textual Content or rich Text
        assert isinstance(plain, str)
        for line in plain.splitlines():
            assert cell_len(line) <= widget.content_region.width, (widget.id, line)
        checked += 1
    assert checked >= 3  # the status line, captions, panels: the check saw them


async def test_every_screen_fits_80_columns() -> None:
    app, _source = stub_app()
    async with app.run_test(size=NARROW) as pilot:
        await prime(pilot)
        assert_fits(app)
        await pilot.press("down", "enter")  # a call
        await app.poll_once()
        await pilot.pause()
        assert isinstance(app.screen, CallScreen)
        assert_fits(app)
        await pilot.press("enter")  # a session
        await app.poll_once()
        await pilot.pause()
        assert isinstance(app.screen, SessionScreen)
        assert_fits(app)


async def test_server_panel_shows_process_cpu_host_load_and_drops_since_start() -> None:
    app, _source = stub_app()
    async with app.run_test(size=NARROW) as pilot:
        await prime(pilot)
        state = app.state
        assert state.rates.cpu == pytest.approx(0.12)
        assert "server CPU   12%" in cpu_text(state).plain
        assert "RSS 180.0 MiB" in cpu_text(state).plain
        assert host_text(state).plain.startswith("host load 0.3")  # labelled as the host's
        # 3 drops happened after poll 20: 3 since start (not the 4,015 since boot).
        assert "3 since start" in udp_text(state).plain
        assert "4,015" not in udp_text(state).plain


def test_cpu_comes_from_metrics_for_a_server_without_it_in_system() -> None:
    state = TopState()
    state.apply_overview(Overview(calls=[], process_cpu_seconds=10.0, rcvbuf_errors=7), 100.0)
    state.apply_overview(Overview(calls=[], process_cpu_seconds=10.5, rcvbuf_errors=9), 102.0)
    assert state.rates.cpu == pytest.approx(0.25)
    assert state.rates.rcvbuf_errors_per_s == pytest.approx(1.0)
    assert "since boot" in udp_text(state).plain  # no since-start figure from old servers


def test_once_summary_lines_fit_80_columns() -> None:
    snapshot = {"host": "https://calls.example.com:8045", "calls": [], "server": {
        "version": "1.2.3", "uptime_s": 90061, "calls": 12, "sessions": 240,
        "process_cpu": 0.873, "process_rss_bytes": 1.5 * 2**30, "cpu_load": 0.91,
        "memory_bytes": 12.2 * 2**30, "memory_total": 15.6 * 2**30,
        "in_bps": 123.4e6, "in_pps": 19500, "out_bps": 987.6e6, "out_pps": 198000,
        "udp_rcvbuf_errors": 123456789, "udp_rcvbuf_errors_since_start": 123456,
        "udp_rcvbuf_errors_per_s": 1234}}
    console = Console(width=80, record=True, file=io.StringIO(), highlight=False)
    for line in snapshot_lines(snapshot):
        console.print(line, highlight=False)
    text = console.export_text()
    lines = text.splitlines()
    assert len(lines) == 4, text  # nothing wrapped
    assert "server CPU 87%" in text and "host load 0.91/core" in text
    assert "1,234/s, 123,456 since start" in text
    # A server skipping stale audio (short of CPU) says so first, still in 80 columns.
    snapshot["server"]["late_audio_per_s"] = 1500
    console = Console(width=80, record=True, file=io.StringIO(), highlight=False)
    for line in snapshot_lines(snapshot):
        console.print(line, highlight=False)
    text = console.export_text()
    assert len(text.splitlines()) == 4, text
    assert "late 1,500/s  UDP drops 1,234/s" in text


def test_calls_show_fits_80_columns_with_ids_and_addresses_whole() -> None:
    detail = StubSource().details["standup"]
    detail = {**detail, "host": "0123456789abcdef"}
    detail["sessions"] = [dict(s) for s in detail["sessions"]]
    detail["sessions"][0]["session_id"] = "0123456789abcdef"
    console = Console(width=80, record=True, file=io.StringIO(), highlight=False)
    render_call(detail, console)
    text = console.export_text()
    assert "…" not in text  # nothing cut short
    assert all(cell_len(line) <= 80 for line in text.splitlines())
    for whole in ("0123456789abcdef (host)", "198.51.100.7:53211", "192.0.2.9:3478", "srflx/udp",
                  "relay/tcp", "checking", "420.0", "7.0%", "muted, hand", "1 in / 1 out"):
        assert whole in text, whole
    # Each session's row keeps its id and its figures on one line.
    row = next(line for line in text.splitlines() if line.startswith("c3 ") and "relay" in line)
    assert "192.0.2.9:3478" in row and "420.0" in row and "55.0" in row


def test_snapshot_calls_screen_80_columns(snap_compare: Any) -> None:
    app, _ = stub_app()
    assert snap_compare(app, terminal_size=NARROW, run_before=before())


def test_snapshot_call_screen_80_columns(snap_compare: Any) -> None:
    app, _ = stub_app()
    assert snap_compare(app, terminal_size=NARROW, run_before=before("down", "enter", 1))
