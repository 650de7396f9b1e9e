"""`callsctl check capture`: classification unit tests on crafted packets, and a real capture.

The unit tests build each packet kind byte by byte from its RFC so the
classifier is checked against the specifications, not against itself. The
end-to-end tests capture on `lo` as root while the test sends datagrams, and
read the written pcap back with tcpdump.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time

import pytest

from callsctl.check.capture import CaptureState, PacketInfo, TcpFramer, classify_packet
from callsctl.check.classify import (
    DTLS,
    OTHER,
    RTCP,
    RTP,
    STUN,
    TCP_CONTROL,
    TURN_CHANNEL,
    ZRTP,
    classify_payload,
    classify_tcp_payload,
    split_rfc4571,
)
from tests.support.helpers import REPO, free_port, have, is_root, run_main

COOKIE = 0x2112A442
TXID = bytes(range(12))
CLI = [sys.executable, "-m", "callsctl"]


# --- crafted packets, from the RFCs -------------------------------------------------------------


def stun(msg_type: int, attrs: list[tuple[int, bytes]] = (), cookie: int = COOKIE) -> bytes:
    """RFC 8489 §5/§14: 20-byte header, then TLV attributes padded to 4 bytes."""
    body = b""
    for attr_type, value in attrs:
        body += struct.pack("!HH", attr_type, len(value)) + value + b"\0" * (-len(value) % 4)
    return struct.pack("!HHI", msg_type, len(body), cookie) + TXID + body


def xor_mapped_v4(ip: str, port: int) -> bytes:
    xport = port ^ (COOKIE >> 16)
    xaddr = int(ipaddress.IPv4Address(ip)) ^ COOKIE
    return struct.pack("!BBHI", 0, 1, xport, xaddr)


def dtls_record(content: int, epoch: int, body: bytes) -> bytes:
    """RFC 6347 §4.1: type, version (DTLS 1.2 = 0xFEFD), epoch, 48-bit sequence, length."""
    return struct.pack("!BHH6sH", content, 0xFEFD, epoch, b"\0" * 6, len(body)) + body


def handshake(msg_type: int, body: bytes = b"\x01" * 10) -> bytes:
    """RFC 6347 §4.2.2: type, length(3), message_seq(2), fragment_offset(3), fragment_length(3)."""
    n = len(body).to_bytes(3, "big")
    return bytes([msg_type]) + n + b"\0\0" + b"\0\0\0" + n + body


def rtp(pt: int, marker: bool = False, ssrc: int = 0x11223344, seq: int = 7) -> bytes:
    """RFC 3550 §5.1: V=2 (first byte 0x80), M|PT, sequence, timestamp, SSRC."""
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq, 1234, ssrc) + b"p" * 20


def rtcp(packet_type: int, ssrc: int = 0x55667788) -> bytes:
    """RFC 3550 §6.4: V=2, RC, packet type, length in words minus one, SSRC."""
    return struct.pack("!BBHI", 0x80, packet_type, 6, ssrc) + b"\0" * 24


STUN_REQUEST = stun(0x0001, [(0x0006, b"remote:local"), (0x0025, b""),
                             (0x8029, b"\0" * 8)])
STUN_BARE_REQUEST = stun(0x0001)
STUN_SUCCESS = stun(0x0101, [(0x0020, xor_mapped_v4("203.0.113.5", 54321))])
STUN_ERROR = stun(0x0111, [(0x0009, b"\0\0\x04\x01Unauthorized")])
CLIENT_HELLO = dtls_record(22, 0, handshake(1))
SERVER_FLIGHT = dtls_record(22, 0, handshake(2) + handshake(11) + handshake(14))
DTLS_FINISHED = dtls_record(20, 0, b"\x01") + dtls_record(22, 1, b"\x99" * 40)
DTLS_APPDATA = dtls_record(23, 1, b"\x42" * 48)


# --- classify_payload: RFC 7983 first-byte ranges, RFC 5761 RTP/RTCP split -------------------


def test_stun_binding_request_with_username() -> None:
    c = classify_payload(STUN_REQUEST)
    assert (c.kind, c.stun_method, c.stun_class) == (STUN, "Binding", "request")
    assert c.username == "remote:local"
    assert c.use_candidate
    assert c.transaction_id == TXID
    assert "USERNAME=remote:local" in c.detail


def test_stun_success_decodes_xor_mapped_address() -> None:
    c = classify_payload(STUN_SUCCESS)
    assert (c.stun_method, c.stun_class) == ("Binding", "success")
    assert c.mapped_address == "203.0.113.5:54321"


def test_stun_error_response_and_turn_methods() -> None:
    error = classify_payload(STUN_ERROR)
    assert error.stun_class == "error" and "401 Unauthorized" in error.detail
    allocate = classify_payload(stun(0x0003))
    assert (allocate.stun_method, allocate.stun_class) == ("Allocate", "request")
    data_ind = classify_payload(stun(0x0017))
    assert (data_ind.stun_method, data_ind.stun_class) == ("Data", "indication")


def test_stun_classic_and_truncated() -> None:
    assert "classic" in classify_payload(stun(0x0001, cookie=0x01020304)).detail
    assert classify_payload(STUN_REQUEST[:10]).kind == STUN
    assert "truncated" in classify_payload(STUN_REQUEST[:30]).detail


def test_dtls_handshake_flights() -> None:
    hello = classify_payload(CLIENT_HELLO)
    assert hello.kind == DTLS and hello.handshake == ("ClientHello",)
    server = classify_payload(SERVER_FLIGHT)
    assert server.handshake == ("ServerHello", "Certificate", "ServerHelloDone")
    assert server.detail == "ServerHello, Certificate, ServerHelloDone"
    finished = classify_payload(DTLS_FINISHED)
    assert finished.handshake == ()
    assert "ChangeCipherSpec" in finished.detail and "encrypted" in finished.detail
    assert "data channel" in classify_payload(DTLS_APPDATA).detail


def test_rtp_and_rtcp() -> None:
    audio = classify_payload(rtp(111))
    assert audio.kind == RTP and audio.payload_type == 111 and audio.ssrc == 0x11223344
    video_marker = classify_payload(rtp(96, marker=True))  # second byte 224: still RTP
    assert video_marker.kind == RTP and video_marker.payload_type == 96
    for packet_type, name in ((200, "SR"), (201, "RR"), (205, "RTPFB"), (206, "PSFB")):
        c = classify_payload(rtcp(packet_type))
        assert c.kind == RTCP and c.detail.startswith(name) and c.ssrc == 0x55667788


@pytest.mark.parametrize(
    ("first", "kind"),
    [(0, STUN), (3, STUN), (4, OTHER), (15, OTHER), (16, ZRTP), (19, ZRTP), (20, DTLS),
     (63, DTLS), (64, TURN_CHANNEL), (79, TURN_CHANNEL), (80, OTHER), (127, OTHER),
     (128, RTP), (191, RTP), (192, OTHER), (255, OTHER)],
)
def test_rfc7983_first_byte_boundaries(first: int, kind: str) -> None:
    data = bytes([first, 0]) + b"\x00" * 30
    assert classify_payload(data).kind == kind


@pytest.mark.parametrize(("second", "kind"), [(63, RTP), (127, RTP), (191, RTP), (192, RTCP),
                                              (200, RTCP), (223, RTCP), (224, RTP)])
def test_rfc5761_rtcp_band(second: int, kind: str) -> None:
    assert classify_payload(bytes([0x80, second]) + b"\x00" * 30).kind == kind


def test_turn_channel_data_and_text() -> None:
    channel = classify_payload(struct.pack("!HH", 0x4001, 4) + b"abcd")
    assert channel.kind == TURN_CHANNEL and "0x4001" in channel.detail
    text = classify_payload(b"hello from nc\n")
    assert text.kind == OTHER and "hello from nc" in text.detail
    assert classify_payload(b"").kind == OTHER


# --- RFC 4571 framing (ICE-TCP) ---------------------------------------------------------------


def frame(payload: bytes) -> bytes:
    return struct.pack("!H", len(payload)) + payload


def test_split_rfc4571() -> None:
    stream = frame(STUN_REQUEST) + frame(rtp(111)) + frame(CLIENT_HELLO)[:5]
    frames, rest = split_rfc4571(stream)
    assert frames == [STUN_REQUEST, rtp(111)]
    assert rest == frame(CLIENT_HELLO)[:5]
    assert split_rfc4571(b"\x00") == ([], b"\x00")


def test_classify_tcp_payload_framed_and_plain() -> None:
    transport, items = classify_tcp_payload(frame(STUN_REQUEST) + frame(rtcp(200)))
    assert transport == "ice-tcp" and [i.kind for i in items] == [STUN, RTCP]
    transport, items = classify_tcp_payload(b"hello over tcp\n")
    assert transport == "tcp" and items[0].kind == OTHER and "hello" in items[0].detail
    assert classify_tcp_payload(b"") == ("tcp", [])


def test_tcp_framer_reassembles_across_segments_and_retransmissions() -> None:
    stream = frame(STUN_REQUEST) + frame(CLIENT_HELLO) + frame(rtp(111))
    framer = TcpFramer()
    assert framer.feed(999, b"", syn=True) == []
    first, second = stream[:30], stream[30:]
    assert framer.feed(1000, first) == []  # STUN frame not complete yet
    assert framer.feed(1000, first) == []  # retransmission is ignored
    assert framer.feed(1000 + len(first), second) == [STUN_REQUEST, CLIENT_HELLO, rtp(111)]
    assert framer.framed
    plain = TcpFramer()
    assert plain.feed(1, b"GET / HTTP/1.1\r\n") is None
    assert plain.plain


# --- classify_packet on scapy packets --------------------------------------------------------


def test_classify_packet_udp_tcp_ipv6_and_non_ip() -> None:
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    udp = Ether(bytes(Ether() / IP(src="198.51.100.7", dst="10.0.0.2")
                      / UDP(sport=50000, dport=8443) / Raw(STUN_REQUEST)))
    info = classify_packet(udp)
    assert info is not None and info.kind == STUN and info.transport == "udp"
    assert info.flow == "udp 198.51.100.7:50000 → 10.0.0.2:8443"
    assert info.items[0].username == "remote:local"

    ice_tcp = IP(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=8443,
                                                                  flags="PA")
                       / Raw(frame(STUN_SUCCESS) + frame(rtp(111)))))
    info = classify_packet(ice_tcp)
    assert info.transport == "ice-tcp" and [i.kind for i in info.items] == [STUN, RTP]
    assert info.items[0].mapped_address == "203.0.113.5:54321"

    syn = classify_packet(IP(bytes(IP() / TCP(dport=8443, flags="S"))))
    assert syn.kind == TCP_CONTROL and syn.items == []

    v6 = classify_packet(IPv6(bytes(IPv6(src="2001:db8::1", dst="2001:db8::2")
                                    / UDP(sport=5000, dport=8443) / Raw(rtcp(201)))))
    assert v6.kind == RTCP and v6.flow == "udp [2001:db8::1]:5000 → [2001:db8::2]:8443"

    # Ethernet pads short frames to 60 bytes; the padding is not payload.
    short = Ether(bytes(Ether() / IP() / UDP(dport=8443) / Raw(b"\x80\xc8")))
    assert classify_packet(short).items[0].kind == RTCP
    assert classify_packet(Ether() / IP() / ICMP()) is None


# --- the capture state: milestones and the verdict ladder ------------------------------------


def info(payload: bytes, src: str = "198.51.100.7", sport: int = 50000,
         dst: str = "10.0.0.2", dport: int = 8443) -> PacketInfo:
    return PacketInfo("udp", src, sport, dst, dport, 28 + len(payload), "udp",
                      [classify_payload(payload)], payload=payload)


def reply(payload: bytes) -> PacketInfo:
    return info(payload, src="10.0.0.2", sport=8443, dst="198.51.100.7", dport=50000)


def test_capture_state_verdict_ladder() -> None:
    state = CaptureState(8443, 0.0)
    assert state.verdict("port 8443", 1).status == "fail"
    state.add(info(STUN_BARE_REQUEST), 0.1)
    assert "stun_bare_request" in state.milestones
    state.add(info(STUN_REQUEST), 0.2)
    verdict = state.verdict("port 8443", 1)
    assert verdict.status == "warn" and "none is answered" in verdict.summary
    state.add(reply(STUN_SUCCESS), 0.3)
    assert "DTLS never starts" in state.verdict("port 8443", 1).summary
    state.add(info(CLIENT_HELLO), 0.4)
    assert "no ServerHello" in state.verdict("port 8443", 1).summary
    state.add(reply(SERVER_FLIGHT), 0.5)
    assert "no SRTP yet" in state.verdict("port 8443", 1).summary
    state.add(info(rtp(111)), 0.6)
    state.add(reply(rtcp(200)), 0.7)
    verdict = state.verdict("port 8443", 1)
    assert verdict.status == "pass" and "media is flowing" in verdict.summary
    assert list(state.milestones) == ["stun_bare_request", "stun_request", "stun_response",
                                      "dtls_ClientHello", "dtls_ServerHello", "srtp", "srtcp"]
    assert state.milestones["stun_response"]["event"].endswith("mapped=203.0.113.5:54321")
    assert len(state.flows) == 2
    assert state.kinds == {STUN: 3, DTLS: 2, RTP: 1, RTCP: 1}


def test_capture_state_non_webrtc_traffic_warns() -> None:
    state = CaptureState(8443, 0.0)
    state.add(info(b"callsctl udp probe 1/3\n"), 0.1)
    verdict = state.verdict("port 8443", 1)
    assert verdict.status == "warn" and "none is WebRTC" in verdict.summary


# --- end to end, as root: capture on lo, then tcpdump -r --------------------------------------

needs_capture = pytest.mark.skipif(not (is_root() and have("tcpdump")),
                                   reason="needs root (CAP_NET_RAW) and tcpdump")


def start_capture(*args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([*CLI, "check", "capture", "--iface", "lo", *args, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    fd, buf = proc.stderr.fileno(), b""
    deadline = time.monotonic() + 20
    while b"capturing on" not in buf:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 4096) if ready else b""
        if not chunk:
            proc.kill()
            out, err = proc.communicate(timeout=5)
            raise AssertionError(f"capture did not start: {buf + err!r}")
        buf += chunk
    return proc


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, dict]:
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert b"Traceback" not in err, err
    return proc.returncode, json.loads(out)["results"][0]


@needs_capture
def test_capture_udp_on_lo_classifies_and_writes_pcap(tmp_path) -> None:  # noqa: ANN001
    port = free_port(socket.SOCK_DGRAM)
    pcap = tmp_path / "media.pcap"
    proc = start_capture("--port", str(port), "--count", "5", "--duration", "20",
                         "--write", str(pcap))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            sink.bind(("127.0.0.1", port))  # so no ICMP errors join the capture
            for payload in (STUN_REQUEST, CLIENT_HELLO, rtp(111), rtcp(200)):
                client.sendto(payload, ("127.0.0.1", port))
            sink.sendto(STUN_SUCCESS, client.getsockname())
            code, result = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, result
    details = result["details"]
    assert details["stopped_by"] == "count"
    assert details["packets"] == 5 and details["written"] == 5  # lo: no duplicate copies
    assert details["by_kind"] == {STUN: 2, DTLS: 1, RTP: 1, RTCP: 1}
    events = [m["event"] for m in details["milestones"]]
    assert events[0] == "first ICE check: STUN Binding Request USERNAME=remote:local"
    assert "DTLS ClientHello" in events
    assert any(e.startswith("first SRTP/RTP (PT 111") for e in events)
    assert any(e.startswith("first STUN Binding Success Response mapped=203.0.113.5") for e in
               events)
    assert result["status"] == "pass"

    dump = subprocess.run(["tcpdump", "-n", "-r", str(pcap)], capture_output=True, text=True,
                          timeout=20)
    assert dump.returncode == 0, dump.stderr
    lines = dump.stdout.splitlines()
    assert len(lines) == 5, dump.stdout
    assert all(f".{port}" in line and "UDP" in line for line in lines)


@needs_capture
def test_capture_ice_tcp_frames_on_lo(tmp_path) -> None:  # noqa: ANN001
    port = free_port()
    pcap = tmp_path / "ice-tcp.pcap"
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen(1)
        proc = start_capture("--port", str(port), "--duration", "1.5", "--write", str(pcap))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                conn, _ = server.accept()
                with conn:
                    client.sendall(frame(STUN_REQUEST) + frame(CLIENT_HELLO)[:20])
                    time.sleep(0.05)
                    client.sendall(frame(CLIENT_HELLO)[20:] + frame(rtp(111)))
                    conn.sendall(frame(STUN_SUCCESS))
                    time.sleep(0.1)
            code, result = finish(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert code == 0, result
    details = result["details"]
    assert details["by_kind"][STUN] == 2
    assert details["by_kind"][DTLS] == 1  # reassembled across two segments
    assert details["by_kind"][RTP] == 1
    assert details["by_kind"][TCP_CONTROL] >= 3  # handshake and ACKs
    flows = [f["flow"] for f in details["flows"]]
    assert len(flows) == 2 and all(f.startswith("ice-tcp 127.0.0.1:") for f in flows), flows
    dump = subprocess.run(["tcpdump", "-n", "-r", str(pcap)], capture_output=True, text=True,
                          timeout=20)
    assert dump.returncode == 0, dump.stderr
    assert len(dump.stdout.splitlines()) == details["packets"] == details["written"]


def nobody_runs_python() -> bool:
    """Whether `setpriv --reuid=nobody` can start this interpreter and import callsctl."""
    probe = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                            sys.executable, "-c", "import callsctl"], cwd=REPO,
                           capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


@needs_capture
def test_capture_without_cap_net_raw_is_one_line() -> None:
    if not have("setpriv"):
        pytest.skip("needs setpriv (util-linux)")
    if not nobody_runs_python():
        pytest.skip("user nobody cannot run this Python (interpreter under a private dir)")
    proc = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                           *CLI, "check", "capture", "--iface", "lo", "--duration", "1"],
                          capture_output=True, text=True, timeout=30, cwd=REPO,
                          env={**os.environ, "HOME": "/tmp"})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("callsctl: error: "), proc.stderr
    assert "CAP_NET_RAW" in lines[0] and "sudo" in lines[0]


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--iface", "nosuchif0"], 2, "no network interface 'nosuchif0'"),
        (["--port", "0"], 2, "invalid port"),
        (["--duration", "-1"], 2, "invalid duration"),
        (["--count", "many"], 2, "invalid count"),
        (["--host", "bad host!"], 2, "invalid host"),
        (["--iface", "lo", "--write", "/nonexistent-dir/x.pcap"], 1, "cannot write"),
    ],
)
def test_capture_error_paths_one_line(capsys: pytest.CaptureFixture[str], args: list[str],
                                      code: int, needle: str) -> None:
    if not is_root():
        pytest.skip("the privilege check comes first; these need root to reach the others")
    got, out, err = run_main(capsys, "check", "capture", *args)
    lines = err.strip().splitlines()
    assert got == code, err
    assert len(lines) == 1 and needle in lines[0], err
    assert out == ""


def test_python_side_filter_and_raw_ip_pcap(tmp_path) -> None:  # noqa: ANN001
    """Without libpcap the port/host filter runs per packet; the pcap holds bare IP packets."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    from scapy.utils import RawPcapWriter, rdpcap

    from callsctl.check.capture import _CaptureRun

    path = tmp_path / "filtered.pcap"
    writer = RawPcapWriter(str(path), linktype=101)
    writer.write_header(None)
    run = _CaptureRun(CaptureState(8443, 0.0), writer, count=None,
                      python_filter=(8443, ["10.0.0.2"]))
    packets = [
        Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5000, dport=8443) / Raw(rtp(0)),
        Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5000, dport=9999) / Raw(b"x"),
        Ether() / IP(src="10.0.0.1", dst="10.0.0.3") / UDP(sport=5000, dport=8443) / Raw(b"y"),
    ]
    for pkt in packets:
        pkt = Ether(bytes(pkt))
        pkt.time = 1_700_000_000.25
        run.take(pkt)
    writer.close()
    assert run.state.packets == 1 and run.written == 1
    read = rdpcap(str(path))
    assert len(read) == 1 and read[0].haslayer(UDP) and read[0][UDP].dport == 8443
    assert float(read[0].time) == pytest.approx(1_700_000_000.25)
