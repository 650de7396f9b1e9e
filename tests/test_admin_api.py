"""The admin API against a real `callsctl serve` with aiortc participants in calls.

What an operator (or the TUI) relies on: nothing answers without the admin
key; live calls and sessions are described with real ICE and media numbers;
every host control changes what the server does *and* is observed by the
affected participant; per-call settings refuse joins; errors are clear JSON;
the SSE stream carries the call's events; signaling is rate-limited per
connection without disconnecting anyone.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import pytest

from callsctl_sfu.client.participant import ParticipantError
from callsctl_sfu.rtc import aiortc_bridge
from tests.support.admin import EventStream, admin_client, admin_key, join
from tests.support.helpers import wait_until
from tests.support.serve import start_serve


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One server for the module, in test mode (--no-default-enabled): every test
    enables the call ids it uses, which exercises the per-call settings on the way."""
    started = start_serve(tmp_path_factory.mktemp("admin"), "--no-default-enabled", env={
        "CALLSCTL_WS_RATE_LIMIT": "10", "CALLSCTL_WS_RATE_BURST": "20",
        "CALLSCTL_RECONNECT_GRACE": "1"})
    yield started
    started.stop()


def enable(server: Any, *call_ids: str) -> None:
    for call_id in call_ids:
        response = httpx.put(f"{server.api_url}/api/v1/settings/calls/{call_id}",
                             json={"enabled": True}, timeout=10,
                             headers={"Authorization": f"Bearer {admin_key(server)}"})
        assert response.status_code == 200, response.text


ROUTES = [
    ("GET", "/api/v1/calls"), ("GET", "/api/v1/calls/c1"), ("DELETE", "/api/v1/calls/c1"),
    ("POST", "/api/v1/calls/c1/host"), ("POST", "/api/v1/calls/c1/mute-others"),
    ("POST", "/api/v1/calls/c1/sessions/s1/mute"),
    ("POST", "/api/v1/calls/c1/sessions/s1/stop-screen"),
    ("POST", "/api/v1/calls/c1/sessions/s1/lower-hand"),
    ("DELETE", "/api/v1/calls/c1/sessions/s1"), ("GET", "/api/v1/settings/calls"),
    ("GET", "/api/v1/settings/calls/c1"), ("PUT", "/api/v1/settings/calls/c1"),
    ("GET", "/api/v1/history"), ("GET", "/api/v1/events"), ("GET", "/api/v1/unknown"),
]


async def test_every_admin_route_needs_the_key_and_errors_are_clear_json(server):
    async with httpx.AsyncClient(base_url=server.api_url, timeout=10) as anonymous:
        for method, path in ROUTES:
            for headers in ({}, {"Authorization": "Bearer wrong-key"},
                            {"Authorization": "Basic abc"}):
                response = await anonymous.request(method, path, headers=headers)
                assert response.status_code == 401, (method, path, headers)
                body = response.json()
                assert body["status"] == 401 and body["error"], body
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
        # Load-balancer and Prometheus endpoints are open, like rtcd's.
        system = (await anonymous.get("/system")).json()
        assert {"cpu_load", "memory_bytes", "memory_total", "sessions", "calls",
                "uptime_s"} <= set(system)
        assert system["memory_total"] >= system["memory_bytes"] > 0
        assert (await anonymous.get("/metrics")).status_code == 200
    assert (server.data_dir / "admin_key").stat().st_mode & 0o777 == 0o600

    async with admin_client(server) as admin:
        assert isinstance((await admin.get("/api/v1/calls")).json()["calls"], list)
        cases = [
            ("GET", "/api/v1/calls/nope", None, 404, "no live call 'nope'"),
            ("GET", "/api/v1/calls/" + "x" * 65, None, 400, "call_id must be"),
            ("DELETE", "/api/v1/calls/nope", None, 404, "no live call"),
            ("POST", "/api/v1/calls/nope/sessions/s/mute", None, 404, "no live call"),
            ("POST", "/api/v1/calls/nope/host", "{not json", 400, "not valid JSON"),
            ("POST", "/api/v1/calls/nope/host", "[1]", 400, "JSON object"),
            ("POST", "/api/v1/calls/nope/host", "{}", 400, "session_id"),
            ("POST", "/api/v1/calls/nope/mute-others", "", 400, "JSON object body"),
            ("PUT", "/api/v1/settings/calls/c1", '{"enabled": "yes"}', 400, "enabled"),
            ("PUT", "/api/v1/settings/calls/c1", '{"max_participants": 0}', 400,
             "max_participants"),
            ("PUT", "/api/v1/settings/calls/c1", '{"colour": 1}', 400, "unknown setting"),
            ("GET", "/api/v1/history?limit=abc", None, 400, "whole number"),
            ("GET", "/api/v1/history?limit=0", None, 400, "from 1"),
            ("POST", "/api/v1/calls", "{}", 405, "allowed: GET"),
            ("PATCH", "/api/v1/settings/calls/c1", "{}", 405, "allowed"),
            ("GET", "/api/v1/unknown", None, 404, "no API route"),
        ]
        for method, path, body, status, text in cases:
            response = await admin.request(method, path, content=body)
            assert response.status_code == status, (method, path, response.text)
            error = response.json()
            assert error["status"] == status and text in error["error"], (path, error)


async def test_calls_and_sessions_are_described_with_live_numbers(server):
    enable(server, "standup")
    alice = await join(server, "standup", "alice")
    bob = await join(server, "standup", "bob", tone=660)
    try:
        async with admin_client(server) as admin:
            listing = (await admin.get("/api/v1/calls")).json()["calls"]
            call = next(c for c in listing if c["id"] == "standup")
            assert call["participants"] == 2 and call["host"] == alice.session_id
            assert call["host_user"] == "alice" and call["screen_sharer"] is None
            assert set(call) >= {"started_at", "in_bps", "out_bps"}

            async def detail() -> dict:
                return (await admin.get("/api/v1/calls/standup")).json()

            # Rates need two samples; RTT the first consent check (~5 s); loss and
            # jitter the first receiver report.
            deadline = asyncio.get_running_loop().time() + 15
            while True:
                data = await detail()
                sessions = data["sessions"]
                ready = all(s["in_bps"] and s["out_bps"] and s["rtt_ms"] is not None
                            and s["jitter_ms"] is not None for s in sessions)
                if ready or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert ready, json.dumps(data, indent=1)
            assert data["id"] == "standup" and data["host"] == alice.session_id
            assert [s["session_id"] for s in sessions] == [alice.session_id, bob.session_id]
            by_user = {s["user"]: s for s in sessions}
            for participant, entry in ((alice, by_user["alice"]), (bob, by_user["bob"])):
                assert entry["name"] == participant.name and entry["joined_at"] > 0
                assert entry["ice_state"] == "completed" or entry["ice_state"] == "connected"
                pair = entry["candidate_pair"]
                host, port = aiortc_bridge.nominated_pair(aiortc_bridge.ice_connection(
                    participant.pc.sctp.transport.transport)).local_addr
                # The client's candidates arrive in its offer or as peer-reflexive ones.
                assert pair["type"] in ("host", "prflx"), pair
                assert pair == {"local": f"127.0.0.1:{server.udp_port}",
                                "remote": f"{host}:{port}", "type": pair["type"],
                                "protocol": "udp"}, pair
                assert 0 <= entry["rtt_ms"] < 500
                assert 0 <= entry["loss"] <= 1 and entry["jitter_ms"] >= 0
                # Opus at ~20-40 kb/s payload, 50 packets/s each way.
                assert 5_000 < entry["in_bps"] < 200_000, entry
                assert 30 < entry["in_pps"] < 80 and 30 < entry["out_pps"] < 80, entry
                assert not any(entry[k] for k in ("muted", "hand", "screen", "video"))
                directions = sorted((t["direction"], t["kind"]) for t in entry["tracks"])
                assert directions == [("in", "audio"), ("out", "audio")], entry["tracks"]
                for track in entry["tracks"]:
                    assert track["packets"] > 0 and track["ssrc"]
                    assert {"nacks", "plis"} <= set(track)
            assert data["in_bps"] and data["out_bps"]
            system = (await admin.get("/system")).json()
            assert system["sessions"] >= 2 and system["calls"] >= 1
    finally:
        await alice.leave()
        await bob.leave()


async def test_host_controls_are_observed_by_the_affected_participants(server):
    enable(server, "board")
    alice = await join(server, "board", "alice")
    bob = await join(server, "board", "bob", tone=550)
    carol = await join(server, "board", "carol", tone=660)
    a, b, c = alice.session_id, bob.session_id, carol.session_id
    try:
        async with admin_client(server) as admin, EventStream(server, "?call=board") as sse:
            base = "/api/v1/calls/board"

            async def post(path: str, body: dict | None = None) -> dict:
                response = await admin.post(base + path, json=body)
                assert response.status_code == 200, response.text
                return response.json()

            # Mute: bob is told (host_mute), everyone sees user_muted, his audio stops.
            assert await wait_until(lambda: alice.frames_from[b] > 10, 10)
            assert (await post(f"/sessions/{b}/mute"))["changed"] is True
            await bob.wait_for(lambda e: e["type"] == "host_mute" and e["session_id"] == b, 5)
            for person in (alice, carol):
                await person.wait_for(lambda e: e["type"] == "user_muted"
                                      and e["session_id"] == b, 5)
            await asyncio.sleep(0.5)
            heard = alice.frames_from[b]
            await asyncio.sleep(1.0)
            assert alice.frames_from[b] == heard, "a host-muted participant is still heard"
            assert (await post(f"/sessions/{b}/mute"))["changed"] is False

            # Mute everyone else: alice and bob (already muted) stay muted, carol keeps talking.
            result = await post("/mute-others", {"session_id": c})
            assert result["muted"] == [a]
            await alice.wait_for(lambda e: e["type"] == "host_mute", 5)
            await carol.wait_for(lambda e: e["type"] == "user_muted" and e["session_id"] == a,
                                 5)
            assert not any(e["type"] == "host_mute" for e in carol.events)

            # Lower a hand, stop a screen share: the target is told, everyone sees it.
            await carol.send({"type": "raise_hand"})
            await alice.wait_for(lambda e: e["type"] == "user_raise_hand", 5)
            assert (await post(f"/sessions/{c}/lower-hand"))["changed"] is True
            await carol.wait_for(lambda e: e["type"] == "host_lower_hand", 5)
            await alice.wait_for(lambda e: e["type"] == "user_lower_hand"
                                 and e["session_id"] == c, 5)
            await bob.send({"type": "screen_on"})
            await alice.wait_for(lambda e: e["type"] == "user_screen_on", 5)
            listing = (await admin.get("/api/v1/calls")).json()["calls"]
            assert next(c for c in listing if c["id"] == "board")["screen_sharer"] == b
            assert (await post(f"/sessions/{b}/stop-screen"))["changed"] is True
            await bob.wait_for(lambda e: e["type"] == "host_screen_off", 5)
            await carol.wait_for(lambda e: e["type"] == "user_screen_off"
                                 and e["session_id"] == b, 5)
            assert (await post(f"/sessions/{b}/stop-screen"))["changed"] is False

            # Make host: everyone learns the new host.
            assert (await post("/host", {"session_id": c}))["changed"] is True
            for person in (alice, bob, carol):
                await person.wait_for(lambda e: e["type"] == "call_host_changed"
                                      and e["host"] == c, 5)
            assert (await admin.get(base)).json()["host"] == c

            # Remove: bob gets host_removed, the others user_left; bob's session is gone.
            removed = await admin.delete(f"{base}/sessions/{b}")
            assert removed.status_code == 200 and removed.json()["removed"] is True
            await bob.wait_for(lambda e: e["type"] == "host_removed"
                               and e["session_id"] == b, 5)
            for person in (alice, carol):
                await person.wait_for(lambda e: e["type"] == "user_left"
                                      and e["session_id"] == b, 5)
            assert not any(e["type"] == "error" for e in bob.events), bob.events
            assert (await admin.post(f"{base}/sessions/{b}/mute")).status_code == 404

            # End: call_end to everyone, nobody left, the call is gone.
            ended = await admin.request("DELETE", base, json={"reason": "meeting over"})
            assert ended.status_code == 200 and ended.json()["removed"] == 2
            for person in (alice, carol):
                event = await person.wait_for(lambda e: e["type"] == "call_end", 5)
                assert event["call"] == "board" and event["reason"] == "meeting over"
            listing = (await admin.get("/api/v1/calls")).json()["calls"]
            assert "board" not in [c["id"] for c in listing]
            assert (await admin.get(base)).status_code == 404

            # The event stream saw all of it, each with its call; call_end only once.
            for kind in ("host_mute", "user_muted", "host_lower_hand", "host_screen_off",
                         "call_host_changed", "host_removed", "user_left", "call_end"):
                event = await sse.wait_for(lambda e, k=kind: e["type"] == k, 5)
                assert event["call"] == "board" and event["_sse_event"] == kind
            await asyncio.sleep(0.3)
            assert sum(e["type"] == "call_end" for e in sse.events) == 1

            history = (await admin.get("/api/v1/history?call=board")).json()["calls"]
            assert history[0]["id"] == "board" and history[0]["end_reason"] == "meeting over"
            people = {p["user"]: p for p in history[0]["participants"]}
            assert set(people) == {"alice", "bob", "carol"}
            assert all(p["left_at"] for p in people.values())
            assert "removed" in people["bob"]["leave_reason"]
    finally:
        for person in (alice, bob, carol):
            await person.close()


async def test_per_call_settings_and_test_mode(server):
    async with admin_client(server) as admin:
        with pytest.raises(ParticipantError, match="call_disabled"):
            await join(server, "lab", "alice", wait=False)
        view = (await admin.put("/api/v1/settings/calls/lab",
                                json={"enabled": True, "max_participants": 1})).json()
        assert view["effective"] == {"enabled": True, "max_participants": 1}
        assert view["default_enabled"] is False
        alice = await join(server, "lab", "alice", wait=False)
        try:
            with pytest.raises(ParticipantError, match="call_full"):
                await join(server, "lab", "bob", wait=False)
            # Merge semantics: only max_participants changes; enabled stays true.
            view = (await admin.put("/api/v1/settings/calls/lab",
                                    json={"max_participants": None})).json()
            assert view["enabled"] is True and view["max_participants"] is None
            bob = await join(server, "lab", "bob", wait=False)
            await bob.close()
            await admin.put("/api/v1/settings/calls/lab", json={"enabled": False})
            with pytest.raises(ParticipantError, match="call_disabled"):
                await join(server, "lab", "carol", wait=False)
            listed = (await admin.get("/api/v1/settings/calls")).json()
            assert listed["calls"]["lab"] == {"enabled": False, "max_participants": None}
            assert listed["default_enabled"] is False
        finally:
            await alice.close()


async def test_signaling_is_rate_limited_per_connection_without_disconnecting(server):
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{server.ws_url}?token={server.token('rl', 'eve')}")
        other = await http.ws_connect(f"{server.ws_url}?token={server.token('rl', 'dan')}")
        for _ in range(200):
            await ws.send_str('{"type": "ping"}')
        pongs, errors = 0, []
        while True:
            try:
                frame = await ws.receive_json(timeout=1.5)
            except TimeoutError:
                break
            if frame["type"] == "pong":
                pongs += 1
            else:
                errors.append(frame)
        assert 20 <= pongs < 60, pongs  # the burst plus what refilled meanwhile
        assert errors and all(e["code"] == "rate_limited" for e in errors)
        assert len(errors) <= 3, "the limit must not answer a flood with a flood"
        assert not ws.closed
        # Another connection is not affected; this one recovers as tokens refill.
        await other.send_str('{"type": "ping"}')
        assert (await other.receive_json(timeout=5))["type"] == "pong"
        await ws.send_str('{"type": "ping"}')
        assert (await ws.receive_json(timeout=5))["type"] == "pong"
        metrics = httpx.get(f"{server.api_url}/metrics", timeout=5).text
        limited = [line for line in metrics.splitlines()
                   if line.startswith("callsctl_signaling_rate_limited_total ")]
        assert limited and float(limited[0].split()[1]) >= 100
        await ws.close()
        await other.close()
