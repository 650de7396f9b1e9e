"""`callsctl check capture`: the guide's `sudo tcpdump -n port 8443`, with every packet named.

tcpdump shows that packets move; an operator debugging a call needs to know how
far the call got. So each packet on the media port is classified the way the
SFU itself demultiplexes its one socket (RFC 7983 §7, first byte of the UDP
payload):

    0..3     STUN (ICE connectivity checks, RFC 8445; STUN itself RFC 8489)
    16..19   ZRTP (RFC 6189)
    20..63   DTLS (RFC 6347; key exchange for SRTP, RFC 5764)
    64..79   TURN ChannelData (RFC 8656 §12)
    128..191 RTP or RTCP (RFC 3550), SRTP/SRTCP once DTLS ran (RFC 3711);
             RTCP when the second byte is 192..223 (RFC 5761 §4)

TCP on the same port is ICE-TCP (RFC 6544): each STUN/DTLS/RTP packet is
prefixed by a two-byte length (RFC 4571 §2), and the framed payload is
classified by the same rules. The milestones of a call's set-up (first ICE
check with USERNAME, its success response, DTLS ClientHello/ServerHello, first
SRTP) are what tell "blocked by a firewall" apart from "ICE works, DTLS fails".

The payload classification itself lives in `callsctl.check.classify` (pure,
bytes in, names out; `check listen|udp|tcp` use it too); this module adds the
packets around it (flows, TCP reassembly, milestones, the live view). scapy
is imported only inside the command: importing it costs about a second, and
`callsctl --help` must stay fast.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table

from callsctl.check import app
from callsctl.check.addresses import hostport, resolve
from callsctl.check.arguments import parse_count, parse_port, parse_seconds
from callsctl.check.classify import (
    DTLS,
    RTCP,
    RTP,
    STUN,
    TCP_CONTROL,
    TURN_CHANNEL,
    Classification,
    classify_payload,
    classify_tcp_payload,
    is_webrtc,
    split_rfc4571,
)
from callsctl.check.render import emit
from callsctl.check.result import CheckResult
from callsctl.check.signalstop import SignalStop
from callsctl.errors import EXIT_USAGE, fail


@dataclass
class PacketInfo:
    """One captured IP packet: its flow, size and what it carried."""

    proto: str  # "udp" or "tcp"
    src: str
    sport: int
    dst: str
    dport: int
    size: int  # IP packet length in bytes
    transport: str  # "udp", "ice-tcp" (RFC 4571 framed) or "tcp"
    items: list[Classification] = field(default_factory=list)
    tcp_flags: str = ""
    tcp_seq: int = 0
    payload: bytes = b""

    @property
    def kind(self) -> str:
        return self.items[0].kind if self.items else TCP_CONTROL

    @property
    def flow(self) -> str:
        """The flow's key: protocol and both ends (one TCP connection direction = one flow)."""
        return f"{self.proto} {hostport(self.src, self.sport)} → " \
               f"{hostport(self.dst, self.dport)}"


def _ip_length(ip: Any) -> int:
    """IP packet length from its header (link padding excluded); built length if unset."""
    from scapy.layers.inet import IP

    declared = ip.len if isinstance(ip, IP) else (None if ip.plen is None else 40 + ip.plen)
    return int(declared) if declared is not None else len(bytes(ip))


def classify_packet(pkt: Any) -> PacketInfo | None:
    """Classify a scapy packet (any link layer): None when it is not UDP or TCP over IP."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6

    ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
    if ip is None:
        return None
    size = _ip_length(ip)
    udp = ip.getlayer(UDP)
    if udp is not None and udp.underlayer is ip:
        payload = bytes(udp.payload)
        if udp.len is not None and udp.len >= 8:
            payload = payload[: udp.len - 8]  # drop link-layer padding
        return PacketInfo("udp", str(ip.src), int(udp.sport), str(ip.dst), int(udp.dport),
                          size, "udp", [classify_payload(payload)], payload=payload)
    tcp = ip.getlayer(TCP)
    if tcp is not None and tcp.underlayer is ip:
        header_len = len(bytes(ip)) - len(bytes(tcp.payload))
        payload = bytes(tcp.payload)[: max(0, size - header_len)]
        transport, items = classify_tcp_payload(payload)
        return PacketInfo("tcp", str(ip.src), int(tcp.sport), str(ip.dst), int(tcp.dport),
                          size, transport if items else "tcp", items, tcp_flags=str(tcp.flags),
                          tcp_seq=int(tcp.seq), payload=payload)
    return None


class TcpFramer:
    """Reassembles one direction of a TCP flow into RFC 4571 frames across segments.

    A capture can start mid-stream or miss segments; after a gap the next
    segment is assumed to start at a frame boundary (ICE-TCP stacks usually
    send one frame per write). The buffer is bounded to one maximum frame.
    """

    MAX_BUFFER = 2 + 65535

    def __init__(self) -> None:
        self.buffer = b""
        self.next_seq: int | None = None
        self.plain = False  # not ICE-TCP: classify segments as raw bytes
        self.framed = False  # saw at least one WebRTC frame

    def feed(self, seq: int, payload: bytes, syn: bool = False) -> list[bytes] | None:
        """Frames completed by this segment; None once the stream is known not to be framed."""
        if syn:
            self.next_seq = (seq + 1) % 2**32
            return []
        if self.plain:
            return None
        if self.next_seq is not None and payload:
            behind = (self.next_seq - seq) % 2**32
            if 0 < behind < 2**31:  # retransmission: skip what we already have
                if behind >= len(payload):
                    return []
                payload = payload[behind:]
                seq = self.next_seq
            elif seq != self.next_seq:  # gap: resynchronise at this segment
                self.buffer = b""
        if payload:
            self.next_seq = (seq + len(payload)) % 2**32
        self.buffer += payload
        frames, self.buffer = split_rfc4571(self.buffer)
        if len(self.buffer) > self.MAX_BUFFER:
            self.buffer = b""
        if not self.framed:
            probe = frames[0] if frames else self.buffer[2:]
            if probe:
                if is_webrtc(classify_payload(probe)):
                    self.framed = True
                else:
                    self.plain = True
                    self.buffer = b""
                    return None
        return frames


# --- capture state: flows, rates, milestones ---------------------------------------------

_MAX_FLOWS = 256


@dataclass
class FlowStats:
    flow: str
    ice_tcp: bool = False  # RFC 4571 frames seen: shown as "ice-tcp" instead of "tcp"
    packets: int = 0
    bytes: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    first: float = 0.0
    last: float = 0.0
    shown_packets: int = 0
    shown_bytes: int = 0

    @property
    def label(self) -> str:
        return "ice-" + self.flow if self.ice_tcp else self.flow

    def to_json(self) -> dict[str, Any]:
        span = max(self.last - self.first, 1e-9)
        return {"flow": self.label, "packets": self.packets, "bytes": self.bytes,
                "kinds": dict(self.kinds), "first": round(self.first, 3),
                "last": round(self.last, 3),
                "avg_pps": round(self.packets / span, 1) if self.packets > 1 else None}


class CaptureState:
    """Counts per flow and kind, and the first time each call set-up step was seen."""

    def __init__(self, port: int, start: float) -> None:
        self.port = port
        self.start = start
        self.packets = 0
        self.bytes = 0
        self.kinds: Counter[str] = Counter()
        self.flows: dict[str, FlowStats] = {}
        self.milestones: dict[str, dict[str, Any]] = {}
        self.framers: dict[tuple[str, int, str, int], TcpFramer] = {}
        self.new_milestones: list[str] = []
        self.last_refresh = start

    def _milestone(self, key: str, text: str, info: PacketInfo, ts: float) -> None:
        if key not in self.milestones:
            self.milestones[key] = {"t": round(ts - self.start, 3), "event": text,
                                    "flow": ("ice-" if info.transport == "ice-tcp" else "")
                                    + info.flow}
            self.new_milestones.append(key)

    def _items(self, info: PacketInfo) -> list[Classification]:
        """UDP: as classified. TCP: reassemble RFC 4571 frames across segments."""
        if info.proto != "tcp":
            return info.items
        key = (info.src, info.sport, info.dst, info.dport)
        framer = self.framers.get(key)
        if framer is None:
            if len(self.framers) >= 4 * _MAX_FLOWS:
                return info.items
            framer = self.framers[key] = TcpFramer()
        frames = framer.feed(info.tcp_seq, info.payload, syn="S" in info.tcp_flags)
        if frames is None:
            info.transport = "tcp"
            return [classify_payload(info.payload)] if info.payload else []
        info.transport = "ice-tcp" if framer.framed else "tcp"
        return [classify_payload(frame) for frame in frames]

    def add(self, info: PacketInfo, ts: float) -> None:
        items = self._items(info)
        self.packets += 1
        self.bytes += info.size
        key = info.flow if (info.flow in self.flows or len(self.flows) < _MAX_FLOWS) \
            else "(other flows)"
        stats = self.flows.get(key)
        if stats is None:
            stats = self.flows[key] = FlowStats(key, first=ts)
        stats.packets += 1
        stats.bytes += info.size
        stats.last = ts
        stats.ice_tcp = stats.ice_tcp or info.transport == "ice-tcp"
        # A segment carrying only part of a frame adds to no kind; one without data is control.
        kinds = [item.kind for item in items] or ([] if info.payload else [TCP_CONTROL])
        for kind in kinds:
            stats.kinds[kind] += 1
            self.kinds[kind] += 1
        for item in items:
            self._note(item, info, ts)

    def _note(self, item: Classification, info: PacketInfo, ts: float) -> None:
        if item.kind == STUN and item.stun_method == "Binding":
            if item.stun_class == "request" and item.username:
                self._milestone("stun_request", f"first ICE check: STUN Binding Request "
                                f"USERNAME={item.username}", info, ts)
            elif item.stun_class == "request":
                self._milestone("stun_bare_request", "first STUN Binding Request without "
                                "USERNAME (a reachability probe)", info, ts)
            elif item.stun_class == "success":
                mapped = f" mapped={item.mapped_address}" if item.mapped_address else ""
                self._milestone("stun_response", f"first STUN Binding Success Response{mapped}",
                                info, ts)
            elif item.stun_class == "error":
                self._milestone("stun_error", f"first STUN Binding Error: {item.detail}",
                                info, ts)
        elif item.kind == DTLS:
            for msg in item.handshake:
                if msg in ("ClientHello", "ServerHello"):
                    self._milestone(f"dtls_{msg}", f"DTLS {msg}", info, ts)
            if "application data" in item.detail:
                self._milestone("dtls_data", "first DTLS application data (data channel)",
                                info, ts)
        elif item.kind == RTP:
            self._milestone("srtp", f"first SRTP/RTP ({item.detail})", info, ts)
        elif item.kind == RTCP:
            self._milestone("srtcp", f"first SRTCP/RTCP ({item.detail})", info, ts)

    def take_new_milestones(self) -> list[dict[str, Any]]:
        keys, self.new_milestones = self.new_milestones, []
        return [self.milestones[k] for k in keys]

    def render(self, now: float, header: str, milestones: bool = True,
               final: bool = False) -> Group:
        """A table of flows with rates and the milestones.

        Live, rates cover the time since the previous refresh (what is happening
        now); in the final table they are averages over the whole capture.
        """
        elapsed = max(now - self.last_refresh, 1e-3)
        table = Table(title=header, title_justify="left", expand=False)
        for col, justify in (("flow", "left"), ("kinds", "left"), ("pkts", "right"),
                             ("bytes", "right"), ("pkt/s", "right"), ("kbit/s", "right")):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for stats in sorted(self.flows.values(), key=lambda s: -s.packets)[:20]:
            if final:
                span = max(now - self.start, 1e-3)
                pps, kbps = stats.packets / span, stats.bytes * 8 / 1000 / span
            else:
                pps = (stats.packets - stats.shown_packets) / elapsed
                kbps = (stats.bytes - stats.shown_bytes) * 8 / 1000 / elapsed
            stats.shown_packets, stats.shown_bytes = stats.packets, stats.bytes
            kinds = " · ".join(f"{k} {n}" for k, n in stats.kinds.most_common())
            table.add_row(escape(stats.label), kinds, str(stats.packets), str(stats.bytes),
                          f"{pps:.1f}", f"{kbps:.1f}")
        self.last_refresh = now
        if not milestones:
            return Group(table)
        lines = [f"[dim]+{m['t']:.3f}s[/dim] {escape(m['event'])}  [dim]{escape(m['flow'])}[/dim]"
                 for m in self.milestones.values()]
        return Group(table, "milestones:" if lines else "milestones: none yet", *lines)

    def verdict(self, where: str, seconds: float) -> CheckResult:
        """Name how far calls got on this port, from the milestones seen."""
        m = self.milestones
        k = self.kinds
        figure = f"{self.packets} pkts, {self.bytes} B"
        if self.packets == 0:
            return CheckResult(
                "capture", "fail", f"no packets on {where} in {seconds:.1f} s", figure,
                fix=(f"nothing reached port {self.port} here: check that the firewall / cloud "
                     f"security group allows UDP and TCP {self.port} in, that port forwarding "
                     "(NAT) points at this host, and that a call is active while capturing"))
        if k[RTP] or k[RTCP]:
            return CheckResult("capture", "pass",
                               f"media is flowing: {k[RTP]} SRTP/RTP and {k[RTCP]} SRTCP/RTCP "
                               "packets", figure)
        if "dtls_ClientHello" in m and "dtls_ServerHello" not in m:
            return CheckResult(
                "capture", "warn", "DTLS ClientHello seen but no ServerHello", figure,
                fix="the SFU receives the handshake but does not answer: check its log for "
                    "DTLS/certificate errors and that only one process owns the port")
        if "dtls_ServerHello" in m:
            return CheckResult(
                "capture", "warn", "DTLS handshake seen but no SRTP yet", figure,
                fix="keys were negotiated but no media followed: check that participants "
                    "unmuted / published and the SFU log for SRTP errors")
        if "stun_request" in m and "stun_response" not in m:
            return CheckResult(
                "capture", "warn", "ICE checks (STUN with USERNAME) arrive but none is answered",
                figure,
                fix="is the SFU running and bound to this port? (`callsctl check listen` or "
                    "`ss -ulpn`); a wrong ICE host override makes clients check the wrong "
                    "address")
        if "stun_response" in m:
            return CheckResult(
                "capture", "warn", "ICE checks succeed but DTLS never starts", figure,
                fix="look at the SFU log for DTLS errors; a client on a blocked path falls "
                    "back to TCP or TURN")
        if k[STUN] or k[TURN_CHANNEL]:
            return CheckResult("capture", "pass", "STUN traffic on the port (no call set-up "
                               "yet)", figure)
        return CheckResult(
            "capture", "warn", f"packets arrive on port {self.port} but none is WebRTC "
            "(STUN/DTLS/RTP), e.g. netcat probes: the path is open", figure)


# --- the command ------------------------------------------------------------------------------


def require_capture_privilege() -> None:
    """Fail with the fix when this process may not open a raw packet socket."""
    family = getattr(socket, "AF_PACKET", None)
    if family is None:
        fail("packet capture is supported on Linux only (AF_PACKET sockets)")
    try:
        socket.socket(family, socket.SOCK_RAW, 0).close()
    except PermissionError:
        fail("capturing packets needs root or the CAP_NET_RAW capability: run it with sudo, "
             "or grant the capability: sudo setcap cap_net_raw+ep "
             f"{os.path.realpath(sys.executable)}")


def _interfaces(iface: str) -> list[str]:
    names = [name for _, name in socket.if_nameindex()]
    if iface == "any":
        return names
    if iface not in names:
        fail(f"no network interface {iface!r} on this host; use one of: "
             f"{', '.join(names)} (or any)", EXIT_USAGE)
    return [iface]


def _bpf(port: int, hosts: list[str]) -> str:
    expr = f"(udp or tcp) and port {port}"
    if hosts:
        expr += " and (" + " or ".join(f"host {h}" for h in hosts) + ")"
    return expr


def _open_sockets(ifaces: list[str], bpf: str) -> tuple[list[Any], bool]:
    """One scapy listen socket per interface; BPF in the kernel when libpcap compiles it.

    Returns the sockets and whether the filter must be applied in Python instead.
    On loopback each packet is seen twice by a packet socket (outgoing and
    incoming); the outgoing copy is dropped so counts match `tcpdump -i lo`.
    """
    logging.getLogger("scapy").setLevel(logging.ERROR)
    from scapy.arch.linux import L2ListenSocket, get_last_packet_timestamp
    from scapy.data import ETH_P_ALL, MTU
    from scapy.error import Scapy_Exception
    from scapy.layers import inet, inet6, l2  # noqa: F401  (registers link types: lo = Ether)

    class ListenSocket(L2ListenSocket):  # type: ignore[misc]
        def recv_raw(self, x: int = MTU) -> tuple[Any, Any, Any]:
            pkt, sa_ll, ts = self._recv_raw(self.ins, x)
            if sa_ll[2] == socket.PACKET_OUTGOING and sa_ll[3] == 772:  # ARPHRD_LOOPBACK
                return None, None, None
            if ts is None:
                ts = get_last_packet_timestamp(self.ins)
            return self.LL, pkt, ts

    sockets: list[Any] = []
    python_filter = False
    errors: list[str] = []
    for name in ifaces:
        try:
            try:
                sock = ListenSocket(iface=name, type=ETH_P_ALL,
                                    filter=None if python_filter else bpf)
            except (Scapy_Exception, ImportError):
                python_filter = True  # no libpcap to compile BPF: filter each packet here
                sock = ListenSocket(iface=name, type=ETH_P_ALL)
            sock.iface_name = name
            sockets.append(sock)
        except PermissionError:
            for sock in sockets:
                sock.close()
            require_capture_privilege()
            fail("capturing packets needs root or the CAP_NET_RAW capability")
        except OSError as exc:
            errors.append(f"{name}: {exc.strerror or exc}")
    if not sockets:
        fail("could not capture on any interface: " + "; ".join(errors))
    return sockets, python_filter


def _matches(info: PacketInfo, port: int, hosts: list[str]) -> bool:
    if port not in (info.sport, info.dport):
        return False
    return not hosts or info.src in hosts or info.dst in hosts


def _ip_bytes(pkt: Any) -> bytes | None:
    """The IP packet alone (no link header): the pcap is written as LINKTYPE_RAW (101)."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
    if ip is None:
        return None
    return bytes(ip)[: _ip_length(ip)]


class _CaptureRun:
    """The capture loop: read, classify, count, write; redraw or log milestones."""

    def __init__(self, state: CaptureState, writer: Any, count: int | None,
                 python_filter: tuple[int, list[str]] | None) -> None:
        self.state = state
        self.writer = writer
        self.count = count
        self.python_filter = python_filter  # (port, hosts) when the kernel does not filter
        self.written = 0

    def full(self) -> bool:
        return self.count is not None and self.state.packets >= self.count

    def take(self, pkt: Any) -> None:
        info = classify_packet(pkt)
        if info is None or (self.python_filter and not _matches(info, *self.python_filter)):
            return
        ts = float(pkt.time)
        self.state.add(info, ts)
        if self.writer is not None:
            data = _ip_bytes(pkt)
            if data is not None:
                sec = int(ts)
                self.writer.write_packet(data, sec=sec, usec=int((ts - sec) * 1e6))
                self.written += 1

    def drain(self, sock: Any, budget: int = 256) -> None:
        """Read what is queued on SOCK now (at most BUDGET packets) without blocking."""
        sock.ins.setblocking(False)
        for _ in range(budget):
            if self.full():
                return
            try:
                pkt = sock.recv()
            except (BlockingIOError, InterruptedError):
                return
            if pkt is not None:
                self.take(pkt)

    def loop(self, sockets: list[Any], duration: float, live: Any, header: str,
             log: Console | None) -> str:
        """Run until the deadline, --count or a signal; return which one ended it."""
        import select

        deadline = time.monotonic() + duration
        next_draw = time.monotonic()
        with SignalStop() as stop:
            # Bounded by the deadline: each turn waits at most 0.2 s.
            while time.monotonic() < deadline:
                if stop.requested:
                    return "signal"
                ready, _, _ = select.select(sockets, [], [], 0.2)
                for sock in ready:
                    self.drain(sock)
                if log is not None:
                    for m in self.state.take_new_milestones():
                        log.print(f"+{m['t']:.3f}s {m['event']}  {m['flow']}", markup=False)
                if live is not None and time.monotonic() >= next_draw:
                    live.update(self.state.render(time.time(), header), refresh=True)
                    next_draw = time.monotonic() + 0.25
                if self.full():
                    return "count"
        return "duration"


@app.command("capture")
def capture_cmd(
    port: int = typer.Option(8443, "--port", "-p", parser=parse_port, metavar="PORT",
                             help="Media port to watch (UDP and ICE-TCP)."),
    iface: str = typer.Option("any", "--iface", "-i",
                              help="Interface to capture on, or 'any' for all of them."),
    duration: float = typer.Option(10.0, "--duration", "-d", parser=parse_seconds,
                                   metavar="SECONDS", help="Stop after this long (30s, 2m)."),
    count: int | None = typer.Option(None, "--count", "-c", parser=parse_count, metavar="N",
                                     help="Stop after N packets."),
    write: Path | None = typer.Option(None, "--write", "-w", metavar="FILE",
                                      help="Also write the packets to FILE (pcap; "
                                           "`tcpdump -r FILE`, Wireshark)."),
    host: str | None = typer.Option(None, "--host", help="Only packets to or from this host."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Capture packets on the media port and name each one: STUN, DTLS, SRTP, ICE-TCP.

    Like the guide's `sudo tcpdump -n port 8443`, but shows per-flow counts and
    rates live and the milestones of a call's set-up (ICE check, DTLS hellos,
    first SRTP), so you see where a failing call stops. Needs root or
    CAP_NET_RAW. Ctrl-C stops early and still prints the summary.
    """
    require_capture_privilege()
    ifaces = _interfaces(iface)
    hosts = sorted({addr[0] for _, addr in resolve(host, port)}) if host else []
    bpf = _bpf(port, hosts)
    writer = None
    if write is not None:
        from scapy.utils import RawPcapWriter

        try:
            writer = RawPcapWriter(str(write), linktype=101, sync=False)
            writer.write_header(None)
        except OSError as exc:
            fail(f"cannot write the capture file {write}: {exc.strerror or exc}")
    sockets, python_filter = _open_sockets(ifaces, bpf)
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"callsctl: capturing on {iface} ({bpf}) for {duration:g} s; Ctrl-C to stop")
    sys.stderr.flush()
    header = f"capture on {iface}, port {port}" + (f", host {host}" if host else "")
    run = _CaptureRun(CaptureState(port, time.time()), writer, count,
                      (port, hosts) if python_filter else None)
    console = Console()
    live = None
    if not as_json and console.is_terminal:
        from rich.live import Live

        live = Live(run.state.render(time.time(), header), console=console, auto_refresh=False)
        live.start()
    try:
        stopped_by = run.loop(sockets, duration, live, header,
                              None if as_json or live is not None else console)
    finally:
        for sock in sockets:
            sock.close()
        if writer is not None:
            writer.close()
        if live is not None:
            live.update(run.state.render(time.time(), header, final=True), refresh=True)
            live.stop()
    state, written, start = run.state, run.written, run.state.start
    seconds = time.time() - start
    where = f"port {port} ({iface})"
    result = state.verdict(where, seconds)
    result.details = {
        "iface": iface, "filter": bpf, "port": port, "host": host,
        "seconds": round(seconds, 3), "stopped_by": stopped_by,
        "packets": state.packets, "bytes": state.bytes, "by_kind": dict(state.kinds),
        "flows": [s.to_json() for s in sorted(state.flows.values(), key=lambda s: -s.packets)],
        "milestones": list(state.milestones.values()),
        "pcap": str(write) if write is not None else None, "written": written,
    }
    if write is not None:
        result.summary += f"; {written} packets written to {write}"
    if live is None and not as_json:  # milestones were printed as they happened
        console.print(state.render(time.time(), header, milestones=False, final=True))
    raise typer.Exit(emit([result], as_json, title="check capture"))

