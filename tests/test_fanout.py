"""The C fan-out (rtc/_fanout.c) on real sockets with real SRTP contexts, and its Python twin.

Each receiver is a UDP socket on loopback holding the inbound twin of the SRTP
context the fan-out protects with; what it decrypts is what a browser would see.
The pure Python path (a build without a compiler) is tested here too: its
Target twin, and a server whose C extension cannot be imported.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

import httpx
import pylibsrtp
import pytest

from callsctl_sfu.rtc import aiortc_bridge, fastpath
from callsctl_sfu.rtc.mux import UdpMux
from callsctl_sfu.rtc.rtp import PyRewrite, parse_rtp
from tests.support.clients import close_all, join_all
from tests.support.helpers import REPO, wait_until
from tests.support.prometheus import samples, value

try:
    from callsctl_sfu.rtc import _fanout
except ImportError:  # the pure Python tests below still run
    _fanout = None
needs_c = pytest.mark.skipif(not fastpath.AVAILABLE or _fanout is None,
                             reason=fastpath.REASON or "C extension not built")

KEY_LEN = 30  # AES_CM_128_HMAC_SHA1_80 master key + salt


def srtp_pair() -> tuple[pylibsrtp.Session, pylibsrtp.Session]:
    """(the SFU's outbound context, the receiver's inbound one) sharing one key."""
    key = os.urandom(KEY_LEN)
    sessions = []
    for ssrc_type in (pylibsrtp.Policy.SSRC_ANY_OUTBOUND, pylibsrtp.Policy.SSRC_ANY_INBOUND):
        policy = pylibsrtp.Policy(key=key, ssrc_type=ssrc_type)
        policy.allow_repeat_tx = True
        sessions.append(pylibsrtp.Session(policy))
    return sessions[0], sessions[1]


class Receiver:
    """One receiving participant: a socket, its SRTP context and its target tuple."""

    def __init__(self, ssrc: int, level_id: int | None = 1) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2)
        self.outbound, self.inbound = srtp_pair()
        self.rewrite = fastpath.Rewrite(ssrc=ssrc, payload_type=111, audio_level_id=level_id)
        self.pair = object()
        self.nominated = {1: self.pair}
        self.addr = self.sock.getsockname()
        self.target = self.target_to(self.addr)

    def target_to(self, addr: tuple[str, int]):
        return fastpath.Target(self.rewrite, self.outbound,
                               aiortc_bridge.srtp_context_address(self.outbound), addr,
                               self.nominated, self.pair)

    def receive(self):
        return parse_rtp(self.inbound.unprotect(self.sock.recv(2048)))

    def nothing_waiting(self) -> bool:
        self.sock.settimeout(0.2)
        try:
            self.sock.recv(2048)
        except TimeoutError:
            return True
        return False


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


@pytest.mark.parametrize("engine", ["c", "python", "no-c-extension"])
async def test_both_engines_forward_audio_and_stop_a_muted_speaker(serve_factory, tmp_path,
                                                                   engine):
    """The same call through the C fan-out, the Python path (CALLSCTL_FAST_PATH=0) and a
    server whose C extension cannot be imported (as on a machine without a compiler)."""
    if engine == "c" and not fastpath.AVAILABLE:
        pytest.skip(fastpath.REASON)
    env = None
    if engine == "python":
        env = {"CALLSCTL_FAST_PATH": "0"}
    elif engine == "no-c-extension":
        hide = tmp_path / "hide_c"
        hide.mkdir()
        (hide / "sitecustomize.py").write_text(
            "import sys\nsys.modules['callsctl_sfu.rtc._fanout'] = None\n")
        env = {"PYTHONPATH": str(hide)}
    server = serve_factory(env=env)
    running = httpx.get(f"{server.api_url}/version").json()["forwarding_engine"]
    assert running["engine"] == ("c" if engine == "c" else "python")
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
        await loud.send({"type": "mute"})  # its client keeps sending
        await a.wait_for(lambda e: e["type"] == "user_muted"
                         and e["session_id"] == loud.session_id, 5)
        await asyncio.sleep(0.5)
        before, still = a.frames_from[loud.session_id], b.frames_from[a.session_id]
        await asyncio.sleep(1.5)
        assert a.frames_from[loud.session_id] == before
        assert b.frames_from[a.session_id] > still + 30
        forwarding = httpx.get(f"{server.api_url}/stats").json()["forwarding"]
        assert forwarding["rtp_forwarded"] > 150 and forwarding["srtp_protect_errors"] == 0
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
