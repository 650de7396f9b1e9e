"""The C fan-out (rtc/_fanout.c) on real sockets with real SRTP contexts, and its Python twin.

Each receiver is a UDP socket on loopback holding the inbound twin of the SRTP
context the fan-out protects with; what it decrypts is what a browser would see.
The pure Python path (a build without a compiler) is tested here too: its
Target twin, and a server whose C extension cannot be imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from callsctl_sfu.client.loadgen import LoadConfig, LoadTest
from callsctl_sfu.rtc import fastpath
from callsctl_sfu.rtc.mux import UdpMux
from callsctl_sfu.rtc.rtp import PyRewrite, parse_rtp
from tests.support.clients import close_all, join_all
from tests.support.helpers import REPO, wait_until
from tests.support.prometheus import samples, value
from tests.support.srtp import KEY_LEN, Receiver

try:
    from callsctl_sfu.rtc import _fanout
except ImportError:  # the pure Python tests below still run
    _fanout = None
needs_c = pytest.mark.skipif(not fastpath.AVAILABLE or _fanout is None,
                             reason=fastpath.REASON or "C extension not built")



@pytest.fixture
def sender():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def fan(sender: socket.socket, receivers: list[Receiver], seq: int, level: int = 20,
        payload: bytes = b"opus-frame", targets: list | None = None):
    return fastpath.fanout(sender.fileno(), 0x90, True, seq, seq * 960, 0xABCDEF, payload,
                           level, targets if targets is not None else
                           [r.target for r in receivers])


@needs_c
def test_every_receiver_decrypts_its_own_rewritten_copy(sender):
    # 150 receivers: more than one sendmmsg batch.
    receivers = [Receiver(ssrc=1000 + i, level_id=None if i % 2 else 3) for i in range(150)]
    try:
        sent, plain, wire, errors, srtp_errors, stale, unsent = fan(sender, receivers, 7)
        assert (sent, errors, srtp_errors, stale, unsent) == (150, 0, 0, None, None)
        assert wire == plain + 150 * 10  # the 80-bit authentication tag on every copy
        for number, receiver in enumerate(receivers):
            packet = receiver.receive()
            assert (packet.ssrc, packet.payload_type, packet.sequence, packet.marker) == (
                1000 + number, 111, 7, True)
            assert bytes(packet.payload) == b"opus-frame"
            # Only receivers that negotiated the audio level get it, under their own id.
            assert packet.extensions == ({} if number % 2 else {3: bytes([20])})
            assert receiver.rewrite.packets == 1 and receiver.rewrite.octets == 10
    finally:
        for receiver in receivers:
            receiver.sock.close()


@needs_c
def test_c_and_python_sends_share_one_srtp_context(sender):
    """NACK answers go out the Python way: the receiver must accept both, in order."""
    receiver = Receiver(ssrc=5)
    try:
        for seq in range(1, 7):
            if seq % 2:
                fan(sender, [receiver], seq)
            else:
                packet = parse_rtp(bytes([0x80, 111]) + seq.to_bytes(2, "big")
                                   + bytes(8) + b"x")
                sender.sendto(receiver.outbound.protect(receiver.rewrite.build(packet, None)),
                              receiver.target.addr)
            assert receiver.receive().sequence == seq
    finally:
        receiver.sock.close()


@needs_c
def test_a_renominated_receiver_is_handed_back_untouched(sender):
    moved, staying = Receiver(ssrc=1), Receiver(ssrc=2)
    try:
        moved.nominated[1] = object()  # the client selected another candidate pair
        sent, *_rest, stale, unsent = fan(sender, [moved, staying], 3)
        assert sent == 1 and stale == [0] and unsent is None
        assert staying.receive().sequence == 3
        assert moved.nothing_waiting() and moved.rewrite.packets == 0
    finally:
        moved.sock.close()
        staying.sock.close()


@needs_c
def test_an_address_the_kernel_refuses_costs_only_that_copy(sender):
    good = Receiver(ssrc=9)
    bad = Receiver(ssrc=10)
    try:
        bad_target = bad.target_to(("127.0.0.1", 0))  # EINVAL from sendmmsg, no traffic
        sent, _p, _w, errors, *_rest = fan(sender, [], 4, targets=[bad_target, good.target])
        assert (sent, errors) == (1, 1)
        assert good.receive().sequence == 4
    finally:
        good.sock.close()
        bad.sock.close()


@needs_c
def test_bad_arguments_raise_instead_of_crashing(sender):
    receiver = Receiver(ssrc=1)
    try:
        # The 7-tuple the fan-out once took, or anything else, is refused by name.
        old_style = (receiver.rewrite, receiver.outbound, receiver.target.context,
                     b"\x02\x00" + bytes(14), receiver.addr, receiver.nominated, receiver.pair)
        for wrong in (("not", "a", "target"), old_style, None, PyRewrite(1, 111)):
            with pytest.raises(TypeError, match=r"targets\[1\] is a .*, not a _fanout.Target"):
                fan(sender, [], 1, targets=[receiver.target, wrong])
        assert receiver.nothing_waiting()  # refused before anything was sent
        with pytest.raises(ValueError):
            fan(sender, [receiver], 1, payload=bytes(_fanout.MAX_PAYLOAD + 1))
    finally:
        receiver.sock.close()


def test_fanout_reports_by_field_name(sender):
    receiver = Receiver(ssrc=3)
    try:
        result = fan(sender, [receiver], 2)
        assert isinstance(result, _fanout.FanoutResult)
        assert (result.sent, result.send_errors, result.stale, result.unsent) == (1, 0, None, None)
        assert result.plain_octets == 20 + 10 and receiver.receive().sequence == 2
    finally:
        receiver.sock.close()


TARGET_IMPLEMENTATIONS = [fastpath.PyTarget] + ([_fanout.Target] if _fanout else [])


@pytest.mark.parametrize("target_type", TARGET_IMPLEMENTATIONS, ids=lambda t: t.__module__)
def test_a_target_is_checked_when_built_with_one_line_errors(target_type):
    """Both twins take the same fields and refuse the same mistakes the same way."""
    rewrite = fastpath.Rewrite(ssrc=7, payload_type=111) if target_type is not \
        fastpath.PyTarget else PyRewrite(7, 111)
    pair = object()
    good = {"rewrite": rewrite, "srtp_session": None, "context": 0x1000,
            "addr": ("192.0.2.1", 5004), "nominated": {1: pair}, "pair": pair}
    target = target_type(**good)
    assert (target.rewrite, target.context, target.addr, target.pair) == (
        rewrite, 0x1000, ("192.0.2.1", 5004), pair)
    for field, wrong, error, words in (
            ("rewrite", "rewrite", TypeError, "rewrite must be"),
            ("context", 0, ValueError, "null SRTP context"),
            ("context", "0x1000", TypeError, "context must be"),
            ("addr", ("2001:db8::1", 5004), ValueError, "IPv4 address"),
            ("addr", ("192.0.2.1", 70000), ValueError, "port 0..65535"),
            ("addr", "192.0.2.1:5004", TypeError, "(host, port) tuple"),
            ("nominated", [pair], TypeError, "nominated-pair dict")):
        with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
            target_type(**{**good, field: wrong})


def test_without_the_c_extension_the_python_engine_runs_with_a_reason():
    """A build without a compiler: fastpath falls back to Python and says why."""
    probe = ("import sys; sys.modules['callsctl_sfu.rtc._fanout'] = None\n"
             "from callsctl_sfu.rtc import fastpath, rtp\n"
             "from callsctl_sfu.calls.forwarder import Forwarder\n"
             "assert fastpath.Target is fastpath.PyTarget and fastpath.Rewrite is rtp.PyRewrite\n"
             "try:\n    fastpath.fanout(0)\nexcept RuntimeError as e:\n    print(e)\n"
             "print(fastpath.ENGINE, '|', fastpath.REASON)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "the C fan-out is not available: C extension not built" in out.stdout
    assert out.stdout.strip().splitlines()[-1].startswith("python | C extension not built")


@pytest.mark.parametrize("limit_ms", [250, 0])
async def test_a_server_that_fell_behind_skips_stale_audio_and_catches_up(serve_factory,
                                                                           limit_ms):
    """Stopped for 1.5 s (as a full core stalls it), the server finds its socket full of
    audio that can no longer be played in time. With media_late_drop_ms (default 250) it
    counts those packets and forwards only what is fresh, so it is current again at once;
    with 0 it forwards every one of them, late."""
    if not fastpath.AVAILABLE:
        pytest.skip(fastpath.REASON)
    server = serve_factory("--media-late-drop-ms", str(limit_ms))
    people = await join_all(server, 3, call=f"late-{limit_ms}")
    try:
        listener = people[1]
        speaker = people[0].session_id
        assert await wait_until(lambda: listener.frames_from[speaker] > 25, 10)

        def forwarding() -> dict:
            return httpx.get(f"{server.api_url}/stats").json()["forwarding"]

        before = forwarding()
        got_before = listener.frames_from[speaker]
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(1.5)  # the clients go on sending 50 packets a second each
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        await asyncio.sleep(1.0)
        after = forwarding()
        late = after["dropped_late"] - before["dropped_late"]
        got = listener.frames_from[speaker] - got_before
        # 1.5 s + 1 s of one speaker's audio is about 125 packets.
        if limit_ms:
            # 3 speakers x ~60 packets older than 250 ms when the server read them again.
            assert late > 90, after
            assert got < 100, got
        else:
            assert late == 0, after
            assert got > 100, got
        assert after["rtp_in_c"] - before["rtp_in_c"] > 300, after  # all read, in C
        found = samples(httpx.get(f"{server.api_url}/metrics", timeout=5).text)
        assert value(found, "callsctl_dropped_packets_total", reason="late") == \
            after["dropped_late"]
        # The stall shows in the queue-delay histogram, limit or not: what the clients
        # sent while the server was stopped waited up to 1.5 s in its socket.
        name = "callsctl_media_queue_delay_seconds"
        waited_over_half_s = (value(found, f"{name}_count")
                              - value(found, f"{name}_bucket", le="0.5"))
        assert waited_over_half_s > 90, found.get(f"{name}_bucket")
        assert value(found, f"{name}_sum") > 60  # > 90 packets x over 0.5 s, and the rest
        delay = httpx.get(f"{server.api_url}/stats").json()["media_queue_delay"]
        assert delay["count"] >= value(found, f"{name}_count") > 300
        assert delay["p99_ms"] > 500, delay
    finally:
        await close_all(people)


@pytest.mark.parametrize("engine", ["c", "c-libsrtp", "c-event-loop", "python", "no-c-extension"])
async def test_both_engines_forward_audio_and_stop_a_muted_speaker(serve_factory, tmp_path,
                                                                   engine):
    """The same call through the C fan-out (its ingress on a reader thread of its own, or
    with CALLSCTL_INGRESS_THREAD=0 in the event loop), the Python path
    (CALLSCTL_FAST_PATH=0) and a server whose C extension cannot be imported (as on a
    machine without a compiler)."""
    c_engine = engine.startswith("c")
    if c_engine and not fastpath.AVAILABLE:
        pytest.skip(fastpath.REASON)
    env = None
    if engine == "c":
        env = {"CALLSCTL_INGRESS_THREAD": "1"}
    elif engine == "c-libsrtp":
        env = {"CALLSCTL_SRTP_SEALER": "0"}
    elif engine == "c-event-loop":
        env = {"CALLSCTL_INGRESS_THREAD": "0"}
    elif engine == "python":
        env = {"CALLSCTL_FAST_PATH": "0"}
    elif engine == "no-c-extension":
        hide = tmp_path / "hide_c"
        hide.mkdir()
        (hide / "sitecustomize.py").write_text(
            "import sys\nsys.modules['callsctl_sfu.rtc._fanout'] = None\n")
        env = {"PYTHONPATH": str(hide)}
    server = serve_factory(env=env)
    running = httpx.get(f"{server.api_url}/version").json()["forwarding_engine"]
    assert running["engine"] == ("c" if c_engine else "python")
    if engine == "no-c-extension":
        assert running["reason"].startswith("C extension not built"), running
    people = await join_all(server, 3, call=f"engine-{engine}")
    loud, a, b = people
    try:
        for me, person in enumerate(people):
            others = [p.session_id for i, p in enumerate(people) if i != me]
            assert await wait_until(lambda p=person, o=others: all(p.frames_from[s] > 25
                                                                   for s in o), 10), \
                f"{engine}: {person.name} got {dict(person.frames_from)}"
        # Speech is seen (RFC 6464 levels; with the reader thread, handed up when it starts
        # after a quiet), and a muted speaker is never shown speaking again.
        # One who joined while the speaker already spoke learns it from the join's snapshot
        # (`participants[].voice`), not from an event: voice-on is sent on changes only.
        for person in (a, b):
            if any(p["session_id"] == loud.session_id and p["voice"]
                   for p in person.joined["participants"]):
                continue
            await person.wait_for(lambda e: e["type"] == "user_voice_on"
                                  and e["session_id"] == loud.session_id, 5)
        # One who goes on speaking stays shown speaking: voice-off needs 1 s of quiet, and
        # the reader thread hands speech up only when it starts (the rest is heard_at).
        speaking_since = len(a.events)
        await asyncio.sleep(2.0)
        assert not [e for e in a.events[speaking_since:] if e["type"] == "user_voice_off"
                    and e["session_id"] == loud.session_id], engine
        await loud.send({"type": "mute"})  # its client keeps sending
        await a.wait_for(lambda e: e["type"] == "user_muted"
                         and e["session_id"] == loud.session_id, 5)
        muted_at = len(a.events)
        await asyncio.sleep(0.5)
        before, still = a.frames_from[loud.session_id], b.frames_from[a.session_id]
        muted_before = httpx.get(f"{server.api_url}/stats").json()["forwarding"]
        await asyncio.sleep(1.5)
        assert a.frames_from[loud.session_id] == before
        assert not [e for e in a.events[muted_at:] if e["type"] == "user_voice_on"
                    and e["session_id"] == loud.session_id]
        assert b.frames_from[a.session_id] > still + 30
        forwarding = httpx.get(f"{server.api_url}/stats").json()["forwarding"]
        assert forwarding["rtp_forwarded"] > 150 and forwarding["srtp_protect_errors"] == 0
        # The server drops the muted speaker's packets itself (its client kept sending).
        assert forwarding["dropped_muted"] > muted_before["dropped_muted"] + 30, forwarding
        reader = httpx.get(f"{server.api_url}/stats").json()["ingress"]["reader"]
        assert reader == {"c": "thread", "c-libsrtp": "thread",
                          "c-event-loop": "event-loop"}.get(engine, "python")
        # With the C engine the server's own sender protects what they receive, unless
        # switched off (rtc/sealing.py); aiortc's participants negotiate AES-256-GCM.
        sealer = httpx.get(f"{server.api_url}/stats").json()["srtp_sealer"]
        if c_engine and engine != "c-libsrtp" and fastpath.SrtpSealer is not None:
            assert sealer["sessions"] == 3 and sealer["packets"] > 150, sealer
            assert sealer["profiles"] == {"SRTP_AEAD_AES_256_GCM": 3}, sealer
            assert running["srtp_sender"] == "sealer"
        else:
            assert sealer == {"sessions": 0, "packets": 0, "profiles": {}}, sealer
        if c_engine:
            # The C ingress (rtc/_ingress.c) handled the audio after each stream's first
            # packets, before and after the mute; the Python engines never use it.
            assert forwarding["rtp_in_c"] > 0.9 * forwarding["rtp_in"], forwarding
            # Its routes' receivers were looked up once per change of a nominated pair,
            # not once per packet: the server's sessions announce their changes
            # (fastpath.NominatedPairs in aioice's place).
            checks = httpx.get(f"{server.api_url}/stats").json()["ingress"]["plan_checks"]
            assert 0 < checks < 0.2 * forwarding["rtp_in_c"], (checks, forwarding)
            assert forwarding["rtp_in_c"] > muted_before["rtp_in_c"] + 100, forwarding
        else:
            assert forwarding["rtp_in_c"] == 0, forwarding
        # Every engine reports a sample of its write costs (the forwarder's ForwardMetrics).
        found = samples(httpx.get(f"{server.api_url}/metrics", timeout=5).text)
        assert value(found, "rtcd_rtc_rtp_tracks_writes_time_count", type="audio") > 0, engine
    finally:
        await close_all(people)


@needs_c
async def test_copies_the_kernel_would_not_take_wait_in_asyncios_queue_in_order():
    """A full socket buffer: the fan-out steps aside until asyncio's queue has drained."""
    loop = asyncio.get_running_loop()
    transport, mux = await loop.create_datagram_endpoint(UdpMux, local_addr=("127.0.0.1", 0))
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(2)
    addr = receiver.getsockname()
    try:
        assert mux.fanout_fd() >= 0
        mux.fanned_out(3, 300, 0, [(b"first", addr), (b"second", addr)])
        assert mux.fanout_fd() == -1  # later packets must queue behind these
        assert [receiver.recv(64), receiver.recv(64)] == [b"first", b"second"]
        assert mux.stats.datagrams_out == 3 and mux.stats.bytes_out == 300
        mux.send4(b"third", addr)  # the Python path drains and hands back the fast path
        assert receiver.recv(64) == b"third"
        assert mux.fanout_fd() >= 0
    finally:
        receiver.close()
        transport.close()


# -- the fan-out on several threads (start_pool, --media-threads) --------------------------------

SPLIT = fastpath.PARALLEL_MIN_TARGETS


@pytest.fixture
def pool():
    """start_pool for the test; the workers are always stopped afterwards."""
    yield fastpath.start_pool
    fastpath.shutdown_pool()


def pool_workers() -> int:
    """The fan-out pool's worker threads in this process, by their name (rtc/_fanout.c):
    other threads of a test process come and go on their own schedule."""
    count = 0
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            if Path(f"/proc/self/task/{tid}/comm").read_text().strip() == "callsctl-fanout":
                count += 1
    return count


def close(receivers: list[Receiver]) -> None:
    for receiver in receivers:
        receiver.sock.close()


@needs_c
@pytest.mark.parametrize("count", [10, SPLIT - 1, SPLIT, 150])
def test_threads_send_exactly_the_datagrams_one_thread_sends(sender, pool, count):
    """Twin receiver sets with the same keys: one fed by one thread, one by two threads.

    SRTP with the same key, SSRC and packet index gives the same bytes, so every
    datagram must be identical; below PARALLEL_MIN_TARGETS the pool is not used.
    """
    keys = [os.urandom(KEY_LEN) for _ in range(count)]
    twins = [[Receiver(ssrc=2000 + i, level_id=None if i % 3 else 2, key=keys[i])
              for i in range(count)] for _ in range(2)]
    one, two = twins
    sequences = (100, 101, 102)
    try:
        assert pool(1) == 1 and fastpath.pool_threads() == 1
        split_before = fastpath.parallel_fanouts()
        alone = [fan(sender, one, seq, payload=b"frame-%d" % seq) for seq in sequences]
        assert fastpath.parallel_fanouts() == split_before  # media_threads=1: as before
        assert pool(2) == 2 and fastpath.pool_threads() == 2
        shared = [fan(sender, two, seq, payload=b"frame-%d" % seq) for seq in sequences]
        split = fastpath.parallel_fanouts() - split_before
        assert split == (len(sequences) if count >= SPLIT else 0)
        assert shared == alone  # sent, octets, no errors, no stale, no unsent
        assert alone[0].sent == count and alone[0].stale is None and alone[0].unsent is None
        for number, (a, b) in enumerate(zip(one, two, strict=True)):
            for seq in sequences:
                wire_one, wire_two = a.sock.recv(2048), b.sock.recv(2048)
                assert wire_two == wire_one, (number, seq)
                packet = parse_rtp(b.inbound.unprotect(wire_two))
                assert (packet.ssrc, packet.sequence, bytes(packet.payload)) == (
                    2000 + number, seq, b"frame-%d" % seq)
                assert packet.extensions == ({} if number % 3 else {2: bytes([20])})
            assert a.rewrite.packets == b.rewrite.packets == len(sequences)
    finally:
        close(one + two)


@needs_c
def test_with_threads_stale_targets_come_back_by_index_in_order(sender, pool):
    pool(2)
    receivers = [Receiver(ssrc=3000 + i) for i in range(130)]
    moved = [0, 5, 64, 65, 129]  # both slices, their edges, and the last one
    try:
        for i in moved:
            receivers[i].nominated[1] = object()
        split_before = fastpath.parallel_fanouts()
        result = fan(sender, receivers, 9)
        assert fastpath.parallel_fanouts() == split_before + 1
        assert (result.sent, result.stale, result.unsent) == (125, moved, None)
        for i, receiver in enumerate(receivers):
            if i in moved:
                assert receiver.rewrite.packets == 0
            else:
                assert receiver.receive().sequence == 9
        assert all(receivers[i].nothing_waiting() for i in moved[:2])
    finally:
        close(receivers)


def unsent_probe() -> None:
    """Run inside a fresh network namespace whose only route out is rate-limited (see below):
    fan out with and without threads, print what came back as JSON."""
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("10.9.0.1", 0))
    sender.setblocking(False)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)  # the kernel's minimum
    out = {}
    for threads in (1, 2):
        fastpath.start_pool(threads)
        receivers = [Receiver(ssrc=6000 + i) for i in range(150)]
        for i in (3, 100):
            receivers[i].nominated[1] = object()
        targets = [r.target_to(("10.9.0.2", 20000 + i)) for i, r in enumerate(receivers)]
        split_before = fastpath.parallel_fanouts()
        result = fastpath.fanout(sender.fileno(), 0x90, False, 77, 960, 5, bytes(900), 20,
                                 targets)
        decoded = []
        for data, addr in result.unsent or []:
            index = addr[1] - 20000
            packet = parse_rtp(receivers[index].inbound.unprotect(data))
            decoded.append([index, packet.ssrc, packet.sequence, len(packet.payload)])
        out[threads] = {"sent": result.sent, "errors": result.send_errors,
                        "stale": result.stale, "unsent": decoded,
                        "split": fastpath.parallel_fanouts() - split_before}
        close(receivers)
    fastpath.shutdown_pool()
    print(json.dumps(out))


@needs_c
def test_with_threads_copies_the_kernel_would_not_take_come_back_in_target_order():
    """A full send buffer (a veth whose qdisc drains at 8 kbit/s, in a namespace of our own
    that vanishes with the probe): every deferred copy is returned, decryptable by its
    receiver, in target order, as on one thread."""
    setup = ("ip link set lo up && ip link add v0 type veth peer name v1 && "
             "ip link set v0 up && ip link set v1 up && ip addr add 10.9.0.1/24 dev v0 && "
             "ip neigh replace 10.9.0.2 lladdr 02:00:00:00:00:02 dev v0 nud permanent && "
             "tc qdisc add dev v0 root tbf rate 8kbit burst 1600 limit 10000000 && "
             f"exec {sys.executable} -c 'from tests.test_fanout import unsent_probe; "
             "unsent_probe()'")
    probe = subprocess.run(["unshare", "--net", "--", "sh", "-c", setup], capture_output=True,
                           text=True, cwd=REPO, timeout=60)
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    for threads, seen in found.items():
        assert (seen["sent"], seen["errors"], seen["stale"]) == (148, 0, [3, 100]), threads
        indexes = [row[0] for row in seen["unsent"]]
        # The kernel took a few copies, then refused: the rest come back, in order.
        assert 100 < len(indexes) <= 148 and indexes == sorted(indexes), (threads, indexes)
        assert 3 not in indexes and 100 not in indexes and indexes[-1] == 149
        assert all(row[1:] == [6000 + row[0], 77, 900] for row in seen["unsent"])
    assert found["1"]["split"] == 0 and found["2"]["split"] == 1


@needs_c
def test_many_fanouts_on_the_pool_leave_no_thread_behind(sender):
    """Start, fan out at once (workers may not have run yet), replace, shut down: no leak."""
    receivers = [Receiver(ssrc=4000 + i) for i in range(80)]
    assert pool_workers() == 0
    try:
        for round_, threads in enumerate((2, 3, 2, 4, 2)):
            assert fastpath.start_pool(threads) == threads
            assert pool_workers() == threads - 1
            sequences = range(round_ * 40, round_ * 40 + 40)
            for seq in sequences:
                assert fan(sender, receivers, seq).sent == 80
            for receiver in receivers:  # each receiver got every copy, in order
                assert [receiver.receive().sequence for _ in sequences] == list(sequences)
        fastpath.shutdown_pool()
        assert pool_workers() == 0 and fastpath.pool_threads() == 1
        fastpath.shutdown_pool()  # twice is fine
        assert fan(sender, receivers, 999).sent == 80  # and fan-outs still work
        with pytest.raises(ValueError, match="threads must be 1..64"):
            fastpath.start_pool(0)
    finally:
        fastpath.shutdown_pool()
        close(receivers)


@needs_c
def test_two_python_threads_fanning_out_at_once_share_the_pool(sender, pool):
    """The GIL is released during a big fan-out: another Python thread may call fanout()."""
    pool(2)
    groups = [[Receiver(ssrc=5000 + 100 * g + i) for i in range(70)] for g in range(2)]
    results: list[list[int]] = [[], []]

    def run(g: int) -> None:
        for seq in range(30):
            results[g].append(fan(sender, groups[g], seq).sent)

    workers = [threading.Thread(target=run, args=(g,)) for g in range(2)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
        assert results == [[70] * 30, [70] * 30]
        for receiver in groups[0] + groups[1]:
            assert [receiver.receive().sequence for _ in range(30)] == list(range(30))
    finally:
        close(groups[0] + groups[1])


def test_media_threads_setting_reaches_the_server(serve_factory):
    server = serve_factory("--media-threads", "1")
    version = httpx.get(f"{server.api_url}/version", timeout=5).json()["forwarding_engine"]
    stats = httpx.get(f"{server.api_url}/stats", timeout=5).json()["fanout_pool"]
    assert version["fanout_threads"] == 1 and stats == {"threads": 1, "parallel_fanouts": 0,
                                                         "parallel_batches": 0}
    assert "media fan-out threads : 1" in server.log()
    refused = subprocess.run([sys.executable, "-m", "callsctl", "serve", "--media-threads",
                              "65", "--api-port", "0", "--udp-port", "0"],
                             capture_output=True, text=True, cwd=REPO, timeout=60)
    assert refused.returncode == 2
    assert "--media-threads': 65 must be a whole number from 1 to 64" in refused.stderr
    assert "Traceback" not in refused.stderr


@needs_c
def test_a_server_on_two_fanout_threads_forwards_audio_to_70_receivers(serve_factory):
    """72 light clients (the loadgen's: real ICE, DTLS and SRTP), one speaker: every
    receiver decrypts the speaker's audio, and the big fan-outs ran on the pool."""
    server = serve_factory("--media-threads", "2")
    size = 72
    config = LoadConfig(ws_url=server.ws_url, token_for=lambda c, u: server.token(c, u),
                        calls=1, users_per_call=size, unmuted=1, duration=12,
                        join_duration=3, window=3, local_address="127.0.0.1",
                        settle_timeout=8)
    report = asyncio.run(LoadTest(config).run()).to_dict()
    assert report["participants"]["joined"] == size, report["participants"]
    media = report["media"]
    receivers = [r for r in media["per_receiver"] if r["expected"]]
    assert len(receivers) == size - 1  # everyone but the speaker hears it
    assert all(r["received"] > 0 for r in receivers), receivers
    assert media["loss"] <= 0.05, {k: media[k] for k in ("expected", "received", "loss")}
    stats = httpx.get(f"{server.api_url}/stats", timeout=5).json()
    assert stats["fanout_pool"]["threads"] == 2
    assert stats["fanout_pool"]["parallel_fanouts"] > 100  # 50 packets/s to 71 receivers
    assert stats["forwarding"]["srtp_protect_errors"] == 0
