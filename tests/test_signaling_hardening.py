"""/ws input the JSON parser or SQLite cannot take.

- `"[" * 60000` made json.loads raise RecursionError and the connection
  closed without an `error` event: nesting is now bounded before parsing;
- a join name with a lone surrogate (`"\\ud800"`) made the history write fail,
  so the participant was missing from history: strings are checked at the
  protocol edge and refused with an `error` event.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from callsctl_sfu.api.protocol import MAX_DEPTH, ProtocolError, nesting_depth, parse_message
from tests.support.admin import admin_client
from tests.support.helpers import wait_until


@pytest.mark.parametrize("raw", ["[" * 60000, "{\"a\":" * 20000, "[" * (MAX_DEPTH + 1),
                                 '{"type":"signal","data":' + "[" * 5000 + "]" * 5000 + "}"],
                         ids=["array-60000", "object-20000", "just-over", "inside-signal"])
def test_deep_nesting_is_refused_before_parsing(raw: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_message(raw, 1 << 20)
    assert caught.value.code == "too_deep"


def test_brackets_inside_strings_do_not_count() -> None:
    name = "[" * 200 + "{" * 200
    message = parse_message(json.dumps({"type": "join", "call": "c", "name": name[:60]}), 65536)
    assert message["name"] == name[:60]
    assert nesting_depth(json.dumps({"a": "[[[[" * 100, "b": "\\\"[[["})) == 1
    # An unterminated string must not make the scan quadratic (or raise).
    assert nesting_depth('"' + '\\"' * 30000) == 0
    assert nesting_depth("[" * 3 + "]" * 3) == 3


@pytest.mark.parametrize("message", [
    {"type": "join", "call": "c", "name": "\ud800"},
    {"type": "join", "call": "c", "name": "Eve\udfff"},
    {"type": "join", "call": "c", "name": "line\nbreak"},
    {"type": "join", "call": "c\ud800"},
    {"type": "react", "emoji": "\udc00"},
    {"type": "screen_on", "stream_id": "\ud800x"},
    {"type": "signal", "data": {"type": "offer", "sdp": "v=0\r\n\ud800"}},
    {"type": "signal", "data": {"\ud800": 1}},
])
def test_strings_that_cannot_be_stored_or_logged_are_refused(message: dict) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_message(json.dumps(message), 65536)
    assert caught.value.code == "bad_message"
    assert "surrogate" in caught.value.message or "control" in caught.value.message


def test_valid_astral_characters_pass() -> None:
    """A real emoji is a surrogate *pair* in JSON escapes: that is valid text."""
    message = parse_message(json.dumps({"type": "react", "emoji": "\U0001F600"}), 65536)
    assert message["emoji"] == "\U0001F600"
    message = parse_message('{"type":"join","call":"c","name":"Z\\u00fcrich \\ud83d\\ude00"}',
                            65536)
    assert message["name"] == "Z\u00fcrich \U0001F600"


async def test_live_server_answers_and_keeps_the_connection_and_the_history(server) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{server.ws_url}?token={server.token('board', 'eve')}")

        async def next_event() -> dict:
            frame = await ws.receive(timeout=10)
            assert frame.type == aiohttp.WSMsgType.TEXT, frame
            return json.loads(frame.data)

        await ws.send_str("[" * 60000)
        event = await next_event()
        assert event["type"] == "error" and event["code"] == "too_deep", event
        # The lone surrogate arrives as a JSON escape, exactly as the audit sent it.
        await ws.send_str('{"type":"join","call":"board","name":"\\ud800"}')
        event = await next_event()
        assert event["type"] == "error" and event["code"] == "bad_message", event
        await ws.send_str(json.dumps({"type": "join", "call": "board", "name": "Eve"}))
        event = await next_event()
        assert event["type"] == "joined", event
        await ws.send_str(json.dumps({"type": "ping"}))
        while (await next_event())["type"] != "pong":
            pass
        await ws.send_str(json.dumps({"type": "leave"}))
        await ws.close()
    async with admin_client(server) as admin:
        calls: list = []

        async def ended() -> bool:
            calls[:] = (await admin.get("/api/v1/history?call=board")).json()["calls"]
            return bool(calls) and calls[0].get("ended_at") is not None

        for _ in range(50):
            if await ended():
                break
            await asyncio.sleep(0.1)
        assert calls and [p["name"] for p in calls[0]["participants"]] == ["Eve"], calls
    assert await wait_until(lambda: "history write failed" not in server.log(), 1)


def _upgrade_and_vanish(port: int, token: str) -> None:
    """A WebSocket upgrade request whose client resets the connection right after sending it."""
    import base64
    import os
    import socket
    import struct

    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        # SO_LINGER 0: close() sends a RST at once, as a client killed mid-join does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def test_clients_that_vanish_during_the_upgrade_leave_no_traceback(server) -> None:
    """A load test's teardown reset 25 pending /ws upgrades at once: each logged a traceback.

    The server wrote its 101 answer to a connection the client had already reset
    (aiohttp: "Cannot write to closing transport"). That is the client's doing and
    nothing to answer: the server must stay quiet (the fixture fails the test on any
    traceback in its log) and keep serving.
    """
    token = server.token("board", "gone")
    for _ in range(40):
        await asyncio.to_thread(_upgrade_and_vanish, server.api_port, token)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{server.ws_url}?token={server.token('board', 'eve')}")
        await ws.send_str(json.dumps({"type": "join", "call": "board", "name": "Eve"}))
        frame = await ws.receive(timeout=10)
        assert json.loads(frame.data)["type"] == "joined", frame
        await ws.close()
