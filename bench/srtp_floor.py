"""The floor under any SFU written in Python: SRTP and sendto, no forwarding logic.

For each incoming packet: one SRTP unprotect (the publisher's context), then for
each receiver one protect with that receiver's own context and one sendto on
a UDP socket. That is the least work a Python SFU can do per forwarded packet
(no parsing, routing, header rewriting, RTCP, events), so callsctl's server CPU
per forwarded packet is reported as a ratio to this floor, measured in the same
bench run on the same machine.

Packets are the load generator's own (loadgen.opus_sample / screen_sample),
sized as they go over the wire (12-octet header, header extensions, 12-octet
delay stamp). Each receiver is its own UDP socket, drained by a child process
the way the load generator's participants are, so the kernel delivers every
copy as it does to real receivers (a socket lookup and a wake-up per
destination; one shared sink socket would understate that). Incoming packets
are paced (--pace-ms) rather than sent back to back, so the receivers sleep
between bursts as they do in a call. Only the sending thread's CPU is measured
(time.thread_time).

    python bench/srtp_floor.py --receivers 9 --publishers 2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

import pylibsrtp
from aiortc.rtcdtlstransport import SRTP_PROFILES

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from callsctl_sfu.client.loadgen import (  # noqa: E402
    STAMP_LEN,
    MediaSample,
    opus_sample,
    screen_sample,
)

# The SRTP profile aiortc negotiates first (AEAD_AES_256_GCM where libsrtp has it), which
# is what the server's sessions with the load generator and with Chrome use.
PROFILE = SRTP_PROFILES[0]
KEY_LEN = PROFILE.key_length + PROFILE.salt_length
DRAIN = ("import selectors,socket,sys\n"
         "sel=selectors.DefaultSelector()\n"
         "ports=[]\n"
         "for _ in range(int(sys.argv[1])):\n"
         "    s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
         "    s.setsockopt(socket.SOL_SOCKET,socket.SO_RCVBUF,1<<20)\n"
         "    s.bind(('127.0.0.1',0))\n"
         "    s.setblocking(False)\n"
         "    sel.register(s,selectors.EVENT_READ)\n"
         "    ports.append(str(s.getsockname()[1]))\n"
         "print(' '.join(ports),flush=True)\n"
         "while True:\n"
         "    for key,_ in sel.select():\n"
         "        try:\n"
         "            while True:\n"
         "                key.fileobj.recv(4096)\n"
         "        except BlockingIOError:\n"
         "            pass\n")


def _session(key: bytes, outbound: bool) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND if outbound
                              else pylibsrtp.Policy.SSRC_ANY_INBOUND,
                              srtp_profile=PROFILE.libsrtp_profile)
    policy.allow_repeat_tx = True
    policy.window_size = 1024
    return pylibsrtp.Session(policy)


def _wire_packets(sample: MediaSample, count: int, ssrc: int) -> list[bytes]:
    """`count` plain RTP packets shaped like the generator's: header, 8-octet ext, stamp."""
    payloads = [p for frame in sample.frames for p in frame]
    out = []
    for seq in range(count):
        payload = payloads[seq % len(payloads)]
        header = struct.pack("!BBHII", 0xB0, 111, seq & 0xFFFF, seq * 960, ssrc)
        ext = b"\xbe\xde\x00\x01\x10\x30\x00\x00"
        out.append(header + ext + payload + b"\x00" * (STAMP_LEN - 1) + bytes((STAMP_LEN,)))
    return out


def measure(receivers: int, publishers: int, screen: bool, min_sent: int,
            repeats: int, pace_ms: float = 1.0) -> dict[str, float]:
    """CPU µs per sent packet, median of `repeats` runs of at least `min_sent` packets."""
    drain = subprocess.Popen([sys.executable, "-c", DRAIN, str(receivers)],
                             stdout=subprocess.PIPE, text=True)
    try:
        ports = drain.stdout.readline().split()  # type: ignore[union-attr]
        sinks = [("127.0.0.1", int(port)) for port in ports]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
        incoming_count = max(50, min_sent // max(1, receivers))
        samples = [opus_sample()] * publishers + ([screen_sample()] if screen else [])
        plain: list[bytes] = []
        rate = sum(s.packets_per_second for s in samples)
        for number, sample in enumerate(samples):  # the streams' mix, by packet rate
            count = max(1, round(incoming_count * sample.packets_per_second / rate))
            plain += _wire_packets(sample, count, 0x1000 + number)
        sender_key = os.urandom(KEY_LEN)
        protector = _session(sender_key, outbound=True)
        wire = [protector.protect(p) for p in plain]
        octets = statistics.fmean(len(p) for p in wire)
        figures = []
        for _ in range(repeats):
            inbound = _session(sender_key, outbound=False)
            outbound = [(_session(os.urandom(KEY_LEN), outbound=True), sink)
                        for sink in sinks]
            sendto = sock.sendto
            pace = pace_ms / 1000
            start = time.thread_time()
            sent = 0
            for packet in wire:
                clear = inbound.unprotect(packet)
                for session, sink in outbound:
                    sendto(session.protect(clear), sink)
                sent += receivers
                if pace:
                    time.sleep(pace)
            figures.append(1e6 * (time.thread_time() - start) / max(1, sent))
        sock.close()
        return {"us_per_packet": statistics.median(figures), "min": min(figures),
                "max": max(figures), "repeats": repeats, "packets_per_repeat": sent,
                "pace_ms": pace_ms, "sockets": len(sinks),
                "srtp_profile": PROFILE.openssl_profile.decode(),
                "receivers": receivers, "mean_packet_octets": round(octets, 1)}
    finally:
        drain.kill()
        drain.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--receivers", type=int, default=9)
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--screen", action="store_true", help="add one screen-share stream")
    parser.add_argument("--min-sent", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pace-ms", type=float, default=1.0,
                        help="pause after each incoming packet's copies (0: back to back)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not (1 <= args.receivers <= 2000 and 0 <= args.publishers <= 100
            and 1_000 <= args.min_sent <= 5_000_000 and 1 <= args.repeats <= 50
            and 0 <= args.pace_ms <= 20):
        parser.error("receivers 1..2000, publishers 0..100, min-sent 1e3..5e6, repeats 1..50, "
                     "pace-ms 0..20")
    if args.publishers == 0 and not args.screen:
        parser.error("nothing to send: give --publishers or --screen")
    result = measure(args.receivers, args.publishers, args.screen, args.min_sent, args.repeats,
                     args.pace_ms)
    print(json.dumps(result) if args.json else
          f"{result['us_per_packet']:.2f} µs CPU per sent packet (median of {args.repeats}, "
          f"{result['receivers']} receivers, {result['mean_packet_octets']:.0f} octets)")


if __name__ == "__main__":
    main()
