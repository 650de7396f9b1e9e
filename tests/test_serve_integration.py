"""`callsctl serve` as a subprocess on loopback, with real aiortc participants.

Everything here is what an operator or a participant would notice: audio from
everyone else arrives, all on one UDP port; muting stops a participant being
heard even if its client keeps sending; vanished participants disappear; bad
input gets an error and the server carries on; startup problems are one line.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import aiohttp
import httpx
import psutil
import pytest

from callsctl_sfu.client.participant import Participant
from callsctl_sfu.datadir import load_or_create_secret
from callsctl_sfu.rtc import aiortc_bridge
from callsctl_sfu.tokens import issue_token
from tests.support.clients import close_all, join_all
from tests.support.helpers import REPO, free_port, is_root, run_cli, wait_until


def nominated_remote(participant: Participant) -> tuple[str, int]:
    connection = aiortc_bridge.ice_connection(participant.pc.sctp.transport.transport)
    return aiortc_bridge.nominated_pair(connection).remote_addr


def stats(server) -> dict:
    return httpx.get(f"{server.api_url}/stats", timeout=5).json()


async def test_three_participants_hear_each_other_through_one_udp_socket(server):
    people = await join_all(server, 3)
    try:
        ids = [p.session_id for p in people]
        for me, person in enumerate(people):
            others = [sid for i, sid in enumerate(ids) if i != me]
            assert await wait_until(lambda p=person, o=others: all(p.frames_from[s] > 25
                                                                   for s in o), 10), \
                f"{person.name} got {dict(person.frames_from)}"
        # One server socket for media, and every participant's nominated pair ends on it.
        udp = [c for c in psutil.Process(server.process.pid).net_connections(kind="udp")]
        assert [c.laddr.port for c in udp] == [server.udp_port]
        for person in people:
            assert nominated_remote(person) == ("127.0.0.1", server.udp_port)
        # The calls-dc data channel gets pong for ping; voice activity came from RFC 6464.
        assert await wait_until(lambda: all(p.dc_pongs > 0 for p in people), 5)
        # Those records went through rtc/dtlsrecord.py: the server answered each offer,
        # so it was the DTLS client, and released OpenSSL's connection at connect.
        assert stats(server)["dtls_records"] == 3
        assert any(e["type"] == "user_voice_on" for e in people[0].events)
        assert stats(server)["forwarding"]["rtp_forwarded"] > 100
    finally:
        await close_all(people)


async def test_a_late_joiner_is_told_who_is_already_speaking(server):
    """voice-on is sent when speech starts; one who joins mid-sentence reads it at join."""
    people = await join_all(server, 1, call="late-voice")
    speaker = people[0]
    listener, late = (Participant(server.ws_url, server.token("late-voice", name), "late-voice",
                                  name, send_audio=False) for name in ("listener", "late"))
    people.append(listener)
    try:
        await listener.join()
        await speaker.wait_for(lambda e: e["type"] == "user_voice_on"
                               and e["session_id"] == speaker.session_id, 10)
        await late.join()
        snapshot = {p["session_id"]: p for p in late.joined["participants"]}
        assert snapshot[speaker.session_id]["voice"] is True, snapshot
        assert snapshot[listener.session_id]["voice"] is False, snapshot
    finally:
        await late.close()
        await close_all(people)


async def test_muted_participant_is_not_forwarded_even_if_it_keeps_sending(server):
    people = await join_all(server, 3)
    loud, a, b = people
    try:
        assert await wait_until(lambda: a.frames_from[loud.session_id] > 10, 10)
        await loud.send({"type": "mute"})  # its client keeps sending the tone
        await a.wait_for(lambda e: e["type"] == "user_muted"
                         and e["session_id"] == loud.session_id, 5)
        await asyncio.sleep(0.5)  # let packets already in flight drain
        before_a, before_b = a.frames_from[loud.session_id], b.frames_from[loud.session_id]
        still_b = b.frames_from[a.session_id]
        await asyncio.sleep(1.5)
        assert a.frames_from[loud.session_id] == before_a
        assert b.frames_from[loud.session_id] == before_b
        assert b.frames_from[a.session_id] > still_b + 30  # others are still heard
        assert stats(server)["forwarding"]["dropped_muted"] > 0
        await loud.send({"type": "unmute"})
        assert await wait_until(lambda: a.frames_from[loud.session_id] > before_a + 20, 5)
    finally:
        await close_all(people)


async def test_state_events_reach_everyone(server):
    people = await join_all(server, 2)
    me, other = people
    try:
        mark = len(other.events)
        await me.send({"type": "raise_hand"})
        await me.send({"type": "react", "emoji": "🎉"})
        await me.send({"type": "lower_hand"})
        for kind in ("user_raise_hand", "user_reacted", "user_lower_hand"):
            event = await other.wait_for(lambda e, k=kind: e["type"] == k, 5, since=mark)
            assert event["session_id"] == me.session_id
        await me.leave()
        await other.wait_for(lambda e: e["type"] == "user_left"
                             and e["session_id"] == me.session_id, 5)
    finally:
        await close_all(people)


async def test_closed_client_is_removed_and_nothing_leaks(serve_factory):
    server = serve_factory(env={"CALLSCTL_RECONNECT_GRACE": "1"})
    people = await join_all(server, 3)
    try:
        gone = people[2]
        await gone.close()  # like a closed tab: no leave message
        event = await people[0].wait_for(lambda e: e["type"] == "user_left"
                                         and e["session_id"] == gone.session_id, 8)
        assert event["reason"]
        assert await wait_until(lambda: stats(server)["sessions"] == 2, 5)
    finally:
        await close_all(people[:2])
    assert await wait_until(lambda: stats(server)["sessions"] == 0, 8)
    assert await wait_until(lambda: stats(server)["calls"] == 0, 2)


async def test_participant_whose_network_vanished_is_removed(serve_factory):
    server = serve_factory(env={"CALLSCTL_SESSION_TIMEOUT": "2"})
    people = await join_all(server, 2)
    try:
        vanished = people[1]
        # Drop every datagram the participant would send: its signaling stays up,
        # its media and ICE consent stop, as when a laptop leaves the Wi-Fi.
        connection = aiortc_bridge.ice_connection(vanished.pc.sctp.transport.transport)
        for protocol in aiortc_bridge.protocols(connection):
            protocol.transport.sendto = lambda *args, **kwargs: None
        event = await people[0].wait_for(lambda e: e["type"] == "user_left"
                                         and e["session_id"] == vanished.session_id, 8)
        assert "no media" in event["reason"]
        removed = await vanished.wait_for(lambda e: e["type"] == "error", 3)
        assert removed["code"] == "session_removed"
    finally:
        await close_all(people)


async def test_reconnect_keeps_the_session(serve_factory):
    server = serve_factory(env={"CALLSCTL_RECONNECT_GRACE": "5"})
    people = await join_all(server, 2)
    stays, flaky = people
    try:
        await flaky._ws.close()
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"{server.ws_url}?token={server.token('room', 'user1')}")
            await ws.send_json({"type": "reconnect", "session_id": flaky.session_id})
            joined = await ws.receive_json(timeout=5)
            assert joined["type"] == "joined" and joined["session_id"] == flaky.session_id
            await asyncio.sleep(6)  # past the grace period: still in the call
            assert not any(e["type"] == "user_left" for e in stays.events)
            assert stats(server)["sessions"] == 2
            await ws.close()
    finally:
        await close_all(people)


async def _ws_error(ws: aiohttp.ClientWebSocketResponse) -> dict:
    while True:
        message = await ws.receive(timeout=5)
        assert message.type == aiohttp.WSMsgType.TEXT, message
        event = json.loads(message.data)
        if event["type"] == "error":
            return event


async def test_bad_messages_get_errors_and_the_server_survives(server):
    people = await join_all(server, 2)
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"{server.ws_url}?token={server.token('room', 'eve')}")
            cases = [
                ('{"type": "mute"}', "not_joined"),
                ("{not json", "bad_json"),
                ('["join"]', "bad_message"),
                ('{"type": "fly"}', "unknown_type"),
                ('{"type": "join", "call": 42}', "bad_message"),
                ('{"type": "join", "call": "other-room"}', "forbidden"),
                ('{"type": "ping", "x": "' + "a" * 70000 + '"}', "message_too_large"),
            ]
            for raw, code in cases:
                await ws.send_str(raw)
                assert (await _ws_error(ws))["code"] == code, raw
            await ws.send_bytes(b"\x00\x01")
            assert (await _ws_error(ws))["code"] == "bad_message"
            await ws.send_str('{"type": "join", "call": "room"}')
            joined = await ws.receive_json(timeout=5)
            assert joined["type"] == "joined"
            for raw in ('{"type": "signal", "data": {"type": "offer", "sdp": "garbage"}}',
                        '{"type": "signal", "data": {"type": "answer", "sdp": "v=0\\r\\n"}}',
                        '{"type": "signal", "data": {"type": "candidate", "candidate": '
                        '{"candidate": "candidate:nonsense"}}}',
                        '{"type": "signal", "data": {"type": "wat"}}',
                        '{"type": "join", "call": "room"}'):
                await ws.send_str(raw)
                assert (await _ws_error(ws))["code"] in ("bad_signal", "already_joined"), raw
            await ws.close()
        # The call and its media are unaffected.
        before = people[0].frames_from[people[1].session_id]
        assert await wait_until(
            lambda: people[0].frames_from[people[1].session_id] > before + 20, 5)
        assert httpx.get(f"{server.api_url}/healthz").status_code == 200
    finally:
        await close_all(people)


async def test_tokens_are_checked_before_anything_else(server):
    expired = issue_token(load_or_create_secret(server.data_dir), "room", "late", 10,
                          now=time.time() - 60)
    async with aiohttp.ClientSession() as http:
        for query in ("", "?token=garbage", f"?token={expired}"):
            ws = await http.ws_connect(f"{server.ws_url}{query}")
            event = await ws.receive_json(timeout=5)
            assert event["type"] == "error" and event["code"] == "unauthorized"
            closing = await ws.receive(timeout=5)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            await ws.close()
    assert stats(server)["sessions"] == 0


async def test_max_call_participants_is_enforced(serve_factory):
    server = serve_factory("--max-call-participants", "2")
    people = await join_all(server, 2)
    try:
        third = Participant(server.ws_url, server.token("room", "late"), "room", "Late")
        with pytest.raises(Exception, match="call_full"):
            await third.join()
        await third.close()
        other_call = Participant(server.ws_url, server.token("other", "x"), "other", "X")
        await other_call.join()  # the limit is per call
        await other_call.close()
    finally:
        await close_all(people)


async def test_sigterm_ends_calls_and_frees_the_port(serve_factory):
    server = serve_factory()
    people = await join_all(server, 2)
    try:
        server.process.send_signal(signal.SIGTERM)
        for person in people:
            event = await person.wait_for(lambda e: e["type"] == "call_end", 8)
            assert event["call"] == "room"
        assert await asyncio.get_running_loop().run_in_executor(
            None, server.process.wait, 10) == 0
    finally:
        await close_all(people)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", server.udp_port))  # freed


def test_web_client_and_info_routes(server):
    page = httpx.get(f"{server.api_url}/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert httpx.get(f"{server.api_url}/web/app.js").status_code == 200
    info = httpx.get(f"{server.api_url}/version").json()
    assert info["udp_port"] == server.udp_port
    ice = info["ice"]
    assert {k: ice[k] for k in ("host", "udp_port", "tcp_port", "source")} == {
        "host": "127.0.0.1", "udp_port": server.udp_port, "tcp_port": server.udp_port,
        "source": "bind"}  # ICE-TCP listens on the UDP port's number by default
    assert info["tcp_port"] == server.udp_port
    assert httpx.get(f"{server.api_url}/readyz").status_code == 200
    missing = httpx.get(f"{server.api_url}/nope")
    assert missing.status_code == 404 and missing.json()["status"] == 404


def test_startup_prints_a_working_join_link(tmp_path):
    api, udp = free_port(), free_port(socket.SOCK_DGRAM)
    process = subprocess.Popen(
        [sys.executable, "-m", "callsctl", "serve", "--bind", "127.0.0.1", "--api-port",
         str(api), "--udp-port", str(udp), "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
    try:
        link = None
        deadline = time.monotonic() + 20
        while link is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if "/?token=" in line:
                link = line.strip()
        assert link and link.startswith(f"http://127.0.0.1:{api}/?token=")
        assert httpx.get(link).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0


@pytest.mark.parametrize("which", ["udp", "api"])
def test_port_in_use_is_one_line_with_the_fix(tmp_path, which):
    kind = socket.SOCK_DGRAM if which == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as blocker:
        blocker.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            blocker.listen()
        port = blocker.getsockname()[1]
        other = free_port(socket.SOCK_STREAM if which == "udp" else socket.SOCK_DGRAM)
        ports = (["--udp-port", str(port), "--api-port", str(other)] if which == "udp"
                 else ["--api-port", str(port), "--udp-port", str(other)])
        result = run_cli("serve", "--bind", "127.0.0.1", "--data-dir", str(tmp_path), *ports,
                         timeout=30)
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]  # earlier lines are ordinary log lines
    assert line.startswith("callsctl: error: ") and "already in use" in line
    assert ("--udp-port" if which == "udp" else "--api-port") in line
    assert "Traceback" not in result.stderr


def test_bad_bind_address_and_unwritable_data_dir(tmp_path):
    result = run_cli("serve", "--bind", "192.0.2.254", "--udp-port", "0", "--api-port", "0",
                     "--data-dir", str(tmp_path), timeout=30)
    assert result.returncode == 1 and "not an address of this host" in result.stderr
    blocked = tmp_path / "file"
    blocked.write_text("")
    result = run_cli("serve", "--data-dir", str(blocked / "sub"), "--udp-port", "0",
                     "--api-port", "0", timeout=30)
    assert result.returncode == 1 and "data dir" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(not is_root(), reason="needs root to run the command as nobody")
def test_privileged_port_without_permission():
    data_dir = tempfile.mkdtemp(prefix="callsctl-nobody-")
    os.chmod(data_dir, 0o777)
    result = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         sys.executable, "-m", "callsctl", "serve", "--bind", "127.0.0.1", "--udp-port", "443",
         "--api-port", "0", "--data-dir", data_dir],
        capture_output=True, text=True, timeout=30, cwd=REPO)
    shutil.rmtree(data_dir, ignore_errors=True)
    assert result.returncode == 1
    assert "no permission" in result.stderr and "CAP_NET_BIND_SERVICE" in result.stderr


async def test_glare_server_offer_wins_and_client_offer_is_ignored(server):
    first = Participant(server.ws_url, server.token("room", "a"), "room", "A")
    await first.join()
    await first.wait_connected(15)
    # Hold A's incoming signals so the server's next offer stays pending.
    held: asyncio.Queue = asyncio.Queue()
    live_queue, first._signals = first._signals, held
    mark = len(first.events)
    second = Participant(server.ws_url, server.token("room", "b"), "room", "B")
    await second.join()
    await second.wait_connected(15)
    server_offer = await asyncio.wait_for(held.get(), 10)
    assert server_offer["type"] == "offer"
    # A now offers too (its current description re-sent): a collision.
    await first.send({"type": "signal", "data": {"type": "offer",
                                                 "sdp": first.pc.localDescription.sdp}})
    await asyncio.sleep(0.5)
    assert not any(e["type"] == "error" for e in first.events[mark:])
    assert not any(e.get("type") == "signal" and e["data"]["type"] == "answer"
                   for e in first.events[mark:])
    # A yields, as the Mattermost client does: it answers the server's offer.
    first._signals = live_queue
    live_queue.put_nowait(server_offer)
    try:
        assert await wait_until(lambda: first.frames_from[second.session_id] > 20, 10)
        assert await wait_until(lambda: second.frames_from[first.session_id] > 20, 10)
    finally:
        await close_all([first, second])
