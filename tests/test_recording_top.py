"""`callsctl top` shows which calls are being recorded."""

from __future__ import annotations

from callsctl.top.view import call_rows


def test_a_recorded_call_is_marked_in_the_calls_table() -> None:
    calls = [{"id": "standup", "participants": 3, "started_at": 0.0, "recording": True},
             {"id": "quiet", "participants": 2, "started_at": 0.0, "recording": False}]
    rows = {row.key: row for row in call_rows(calls, now=60.0)}
    assert rows["standup"].cells[0].plain == "standup ●rec"
    assert rows["quiet"].cells[0].plain == "quiet"
    # The recorder is not counted: the server's participant count is shown as it is.
    assert rows["standup"].cells[1].plain == "3"
