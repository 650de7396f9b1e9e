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

`--engine c`: the C floor. The same per-copy work as the server's C fan-out
does it: libsrtp protect and `sendmmsg` in batches, through `fastpath.fanout`
(rtc/_fanout.c, one thread) rather than a Python loop; the one unprotect per
incoming packet stays a pylibsrtp call.

`--streams K` (C engine): K outgoing streams per receiver, the incoming packets
taking turns, as the server gives each receiver one outgoing SSRC per forwarded
speaker (each a stream of its own in the receiver's srtp_t, with its own
replay window). `--pace-ms` then sets how cold each copy is: the server of a
1 x N call with 2 speakers receives 100 packets a second, so its copies are
made 10 ms apart, while the default 1 ms keeps the floor's state in cache.
`fanout_us_per_copy` in the JSON is the CPU of the fan-out calls alone (no
unprotect, no pacing), the per-copy floor.

`--sink`: the sink meter (bench/sink_meter.py) on the sending socket: every
copy goes through the send path up to the loopback device, where all but those
to the first `probes_for(receivers + 1)` receivers (bound on the probe
address, 127.0.0.2; as many as the server's run has per call) are
counted and dropped, as the servers are measured with run_all.py --sink. The
meter's counts go in the JSON (`meter`: forwarded must equal sent).

    python bench/srtp_floor.py --receivers 9 --publishers 2 --json
    python bench/srtp_floor.py --receivers 199 --engine c --sink --json
    python bench/srtp_floor.py --receivers 199 --engine c --sink --streams 2 --calls 1 --json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import itertools
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pylibsrtp
from aiortc.rtcdtlstransport import SRTP_PROFILES

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sink_meter import PROBE_ADDRESS, SinkMeter, probes_for, window_checks  # noqa: E402

from callsctl_sfu.client.loadgen import (  # noqa: E402
    STAMP_LEN,
    MediaSample,
    opus_sample,
    screen_sample,
)

# The SRTP profile aiortc negotiates first (AEAD_AES_256_GCM where libsrtp has it), which
# is what the server's sessions with the load generator use; --profile picks another
# (Chromium, the DTLS server of its sessions, picks AES_CM_128_HMAC_SHA1_80).
PROFILE = SRTP_PROFILES[0]
KEY_LEN = PROFILE.key_length + PROFILE.salt_length


def use_profile(name: str) -> None:
    """Make `name` (an RFC 5764 profile name aiortc knows) the one every context uses."""
    global PROFILE, KEY_LEN
    PROFILE = next(p for p in SRTP_PROFILES if p.openssl_profile.decode() == name)
    KEY_LEN = PROFILE.key_length + PROFILE.salt_length
DRAIN = ("import ctypes,ctypes.util,selectors,signal,socket,sys\n"
         "ctypes.CDLL(ctypes.util.find_library('c')).prctl(1,signal.SIGKILL)\n"
         "sel=selectors.DefaultSelector()\n"
         "ports=[]\n"
         "for i in range(int(sys.argv[1])):\n"
         "    s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
         "    s.setsockopt(socket.SOL_SOCKET,socket.SO_RCVBUF,1<<20)\n"
         "    a=sys.argv[3] if i<int(sys.argv[2]) else '127.0.0.1'\n"
         "    s.bind((a,0))\n"
         "    s.setblocking(False)\n"
         "    sel.register(s,selectors.EVENT_READ)\n"
         "    ports.append(a+':'+str(s.getsockname()[1]))\n"
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


def c_sender(sock: socket.socket, sinks: list[tuple[str, int]], streams: int = 1,
             sealer: bool = False) -> Any:
    """The C floor's per-incoming-packet step: `fastpath.fanout` to every sink, own contexts.

    `streams`: outgoing streams per receiver (SSRCs in its srtp_t); incoming
    packets take turns among them, as a call's speakers do. `sealer`: each
    receiver's copies protected by the server's own AES-GCM sender
    (fastpath.SrtpSealer) instead of a libsrtp context.
    """
    from callsctl_sfu.rtc import aiortc_bridge, fastpath

    if not fastpath.AVAILABLE:
        raise SystemExit(f"srtp_floor: the C fan-out is not available: {fastpath.REASON}")
    if sealer and fastpath.SrtpSealer is None:
        raise SystemExit("srtp_floor: --sealer: this build or CPU has no SrtpSealer")
    sessions: list[Any] = [fastpath.SrtpSealer(os.urandom(KEY_LEN)) if sealer
                           else _session(os.urandom(KEY_LEN), outbound=True) for _ in sinks]
    pair = object()
    per_stream = [[fastpath.Target(fastpath.Rewrite(ssrc=10_000 + stream * 4096 + i,
                                                    payload_type=111, audio_level_id=1),
                                   session, 0 if sealer
                                   else aiortc_bridge.srtp_context_address(session), sink,
                                   {1: pair}, pair)
                   for i, (session, sink) in enumerate(zip(sessions, sinks, strict=True))]
                  for stream in range(streams)]
    fd = sock.fileno()
    fanout = fastpath.fanout
    # One running sequence per outgoing stream (the publishers' own sequences
    # overlap and libsrtp would refuse them as replays).
    sequences = [itertools.count(1) for _ in range(streams)]
    turns = itertools.cycle(range(streams))

    def send(clear: bytes) -> None:
        stream = next(turns)
        seq = next(sequences[stream])
        fanout(fd, 0x90, False, seq & 0xFFFF, seq * 960, 0xABC + stream, clear[20:], 30,
               per_stream[stream])

    send.sessions = sessions  # type: ignore[attr-defined]  # keeps the contexts alive
    return send


def measure(receivers: int, publishers: int, screen: bool, min_sent: int,
            repeats: int, pace_ms: float = 1.0, engine: str = "python",
            sink: bool = False, streams: int = 1, calls: int = 0) -> dict[str, Any]:
    """CPU µs per sent packet, median of `repeats` runs of at least `min_sent` packets.

    `calls` > 0 replaces `pace_ms`: incoming packets as far apart as a server of
    that many such calls receives them (its publishers' packet rates summed).
    """
    probes = probes_for(receivers + 1) if sink else 0
    drain = subprocess.Popen([sys.executable, "-c", DRAIN, str(receivers), str(probes),
                              PROBE_ADDRESS], stdout=subprocess.PIPE, text=True)
    meter: SinkMeter | None = None
    try:
        ports = drain.stdout.readline().split()  # type: ignore[union-attr]
        sinks = [(item.rsplit(":", 1)[0], int(item.rsplit(":", 1)[1])) for item in ports]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
        sock.bind(("127.0.0.1", 0))
        if sink:
            meter = SinkMeter(sock.getsockname()[1], sink=True).open()
        incoming_count = max(50, min_sent // max(1, receivers))
        samples = [opus_sample()] * publishers + ([screen_sample()] if screen else [])
        plain: list[bytes] = []
        rate = sum(s.packets_per_second for s in samples)
        if calls:
            pace_ms = 1000 / (calls * rate)
        for number, sample in enumerate(samples):  # the streams' mix, by packet rate
            count = max(1, round(incoming_count * sample.packets_per_second / rate))
            plain += _wire_packets(sample, count, 0x1000 + number)
        sender_key = os.urandom(KEY_LEN)
        protector = _session(sender_key, outbound=True)
        wire = [protector.protect(p) for p in plain]
        octets = statistics.fmean(len(p) for p in wire)
        figures = []
        fanout_figures = []
        counts0 = meter.read() if meter else None
        total_sent = 0
        for _ in range(repeats):
            inbound = _session(sender_key, outbound=False)
            sendto = sock.sendto
            pace = pace_ms / 1000
            if engine != "python":
                send_c = c_sender(sock, sinks, streams, sealer=engine == "c-sealer")
            else:
                outbound = [(_session(os.urandom(KEY_LEN), outbound=True), dest)
                            for dest in sinks]
            start = time.thread_time()
            fanout_cpu = 0.0
            sent = 0
            for packet in wire:
                clear = inbound.unprotect(packet)
                if engine != "python":
                    before = time.thread_time()
                    send_c(clear)
                    fanout_cpu += time.thread_time() - before
                else:
                    for session, dest in outbound:
                        sendto(session.protect(clear), dest)
                sent += receivers
                if pace:
                    time.sleep(pace)
            figures.append(1e6 * (time.thread_time() - start) / max(1, sent))
            fanout_figures.append(1e6 * fanout_cpu / max(1, sent))
            total_sent += sent
        result: dict[str, Any] = {
            "us_per_packet": statistics.median(figures), "min": min(figures),
            "max": max(figures), "repeats": repeats, "packets_per_repeat": sent,
            "pace_ms": pace_ms, "sockets": len(sinks), "engine": engine, "sink": sink,
            "streams": streams, "calls": calls or None,
            "fanout_us_per_copy": (statistics.median(fanout_figures) if engine != "python"
                                   else None),
            "srtp_profile": PROFILE.openssl_profile.decode(),
            "receivers": receivers, "mean_packet_octets": round(octets, 1)}
        if meter is not None and counts0 is not None:
            time.sleep(0.05)
            counts = meter.read() - counts0
            result["meter"] = {"sent": total_sent, "forwarded": counts.forwarded,
                               "to_probes": counts.to_probes, "dropped": counts.dropped,
                               "probe_arrived": counts.probe_arrived, "leaked": counts.leaked,
                               "probes": probes,
                               "problems": window_checks(
                                   replace(counts, media_in=total_sent), sink=True)
                               + ([] if counts.forwarded == total_sent else
                                  [f"counted {counts.forwarded} of {total_sent} sent"])}
        sock.close()
        return result
    finally:
        if meter is not None:
            meter.close()
        drain.kill()
        drain.wait(5)


def end_with_parent() -> None:
    """SIGTERM (as Ctrl-C) when the parent dies or asks: the sink meter and drain go too.

    run_all.py starts this as a child; if it is killed or interrupted, PR_SET_PDEATHSIG
    (prctl(2), Linux) sends SIGTERM here, and the KeyboardInterrupt it becomes unwinds
    `measure`'s `finally`: the meter's tables are deleted and the drain child killed.
    """
    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent was already gone
        raise SystemExit(1)


def main() -> None:
    end_with_parent()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--receivers", type=int, default=9)
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--screen", action="store_true", help="add one screen-share stream")
    parser.add_argument("--min-sent", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pace-ms", type=float, default=1.0,
                        help="pause after each incoming packet's copies (0: back to back)")
    parser.add_argument("--engine", choices=("python", "c", "c-sealer"), default="python",
                        help="python: protect + sendto per copy in Python (the default, the "
                             "recorded floor); c: fastpath.fanout (libsrtp + sendmmsg in C); "
                             "c-sealer: the same with the server's own AES-GCM sender "
                             "(fastpath.SrtpSealer) instead of libsrtp")
    parser.add_argument("--sink", action="store_true",
                        help="count and drop the copies at the loopback device except to "
                             "a tenth of the receivers, 2 to 8 (bench/sink_meter.py; needs "
                             "root and nft)")
    parser.add_argument("--streams", type=int, default=1,
                        help="C engine: outgoing streams (SSRCs) per receiver, taking turns "
                             "(the server gives a receiver one per forwarded speaker)")
    parser.add_argument("--calls", type=int, default=0,
                        help="pace the incoming packets as a server of this many such calls "
                             "receives them (replaces --pace-ms; 1 call with 2 speakers: 10 ms)")
    parser.add_argument("--profile", default=PROFILE.openssl_profile.decode(),
                        choices=[p.openssl_profile.decode() for p in SRTP_PROFILES],
                        help="the SRTP profile of every context (default: aiortc's first)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    use_profile(args.profile)
    if not (1 <= args.receivers <= 2000 and 0 <= args.publishers <= 100
            and 1_000 <= args.min_sent <= 5_000_000 and 1 <= args.repeats <= 50
            and 0 <= args.pace_ms <= 20 and 1 <= args.streams <= 16
            and 0 <= args.calls <= 1000):
        parser.error("receivers 1..2000, publishers 0..100, min-sent 1e3..5e6, repeats 1..50, "
                     "pace-ms 0..20, streams 1..16, calls 0..1000")
    if args.streams > 1 and args.engine == "python":
        parser.error("--streams needs --engine c or c-sealer")
    if args.publishers == 0 and not args.screen:
        parser.error("nothing to send: give --publishers or --screen")
    try:
        result = measure(args.receivers, args.publishers, args.screen, args.min_sent,
                         args.repeats, args.pace_ms, args.engine, args.sink, args.streams,
                         args.calls)
    except KeyboardInterrupt:
        raise SystemExit("srtp_floor: interrupted (the sink meter's tables were removed)") from None
    print(json.dumps(result) if args.json else
          f"{result['us_per_packet']:.2f} µs CPU per sent packet (median of {args.repeats}, "
          f"{result['receivers']} receivers, {result['mean_packet_octets']:.0f} octets)")


if __name__ == "__main__":
    main()
