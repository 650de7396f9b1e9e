"""Fuzzing /ws with random and mutated signaling messages against a live server.

A few thousand messages from hypothesis (random text, random JSON, valid
messages with fields dropped, retyped or replaced, oversized frames, random
SDP and ICE candidates) go over real WebSocket connections. Afterwards:

- the server is alive, its log has no traceback, and every connection is
  still open;
- every message the protocol validator rejects got exactly its error event,
  in order (checked against callsctl_sfu.api.protocol.parse_message);
- a real participant still joins and hears another, and once the fuzzing
  connections close no session is left behind.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callsctl_sfu.api.protocol import ProtocolError, parse_message
from callsctl_sfu.client.participant import Participant
from tests.support.serve import start_serve

CALL = "fuzz"
MAX_MESSAGE = 65536  # the server's default max_message_size
EXAMPLES = 400

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False,
                                                                        allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                  max_size=4),
    max_leaves=10)
safe_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80)
sdp_like = st.one_of(
    safe_text,
    st.builds(lambda body: "v=0\r\n" + body, safe_text),
    st.just("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111"
            "\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\na=rtpmap:111 opus/48000/2\r\n"))
candidates = st.one_of(
    safe_text,
    st.builds(lambda n, ip, port: f"candidate:{n} 1 udp 2122260223 {ip} {port} typ host",
              st.integers(0, 2**32), st.sampled_from(["127.0.0.1", "10.0.0.1", "x.local", "::1",
                                                      "999.1.1.1"]), st.integers(-5, 70000)))
signal_data = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["offer", "answer"]), "sdp": sdp_like}),
    st.fixed_dictionaries({"type": st.just("candidate"), "candidate": st.one_of(
        st.none(), st.fixed_dictionaries({"candidate": candidates},
                                         optional={"sdpMid": json_values,
                                                   "sdpMLineIndex": json_values}),
        json_values)}),
    st.dictionaries(st.text(max_size=10), json_values, max_size=4))
valid_messages = st.one_of(
    st.fixed_dictionaries({"type": st.just("join"), "call": st.sampled_from([CALL, "other"])},
                          optional={"name": safe_text}),
    st.fixed_dictionaries({"type": st.just("signal"), "data": signal_data}),
    st.fixed_dictionaries({"type": st.just("react"), "emoji": safe_text}),
    st.fixed_dictionaries({"type": st.just("reconnect"), "session_id": safe_text}),
    st.fixed_dictionaries({"type": st.just("screen_on")}, optional={"stream_id": safe_text}),
    st.builds(lambda kind: {"type": kind}, st.sampled_from(
        ["leave", "mute", "unmute", "raise_hand", "lower_hand", "ping", "screen_off",
         "video_on", "video_off"])),
)


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    """A valid message with one field dropped, retyped or added, or its type changed."""
    message = dict(draw(valid_messages))
    how = draw(st.sampled_from(["drop", "retype", "add", "type"]))
    keys = sorted(message)
    if how == "drop":
        message.pop(draw(st.sampled_from(keys)), None)
    elif how == "retype":
        message[draw(st.sampled_from(keys))] = draw(json_values)
    elif how == "add":
        message[draw(st.text(max_size=10))] = draw(json_values)
    else:
        message["type"] = draw(st.one_of(json_values, st.text(max_size=12)))
    return message


frames = st.one_of(
    valid_messages.map(json.dumps),
    mutated().map(json.dumps),
    json_values.map(json.dumps),
    safe_text,
    st.builds(lambda n: json.dumps({"type": "ping", "pad": "x" * n}),
              st.sampled_from([MAX_MESSAGE - 40, MAX_MESSAGE + 1, 200_000])),
)


class FuzzClients:
    """WebSocket connections living on their own event loop thread (hypothesis is sync)."""

    def __init__(self, server: Any, count: int = 2) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.http: aiohttp.ClientSession | None = None
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.run(self._open(count))
        self.barrier = 0

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _open(self, count: int) -> None:
        self.http = aiohttp.ClientSession()
        for index in range(count):
            token = self.server.token(CALL, f"fuzzer{index}")
            self.sockets.append(await self.http.ws_connect(f"{self.server.ws_url}?token={token}",
                                                           max_msg_size=0))

    async def exchange(self, index: int, raw_frames: list[str]) -> list[dict[str, Any]]:
        """Send frames, then a barrier; everything received up to the barrier's answer."""
        ws = self.sockets[index]
        self.barrier += 1
        marker = f"barrier-{self.barrier}"
        for raw in raw_frames:
            await ws.send_str(raw)
        await ws.send_str(json.dumps({"type": marker}))
        received = []
        while True:
            frame = await ws.receive(timeout=30)
            assert frame.type == aiohttp.WSMsgType.TEXT, f"connection lost: {frame}"
            event = json.loads(frame.data)
            assert isinstance(event, dict) and isinstance(event.get("type"), str), event
            if event["type"] == "error" and marker in event.get("message", ""):
                return received
            received.append(event)

    async def _close(self) -> None:
        for ws in self.sockets:
            await ws.close()
        if self.http is not None:
            await self.http.close()

    def close(self) -> None:
        try:
            self.run(self._close(), 15)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = start_serve(tmp_path_factory.mktemp("fuzz"), env={
        "CALLSCTL_WS_RATE_LIMIT": "100000", "CALLSCTL_WS_RATE_BURST": "100000",
        "CALLSCTL_RECONNECT_GRACE": "1"})
    yield server
    server.stop()


def expected_errors(raw_frames: list[str]) -> list[str]:
    codes = []
    for raw in raw_frames:
        try:
            parse_message(raw, MAX_MESSAGE)
        except ProtocolError as exc:
            codes.append(exc.code)
    return codes


def is_subsequence(needles: list[str], haystack: list[str]) -> bool:
    remaining = iter(haystack)
    return all(any(item == candidate for candidate in remaining) for item in needles)


def test_random_and_mutated_messages_get_errors_and_break_nothing(fuzz_server):
    clients = FuzzClients(fuzz_server)
    sent = [0]
    seen: set[str] = set()
    try:
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(st.integers(0, 1), st.lists(frames, min_size=5, max_size=30))
        def fuzz(index: int, raw_frames: list[str]) -> None:
            received = clients.run(clients.exchange(index, raw_frames))
            sent[0] += len(raw_frames)
            errors = [e["code"] for e in received if e["type"] == "error"]
            seen.update(e["type"] for e in received)
            seen.update(f"error:{code}" for code in errors)
            assert all(isinstance(e.get("message"), str) for e in received
                       if e["type"] == "error")
            want = expected_errors(raw_frames)
            assert is_subsequence(want, errors), (want, errors, raw_frames)

        fuzz()
        assert sent[0] >= 2000, sent[0]
        # The fuzz got past validation: it joined, and signals reached a peer.
        assert {"joined", "error:bad_message", "error:bad_json"} <= seen, seen
        assert "error:bad_signal" in seen or "signal" in seen, seen
        assert fuzz_server.process.poll() is None
        assert all(not ws.closed for ws in clients.sockets)
        assert httpx.get(f"{fuzz_server.api_url}/healthz", timeout=5).status_code == 200
    finally:
        clients.close()
    log = fuzz_server.log()
    assert "Traceback" not in log, log[-4000:]


async def test_after_fuzzing_a_call_still_works_and_nothing_is_stuck(fuzz_server):
    people = []
    try:
        for user, tone in (("ann", 440), ("ben", 660)):
            person = Participant(fuzz_server.ws_url, fuzz_server.token(CALL, user), CALL,
                                 user, tone=tone)
            await person.join()
            people.append(person)
        for person in people:
            await person.wait_connected(15)
        for _ in range(100):
            if people[0].frames_from[people[1].session_id] > 20:
                break
            await asyncio.sleep(0.1)
        assert people[0].frames_from[people[1].session_id] > 20
    finally:
        for person in people:
            await person.close()
    stats: dict = {}
    for _ in range(100):  # reconnect grace is 1 s; sessions must all be gone
        stats = httpx.get(f"{fuzz_server.api_url}/stats", timeout=5).json()
        if stats["sessions"] == 0 and stats["calls"] == 0:
            break
        await asyncio.sleep(0.1)
    assert stats["sessions"] == 0 and stats["calls"] == 0, stats
