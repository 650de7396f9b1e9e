"""Validation of every client message type, and every way a message can be wrong."""

from __future__ import annotations

import json

import pytest

from callsctl_sfu.api.protocol import MESSAGES, ProtocolError, parse_message

LIMIT = 65536


@pytest.mark.parametrize("kind", sorted(MESSAGES))
def test_every_type_parses_with_its_required_fields(kind):
    sample = {"call": "c", "data": {"type": "offer", "sdp": "v=0"}, "emoji": "👍",
              "session_id": "abc", "action": "end", "name": "Ada", "text": "hello"}
    message = {"type": kind}
    for name, (_type, required) in MESSAGES[kind].items():
        if required:
            message[name] = sample[name]
    assert parse_message(json.dumps(message), LIMIT)["type"] == kind


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_message"),
        ('"join"', "bad_message"),
        ("{}", "bad_message"),
        ('{"type": 5}', "bad_message"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "join"}', "bad_message"),
        ('{"type": "join", "call": 7}', "bad_message"),
        ('{"type": "join", "call": true}', "bad_message"),
        ('{"type": "signal", "data": "offer"}', "bad_message"),
        ('{"type": "react", "emoji": ""}', "bad_message"),
        ('{"type": "react", "emoji": "' + "x" * 50 + '"}', "bad_message"),
        ('{"type": "join", "call": "c", "name": "' + "n" * 100 + '"}', "bad_message"),
        ('{"type": "host_control"}', "bad_message"),
        ('{"type": "host_control", "action": "dance"}', "bad_message"),
        ('{"type": "host_control", "action": "mute"}', "bad_message"),
        ('{"type": "host_control", "action": "remove", "session_id": ""}', "bad_message"),
        ('{"type": "host_control", "action": "end", "session_id": 5}', "bad_message"),
        ('{"type": "invite"}', "bad_message"),
        ('{"type": "invite", "name": "   "}', "bad_message"),
        ('{"type": "invite", "name": "' + "n" * 100 + '"}', "bad_message"),
    ],
)
def test_malformed_messages_get_a_code(raw, code):
    with pytest.raises(ProtocolError) as info:
        parse_message(raw, LIMIT)
    assert info.value.code == code
    event = info.value.event()
    assert event["type"] == "error" and event["message"]


def test_oversized_message_is_refused_before_parsing():
    with pytest.raises(ProtocolError) as info:
        parse_message('{"type": "ping", "pad": "' + "x" * LIMIT + '"}', LIMIT)
    assert info.value.code == "message_too_large"
