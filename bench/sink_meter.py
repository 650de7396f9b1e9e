"""A meter outside the server: nftables counts its forwarded SRTP and, in sink mode, drops it.

Why: on one machine the kernel delivers every loopback datagram into the
receiving socket inside the sender's own system call, so a server's CPU per
forwarded packet (and any floor measured the same way) includes each
receiver's socket delivery and wake-up, and the load generator's receivers
(100k+ packets/s at 1 x 1000) share the server's cores. In sink mode the
forwarded copies are counted and dropped at the loopback device's egress,
before loopback delivery, except those to a few "probe" receivers, which the load generator
still measures (delay p50/p99, loss).

What the tables hold (an inet one for the INPUT hook and a netdev one for the
loopback device's egress, both named after this process and the port, deleted
when the meter closes, also on errors, Ctrl-C and SIGTERM; `ruleset` says why
the drop is at the device):

- `media_in`: SRTP arriving at the server's media port (INPUT hook, before the
  socket, so datagrams its socket buffer then drops still count as sent to it);
- `forwarded`: SRTP leaving from that port (lo's egress), every receiver;
- `to_probes`: the part of it towards the probe address, accepted;
- `dropped`: the rest, dropped in sink mode (in delivered mode nothing is);
- `probe_arrived` / `leaked`: the server's SRTP seen again in the INPUT hook,
  towards probes / towards anyone else. They check the rule: every packet
  counted to a probe arrived, and in sink mode nothing else did.

SRTP vs the rest (RFC 7983 §7, RFC 5761 §4): the first payload octet is
128-191 (RTP version 2; STUN is 0-3, DTLS 20-63) and the second octet is not
192-223 (RTCP packet types 200-206 live there, and RFC 5761 keeps RTP payload
types 64-95 free so that the two never meet). STUN (ICE consent), DTLS and
SRTCP (receiver reports, keyframe requests) are never dropped.

How probes are told apart: they gather their ICE candidate on another loopback
address (PROBE_ADDRESS, 127.0.0.2; all of 127.0.0.0/8 is local on Linux), so
one `ip daddr` match decides, with no per-run set to fill and nothing that
depends on which process runs which participant
(`LoadConfig.probes_per_call` / `probe_address`).

Loss for the dropped receivers comes from the counters: forwarded / (media_in
x receivers per incoming packet), both read in one `nft` listing.

    python bench/sink_meter.py          # the self-check alone (needs root and nft)
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Any

PROBE_ADDRESS = "127.0.0.2"
PROBES = 8  # at most this many probe receivers per call (delay and loss measured on them)


def probes_for(users: int) -> int:
    """Probe receivers in a call of `users`: a tenth of it, at least 2 and at most PROBES.

    Few enough that small calls are still mostly sink (1 x 10: 2 of 9 receivers
    delivered), enough for thousands of delay samples a second in big ones.
    """
    return min(users, max(2, min(PROBES, users // 10)))
COUNTERS = ("media_in", "forwarded", "to_probes", "dropped", "probe_arrived", "leaked")
# The first UDP payload octet 128-191 (top two bits 10) and the second not 192-223.
SRTP_MATCH = "@th,64,2 2 @th,72,8 != 192-223"


class MeterError(RuntimeError):
    """nftables is missing, refused the table, or the self-check failed."""


@dataclass(frozen=True)
class Counts:
    """One reading of the meter's counters (packets)."""

    media_in: int
    forwarded: int
    to_probes: int
    dropped: int
    probe_arrived: int
    leaked: int

    def __sub__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, n) - getattr(other, n) for n in COUNTERS))


def ruleset(table: str, port: int, sink: bool, probe_address: str) -> str:
    """Two tables for one media port; in sink mode non-probe SRTP from it is dropped.

    The drop is in the loopback device's egress hook, not in OUTPUT: a drop
    in OUTPUT fails the sender's sendto/sendmmsg with EPERM (the server would
    take error paths it never takes in production), while a drop at the
    device is, for UDP without IP_RECVERR, a silent transmit drop (the kernel
    counts it in UDP SndbufErrors and returns success). The copy has then been
    through everything a real send does up to the device: the system call,
    UDP/IP output, routing, the netfilter hooks, the queueing layer.
    """
    # In delivered mode `dropped` counts what sink mode would drop (it is delivered).
    verdict = "drop" if sink else "accept"
    counters = "; ".join(f"counter {name} {{ }}" for name in COUNTERS)
    return f"""
table inet {table} {{
    {counters}
    chain input {{
        type filter hook input priority -10; policy accept;
        udp dport {port} {SRTP_MATCH} counter name media_in
        udp sport {port} {SRTP_MATCH} ip daddr {probe_address} counter name probe_arrived
        udp sport {port} {SRTP_MATCH} ip daddr != {probe_address} counter name leaked
    }}
}}
table netdev {table} {{
    {counters}
    chain egress {{
        type filter hook egress device "lo" priority -10; policy accept;
        ip protocol udp udp sport {port} {SRTP_MATCH} jump media_out
    }}
    chain media_out {{
        counter name forwarded
        ip daddr {probe_address} counter name to_probes accept
        counter name dropped {verdict}
    }}
}}
"""


def _nft(*args: str, stdin: str | None = None) -> str:
    try:
        done = subprocess.run(["nft", *args], input=stdin, capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MeterError(f"nft {' '.join(args[:2])}: {exc}") from exc
    if done.returncode != 0:
        raise MeterError(f"nft {' '.join(args[:2])} failed: {done.stderr.strip()[:300]}")
    return done.stdout


class SinkMeter:
    """Counts (and in sink mode drops) the SRTP one UDP port sends; a context manager.

    The table is removed by close(), by the context manager, at interpreter
    exit and on SIGTERM (the handler closes, then re-raises the default).
    """

    def __init__(self, port: int, sink: bool, probe_address: str = PROBE_ADDRESS) -> None:
        if shutil.which("nft") is None:
            raise MeterError("nft is not installed (apt-get install -y nftables)")
        self.port = port
        self.sink = sink
        self.probe_address = probe_address
        self.table = f"callsctl_meter_{os.getpid()}_{port}"
        self._open = False

    def open(self) -> SinkMeter:
        _nft("-f", "-", stdin=ruleset(self.table, self.port, self.sink, self.probe_address))
        self._open = True
        atexit.register(self.close)
        _chain_sigterm(self.close)
        return self

    def close(self) -> None:
        if self._open:
            self._open = False
            for family in ("inet", "netdev"):
                with contextlib.suppress(MeterError):
                    _nft("delete", "table", family, self.table)

    def __enter__(self) -> SinkMeter:
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def read(self) -> Counts:
        """Every counter of both tables, from one `nft -j list counters`."""
        out = json.loads(_nft("-j", "list", "counters"))
        values: dict[str, int] = {}
        for item in out.get("nftables", []):
            counter = item.get("counter")
            if counter and counter.get("table") == self.table:
                values[counter["name"]] = values.get(counter["name"], 0) + int(counter["packets"])
        return Counts(*(values.get(name, 0) for name in COUNTERS))


_CLOSERS: list[Any] = []


def _chain_sigterm(closer: Any) -> None:
    """On SIGTERM close every open meter, then die as SIGTERM would have.

    Only where nobody handles SIGTERM yet (srtp_floor.py): run_all.py and
    saturation.py turn it into KeyboardInterrupt, whose unwinding closes the
    meters (and stops the server under test) in their `finally` blocks.
    """
    _CLOSERS.append(closer)
    if len(_CLOSERS) > 1 or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def on_term(signum: int, _frame: Any) -> None:
        for close in _CLOSERS:
            with contextlib.suppress(Exception):
                close()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    with contextlib.suppress(ValueError):  # not the main thread: atexit still closes
        signal.signal(signal.SIGTERM, on_term)


def figures(counts: Counts, receivers_per_packet: float) -> dict[str, Any]:
    """Loss and rates from a window's counts: forwarded / (media_in x receivers)."""
    expected = counts.media_in * receivers_per_packet
    return {
        "media_in": counts.media_in, "forwarded": counts.forwarded,
        "to_probes": counts.to_probes, "dropped": counts.dropped,
        "probe_arrived": counts.probe_arrived, "leaked": counts.leaked,
        "expected": round(expected),
        "loss": round(max(0.0, 1 - counts.forwarded / expected), 5) if expected else None,
    }


def window_checks(counts: Counts, sink: bool) -> list[str]:
    """What is wrong with the meter's own figures over a window with media; empty if nothing."""
    problems = []
    if counts.media_in <= 0 or counts.forwarded <= 0:
        problems.append(f"no SRTP counted (in {counts.media_in}, forwarded {counts.forwarded})")
    if counts.to_probes <= 0:
        problems.append("nothing forwarded to a probe")
    if counts.probe_arrived < counts.to_probes:
        problems.append(f"{counts.to_probes - counts.probe_arrived} packets counted to probes "
                        "never arrived")
    if sink and counts.leaked:
        problems.append(f"{counts.leaked} packets to dropped receivers arrived anyway")
    return problems


def self_check(sink: bool = True, probe_address: str = PROBE_ADDRESS) -> dict[str, int]:
    """The rule on crafted datagrams, before any bench relies on it; MeterError says what failed.

    One sending socket (the "server"), one receiver on the probe address and
    one on 127.0.0.1. Each gets an RTP packet, an RTCP packet (second octet
    200), a STUN binding request and a DTLS-looking record. Expected: the
    probe gets all four; the other gets all but the RTP one in sink mode.
    """
    rtp = bytes([0x80, 0x6F]) + bytes(30)
    rtcp = bytes([0x81, 200]) + bytes(30)
    stun = bytes([0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42]) + bytes(12)
    dtls = bytes([22, 0xFE, 0xFD]) + bytes(20)
    with contextlib.ExitStack() as stack:
        sender = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        sender.bind(("127.0.0.1", 0))
        probe = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        probe.bind((probe_address, 0))
        other = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        other.bind(("127.0.0.1", 0))
        meter = stack.enter_context(SinkMeter(sender.getsockname()[1], sink, probe_address))
        before = meter.read()
        for target in (probe, other):
            for packet in (rtp, rtcp, stun, dtls):
                sender.sendto(packet, target.getsockname())
        time.sleep(0.05)
        counts = meter.read() - before
        got: dict[str, list[bytes]] = {}
        for name, sock in (("probe", probe), ("other", other)):
            sock.setblocking(False)
            got[name] = []
            with contextlib.suppress(BlockingIOError):
                for _ in range(10):
                    got[name].append(sock.recv(2048))
    want_other = [rtcp, stun, dtls] if sink else [rtp, rtcp, stun, dtls]
    expected = Counts(0, 2, 1, 1, 1, 0 if sink else 1)
    problems = []
    if got["probe"] != [rtp, rtcp, stun, dtls]:
        problems.append(f"the probe got {len(got['probe'])} of 4 datagrams")
    if got["other"] != want_other:
        problems.append(f"the other receiver got {len(got['other'])} datagrams, not "
                        f"{len(want_other)} (RTP {'dropped' if sink else 'delivered'}, "
                        "RTCP/STUN/DTLS delivered)")
    if counts != expected:
        problems.append(f"counters {counts} != {expected}")
    if problems:
        raise MeterError("sink meter self-check failed: " + "; ".join(problems))
    return {name: getattr(counts, name) for name in COUNTERS}


def main() -> None:
    for sink in (True, False):
        try:
            print(("sink" if sink else "delivered"), json.dumps(self_check(sink)))
        except MeterError as exc:
            raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
