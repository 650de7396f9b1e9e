"""`callsctl loadtest` against a real `callsctl serve` on loopback, and its admission rules.

The run is short (a handful of participants, seconds), so it checks that the
measurement works, never a performance figure: figures live in bench/.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import socket
import subprocess
import sys
from typing import Any

import httpx
import pytest

from callsctl.loadtest.command import default_join_duration
from callsctl_sfu.client.loadgen import (
    LoadConfig,
    LoadConfigError,
    LoadTest,
    percentiles,
    source_of,
)
from callsctl_sfu.rtc import fastpath
from tests.support.admin import admin_client
from tests.support.helpers import REPO, run_cli, wait_until


def _one_line_error(result) -> str:
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("callsctl: error: ")
    return lines[0]


@pytest.mark.parametrize("receive_thread", ["on", "off"])
def test_loadtest_json_report_against_a_real_server(server, receive_thread: str) -> None:
    """Both receive paths measure the same: the C thread (pump.py) and asyncio's."""
    if receive_thread == "on" and fastpath.receive_pump_type() is None:
        pytest.skip("the C extension is not built")
    # The load generator's own collector policy, from 2 participants on (gcpolicy.py).
    result = run_cli("loadtest", "--host", server.api_url, "--data-dir", str(server.data_dir),
                     "--calls", "1", "--users-per-call", "4", "--unmuted", "2",
                     "--duration", "5s", "--join-duration", "1s", "--json", timeout=60,
                     env={"CALLSCTL_LOADGEN_GC_FREEZE": "2",
                          "CALLSCTL_LOADGEN_PUMP": "1" if receive_thread == "on" else "0"})
    assert result.returncode == 0, result.stderr + server.log()[-2000:]
    report = json.loads(result.stdout)  # stdout is exactly one JSON object
    assert report["ok"] is True
    pumped = report["loadgen"]["receive_thread"]
    if receive_thread == "on":  # every copy read there; only STUN, DTLS and samples came up
        assert pumped["datagrams"] > 0 and pumped["dropped"] == 0, pumped
        assert pumped["wakes"] < pumped["datagrams"], pumped
    else:
        assert pumped is None
    # it froze its participants while they joined, and still measured everyone's media below
    collections = report["loadgen"]["gc_full_collections"]
    assert collections["freezes"] >= 1 and collections["count"] >= 0, collections
    people = report["participants"]
    assert people == {**people, "requested": 4, "joined": 4, "failed": 0}
    assert report["join_s"]["p99"] > 0

    media = report["media"]
    assert media["senders"] == 2 and media["packets_sent"] > 0
    assert media["loss"] <= 0.02, media
    receivers = {r["user"]: r for r in media["per_receiver"]}
    assert len(receivers) == 4
    speakers = ["loadtest-1-u1", "loadtest-1-u2"]
    for user, receiver in receivers.items():
        for speaker in speakers:
            if speaker == user:
                continue
            expected, received = receiver["sources"][f"{speaker}/audio"]
            assert expected > 0 and received >= 0.95 * expected, (user, receiver)

    # The send-time stamp rode through the SFU in RTP padding and was read back.
    delay = report["delay_ms"]
    assert delay["samples"] > 0 and 0 <= delay["p50"] <= delay["p99"]

    window = report["server"]["window"]
    assert report["server"]["source"] == "proc"
    assert window["forwarded_packets"] > 0 and window["cpu_us_per_forwarded_packet"] > 0


def test_data_channel_opens_and_the_server_answers_its_ping(server) -> None:
    """--data-channel: every participant opens `calls-dc` as the clients do.

    The pong comes from the server's peer (rtc/peer.py answers "ping" only on
    a channel labelled calls-dc), so a pong per participant shows the server
    saw each channel open over SCTP/DTLS, next to the media.
    """
    result = run_cli("loadtest", "--host", server.api_url, "--data-dir", str(server.data_dir),
                     "--users-per-call", "3", "--unmuted", "1", "--duration", "5s",
                     "--join-duration", "1s", "--data-channel", "--json", timeout=60)
    assert result.returncode == 0, result.stderr + server.log()[-2000:]
    report = json.loads(result.stdout)
    assert report["settings"]["data_channel"] is True
    people = report["participants"]
    assert people["joined"] == 3, people
    assert people["data_channels_open"] == 3 and people["data_channel_pongs"] == 3, people
    assert report["media"]["loss"] <= 0.02, report["media"]

    # Without the option (the default) no channel is opened and none is reported.
    result = run_cli("loadtest", "--host", server.api_url, "--data-dir", str(server.data_dir),
                     "--users-per-call", "2", "--unmuted", "1", "--duration", "4s",
                     "--join-duration", "1s", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["settings"]["data_channel"] is False
    assert report["participants"]["data_channels_open"] is None


async def test_srtp_profile_makes_participants_pick_as_chromium_does(server) -> None:
    """--srtp-profile SRTP_AES128_CM_SHA1_80: participants, the DTLS servers of their
    sessions, pick AES-CM as Chromium does; they hear each other, and while they are in
    the call the server reports that profile for the sessions its own sender protects."""
    run = subprocess.Popen(
        [sys.executable, "-m", "callsctl", "loadtest", "--host", server.api_url, "--data-dir",
         str(server.data_dir), "--users-per-call", "3", "--unmuted", "2", "--duration", "8s",
         "--join-duration", "1s", "--srtp-profile", "SRTP_AES128_CM_SHA1_80",
         "--call-prefix", "cm", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        seen: list[dict] = []

        def three_sealed() -> bool:
            seen.append(httpx.get(f"{server.api_url}/stats", timeout=5).json()["srtp_sealer"])
            return seen[-1]["sessions"] == 3 and seen[-1]["packets"] > 50

        if fastpath.SEALER_SHA1 == "sha-ni":  # AES-CM gets the sealer only with SHA-NI
            assert await wait_until(three_sealed, 20, interval=0.3), seen[-3:]
            assert seen[-1]["profiles"] == {"SRTP_AES128_CM_SHA1_80": 3}, seen[-1]
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, err + server.log()[-2000:]
    report = json.loads(out)
    assert report["settings"]["srtp_profile"] == "SRTP_AES128_CM_SHA1_80"
    assert report["participants"]["joined"] == 3 and report["media"]["loss"] <= 0.02


def test_loadtest_human_report(server) -> None:
    # No --join-duration: its default scales with --duration (here 2 s of joins).
    result = run_cli("loadtest", "--host", server.api_url, "--data-dir", str(server.data_dir),
                     "--users-per-call", "2", "--unmuted", "1", "--duration", "4s",
                     timeout=60)
    assert result.returncode == 0, result.stderr
    assert "2/2 joined, 0 failed" in result.stdout
    assert "forwarding delay" in result.stdout and "loss" in result.stdout
    # its own GC pauses, shown (the table may wrap the line anywhere: read it as words)
    assert "full collections (longest" in " ".join(result.stdout.split())


def test_a_short_duration_alone_is_admitted() -> None:
    assert default_join_duration(60) == 30 and default_join_duration(15) == 7.5
    assert default_join_duration(3600) == 30
    # Admitted (no usage error about --join-duration): it gets as far as the server.
    result = run_cli("loadtest", "--host", "http://127.0.0.1:9", "--token-secret", "s",
                     "--duration", "15s", timeout=30)
    assert result.returncode == 1
    assert "cannot reach" in _one_line_error(result)


def test_non_loopback_target_is_refused_without_allow_remote(tmp_path) -> None:
    result = run_cli("loadtest", "--host", "http://203.0.113.7:8045", "--token-secret", "s",
                     "--duration", "3s", "--join-duration", "1s", timeout=30)
    assert result.returncode == 2
    assert "--allow-remote" in _one_line_error(result)


def test_absurd_values_are_refused(tmp_path) -> None:
    cases = [("--users-per-call", "100000"), ("--calls", "0"), ("--unmuted", "50"),
             ("--duration", "9h"), ("--join-duration", "10s"),
             ("--srtp-profile", "SRTP_NULL_HMAC_SHA1_80")]
    for flag, value in cases:
        args = ["loadtest", "--host", "http://127.0.0.1:9", "--token-secret", "s",
                "--duration", "5s", "--join-duration", "1s", flag, value]
        result = run_cli(*args, timeout=30)
        assert result.returncode == 2, (flag, value, result.stderr)
        _one_line_error(result)


def test_missing_secret_is_one_line(tmp_path) -> None:
    result = run_cli("loadtest", "--host", "http://127.0.0.1:9", "--data-dir",
                     str(tmp_path / "nothing-here"), "--duration", "3s", "--join-duration", "1s",
                     timeout=30)
    assert result.returncode == 1
    assert "jwt_secret" in _one_line_error(result)


def test_engine_helpers() -> None:
    assert source_of("abc abc-audio", "audio") == ("abc", "audio")
    assert source_of("screen-abc abc-screen", "video") == ("abc", "screen")
    assert source_of("screen-abc x", "video") == ("abc", "screen")
    assert source_of("- x", "audio") is None
    assert percentiles([]) is None
    assert percentiles(range(1, 101)) == {"p50": 50, "p95": 95, "p99": 99, "max": 100}
    config = LoadConfig(ws_url="ws://127.0.0.1:1/ws", token_for=lambda c, u: "t",
                        calls=3, users_per_call=400)
    try:
        config.validate()
    except LoadConfigError as exc:
        assert "1200 participants" in str(exc)
    else:
        raise AssertionError("1200 participants were admitted")


def test_simulcast_screen_share_reaches_both_layers(serve_factory) -> None:
    """The load generator's simulcast screen share against a server that accepts it.

    Both layers must arrive (the server measures each layer's bitrate from the
    rid in every packet) and the viewers must get the screen: one layer each.
    """
    server = serve_factory(env={"CALLSCTL_ENABLE_SIMULCAST": "true"})
    seen: list[dict[str, Any]] = []  # GET /stats "simulcast" entries while media flows

    async def during_window(edge: str) -> None:
        # The server's layer rates are per second: read them while everyone still
        # sends (the generator stops sending before the window's "end" edge).
        if edge == "start":
            async with httpx.AsyncClient() as http:
                for _ in range(4):
                    stats = (await http.get(f"{server.api_url}/stats", timeout=5)).json()
                    seen.extend(s for s in stats.get("simulcast", []) if s["label"] == "screen")
                    await asyncio.sleep(0.5)

    config = LoadConfig(ws_url=server.ws_url, token_for=lambda c, u: server.token(c, u),
                        calls=1, users_per_call=3, unmuted=1, screen_sharing=True,
                        simulcast=True, duration=12, join_duration=0.5, window=3,
                        local_address="127.0.0.1", settle_timeout=5)
    report = asyncio.run(LoadTest(config, on_window=during_window).run()).to_dict()

    assert report["participants"]["joined"] == 3, report["participants"]
    assert seen, "GET /stats never listed the simulcast screen share"
    layers = {rid: max(s["layers_bps"].get(rid, 0) for s in seen) for rid in ("l", "h")}
    assert layers["l"] > 0 and layers["h"] > layers["l"], layers
    assert len(seen[-1]["receivers"]) == 2, seen[-1]
    presenter = "loadtest-1-u1"
    for receiver in report["media"]["per_receiver"]:
        if receiver["user"] == presenter:
            continue
        expected, received = receiver["sources"][f"{presenter}/screen"]
        assert expected > 0 and received > 0, receiver


def test_probes_alone_are_measured_and_gather_on_their_own_address(server) -> None:
    """With probes set (the benches' sink meter), loss and delay come from the probes only.

    The probes are spread over the call (first and last joiner among them) and
    gather on the probe address, which is how a packet filter outside the
    generator tells them apart; the server must accept and serve them there.
    """
    addresses: dict[str, str] = {}

    async def during_window(edge: str) -> None:
        if edge == "start":
            for participant in test.participants:
                addresses[participant.user] = test.address_for(participant)

    config = LoadConfig(ws_url=server.ws_url, token_for=lambda c, u: server.token(c, u),
                        calls=1, users_per_call=5, unmuted=2, duration=12, join_duration=0.5,
                        window=2, local_address="127.0.0.1", settle_timeout=5,
                        probes_per_call=2, probe_address="127.0.0.2")
    test = LoadTest(config, on_window=during_window)
    report = asyncio.run(test.run()).to_dict()

    assert report["participants"]["joined"] == 5, report["participants"]
    media = report["media"]
    probes = {"loadtest-1-u1", "loadtest-1-u5"}
    assert {r["user"] for r in media["per_receiver"]} == probes
    assert media["receivers_measured"] == 2
    assert media["loss"] <= 0.02, media
    assert report["delay_ms"]["samples"] > 0
    assert {u for u, a in addresses.items() if a == "127.0.0.2"} == probes
    assert {a for u, a in addresses.items() if u not in probes} == {"127.0.0.1"}


def test_probe_settings_are_checked() -> None:
    def refused(**settings: Any) -> str:
        config = LoadConfig(ws_url="ws://127.0.0.1:1/ws", token_for=lambda c, u: "t",
                            **settings)
        try:
            config.validate()
        except LoadConfigError as exc:
            return str(exc)
        return ""

    assert "probe address" in refused(users_per_call=10, probes_per_call=2)
    assert "probes per call must be 0..10" in refused(users_per_call=10, probes_per_call=11,
                                                      probe_address="127.0.0.2")
    # Probed runs read only the probes' packets: they may hold more participants.
    assert refused(calls=1, users_per_call=1500, probes_per_call=8,
                   probe_address="127.0.0.2") == ""
    assert "at most 1000" in refused(calls=3, users_per_call=500)


def test_a_library_task_failing_during_a_run_is_one_line_not_a_traceback(server, caplog):
    """aiortc's own connect task fails when a participant that could not join is closed
    under it; nobody can await that task, so asyncio would print "Task exception was
    never retrieved" with a traceback per participant. During a run it is one line."""
    async def doomed_connect() -> None:
        raise RuntimeError("RTCIceTransport is closed")

    async def on_window(edge: str) -> None:
        if edge == "start":  # like aiortc's __connect: a task nobody keeps or awaits
            asyncio.get_running_loop().create_task(doomed_connect())
            await asyncio.sleep(0.05)
            gc.collect()

    config = LoadConfig(ws_url=server.ws_url, token_for=lambda c, u: server.token(c, u),
                        calls=1, users_per_call=2, unmuted=1, duration=4, join_duration=1,
                        window=1, local_address="127.0.0.1", settle_timeout=8)

    async def run() -> Any:
        loop = asyncio.get_running_loop()
        report = await LoadTest(config, on_window=on_window).run()
        assert loop.get_exception_handler() is None  # the caller's handler is back
        return report

    with caplog.at_level(logging.INFO):
        report = asyncio.run(run())
    assert report.to_dict()["participants"]["joined"] == 2
    lines = [r for r in caplog.records if "RTCIceTransport is closed" in r.getMessage()]
    assert len(lines) == 1 and lines[0].name == "callsctl_sfu.tasks", lines
    assert lines[0].exc_info is None
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()
                and r.name == "asyncio"]


def test_one_timer_checks_every_participants_consent_and_sends_their_reports(server, monkeypatch):
    """The generator's ICE consent (RFC 7675) and RTCP reports, from one timer each.

    Its participants' consent is checked by one `ConsentScheduler` (aioice's task
    per connection ends at once) and answered by the server; every connected
    participant sends receiver reports on its own schedule, late joiners too.
    """
    from callsctl_sfu.client.loadgen.participant import LightParticipant
    from callsctl_sfu.rtc import aiortc_bridge
    from callsctl_sfu.rtc.consent import ConsentScheduler

    reports: dict[str, int] = {}
    original = LightParticipant.send_receiver_report

    def counted(self: LightParticipant) -> None:
        reports[self.user] = reports.get(self.user, 0) + 1
        original(self)

    monkeypatch.setattr(LightParticipant, "send_receiver_report", counted)
    aioice_tasks_ended: list[bool] = []

    sessions: list[dict] = []

    async def during_window(edge: str) -> None:
        if edge == "start":
            for participant in test.participants:
                transport = participant.pc.getTransceivers()[0].sender.transport.transport
                task = aiortc_bridge.consent_task(aiortc_bridge.ice_connection(transport))
                aioice_tasks_ended.append(task is not None and task.done())
        else:
            async with admin_client(server) as admin:
                sessions.extend((await admin.get("/api/v1/calls/loadtest-1")).json()["sessions"])

    config = LoadConfig(ws_url=server.ws_url, token_for=lambda c, u: server.token(c, u),
                        calls=1, users_per_call=4, unmuted=1, duration=10, join_duration=1.5,
                        window=4, local_address="127.0.0.1", settle_timeout=5)
    test = LoadTest(config, on_window=during_window)
    test.consent = ConsentScheduler(interval=0.5)
    monkeypatch.setattr(test, "report_interval", lambda: 0.5)
    report = asyncio.run(test.run()).to_dict()

    assert report["participants"]["joined"] == 4, report["participants"]
    assert aioice_tasks_ended == [True] * 4
    stats = test.consent.stats
    # About 4 participants x 6 s connected / 0.5 s; a few may be outstanding at the close.
    assert stats.checks_sent >= 30 and stats.checks_answered >= stats.checks_sent - 8, stats
    assert stats.expired == 0
    assert sorted(reports) == [f"loadtest-1-u{i}" for i in range(1, 5)], reports
    assert min(reports.values()) >= 5, reports
    # The reports carry a block per stream received, as browsers' do: the server
    # knows every listener's downlink loss and jitter from them.
    assert len(sessions) == 4, sessions
    assert all(s["loss"] == 0.0 and s["jitter_ms"] is not None for s in sessions), sessions


async def test_a_participant_drains_its_socket_in_batches_not_one_datagram_a_wake_up() -> None:
    """A receiver socket that fell behind (a busy generator during the joins) catches up.

    asyncio reads one datagram per wake-up; the participant reads the rest of
    what is queued in the same call (up to 64), so a backlog drains in a few
    loop passes instead of standing for the whole run and reading as delay.
    Real sockets on loopback; non-RTP datagrams (STUN, DTLS) still reach the
    ICE protocol underneath.
    """
    from callsctl_sfu.client.loadgen.config import Role
    from callsctl_sfu.client.loadgen.participant import READ_BATCH, LightParticipant

    test = LoadTest(LoadConfig(ws_url="ws://127.0.0.1:9/ws", token_for=lambda _c, _u: "t"))
    participant = LightParticipant(test, "c", "loadtest-1-u1", Role())
    participant.probe = False  # counted only: no keys to read the stamps with here
    underneath: list[bytes] = []
    transport, protocol = await _ice_endpoint(underneath)
    wake_ups = 0
    batched = participant._receiver(protocol.datagram_received, protocol.error_received,
                                    transport)

    def counted(data: bytes, addr: Any) -> None:
        nonlocal wake_ups
        wake_ups += 1
        batched(data, addr)

    protocol.datagram_received = counted  # type: ignore[method-assign]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rtp = bytes([0x80, 111]) + b"\x00\x01" + b"\x00" * 4 + (0x1234).to_bytes(4, "big")
        stun = b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + b"\x00" * 12
        backlog = 3 * READ_BATCH
        for number in range(backlog):  # queued before the loop runs again: a backlog
            sender.sendto(stun if number == 10 else rtp + bytes(20), transport.get_extra_info(
                "sockname"))
        for _ in range(100):
            if sum(participant.received.values()) + len(underneath) >= backlog:
                break
            await asyncio.sleep(0.01)
        assert participant.received == {0x1234: backlog - 1}
        assert underneath == [stun]
        assert wake_ups <= 4, wake_ups  # 192 datagrams: 3 batches, not 192 wake-ups
    finally:
        sender.close()
        transport.close()


@pytest.mark.skipif(fastpath.receive_pump_type() is None, reason="the C extension is not built")
async def test_the_receive_thread_counts_samples_and_hands_up_the_rest() -> None:
    """A participant's socket read by the C receive thread (pump.py, rtc/_recvpump.c).

    Real sockets on loopback: SRTP is counted per SSRC on the thread, every Nth
    packet of a probe comes up with the time it was read, STUN reaches the ICE
    protocol underneath, SRTCP is counted; once the participant releases the
    socket its counts stay and the thread reads it no more.
    """
    import time

    from callsctl_sfu.client.loadgen.config import Role
    from callsctl_sfu.client.loadgen.participant import LightParticipant

    test = LoadTest(LoadConfig(ws_url="ws://127.0.0.1:9/ws", token_for=lambda _c, _u: "t",
                               delay_sample_every=5))
    participant = LightParticipant(test, "c", "loadtest-1-u1", Role())
    participant.probe = True
    samples: list[tuple[bytes, float]] = []
    participant._sample_read = lambda data, arrived: samples.append((data, arrived))
    underneath: list[bytes] = []
    transport, protocol = await _ice_endpoint(underneath)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    address = transport.get_extra_info("sockname")
    try:
        assert participant._read_on_pump(protocol, transport) is True
        started = time.monotonic()
        rtp = bytes([0x80, 111]) + b"\x00\x01" + b"\x00" * 4
        stun = b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + b"\x00" * 12
        srtcp = bytes([0x81, 201]) + b"\x00\x07" + b"\x00" * 28
        for number in range(200):
            ssrc = 0x1234 if number % 2 else 0x5678
            sender.sendto(rtp + ssrc.to_bytes(4, "big") + bytes(20), address)
        sender.sendto(stun, address)
        sender.sendto(srtcp, address)
        for _ in range(200):
            if sum(participant.received.values()) == 200 and underneath:
                break
            await asyncio.sleep(0.01)
        assert participant.received == {0x1234: 100, 0x5678: 100}
        assert participant.rtcp_in == 1
        assert underneath == [stun]
        assert len(samples) == 40  # every 5th of each stream
        assert all(started <= arrived <= time.monotonic() for _data, arrived in samples)
        assert started <= participant.first_media_at <= time.monotonic()

        participant.release_socket()
        assert participant.received == {0x1234: 100, 0x5678: 100}  # kept
        sender.sendto(stun, address)
        await asyncio.sleep(0.1)
        assert underneath == [stun]  # the thread no longer reads it ...
        fd = transport.get_extra_info("socket").fileno()
        assert os.read(fd, 100) == stun  # ... it is still queued
    finally:
        sender.close()
        transport.close()
        test.receive_pump().close()


async def _ice_endpoint(underneath: list[bytes]) -> tuple[Any, Any]:
    """A loopback datagram endpoint standing for a participant's ICE protocol: what
    reaches it (STUN, DTLS) is appended to `underneath`."""

    class IceProtocol(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            underneath.append(data)

    return await asyncio.get_running_loop().create_datagram_endpoint(
        IceProtocol, local_addr=("127.0.0.1", 0))
