"""Prometheus metrics at /metrics: the rtcd names the seed deployment documents, plus ours.

Dashboards and alerts written for Mattermost's rtcd keep working against
callsctl: the same metric names with the same meaning (rtcd's service/perf
metrics). Counters the media path already keeps (ForwardingStats, MuxStats,
per-peer SRTP errors) are read when Prometheus scrapes, so the hot path gains
nothing. What only exists as an event (a connection state change, a data
channel opening) is observed from CallManager's observer hook. The write-time
histogram is fed by the forwarder itself, which times a sample of its sends and
reports them through the ForwardMetrics interface (calls/forward_metrics.py)
that `Metrics` implements; server.py hands it over.

Naming notes:
- rtcd's gauges that end in `_total` (sessions, tracks, ws connections) are
  exposed as *untyped*: the names must stay rtcd's, and `promtool check
  metrics` rejects a *gauge* named `..._total` but accepts an untyped one.
  Prometheus and Grafana treat untyped samples exactly like gauges.
- rtcd's label `groupID` is left out: one callsctl process is one group.
- process metrics come as `rtcd_process_*`, and the four the seed document
  spells `rtcd_plugin_calls_process_*` are exposed under that name too.
- callsctl's own metrics are `callsctl_*`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter as TallyCounter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    UnknownMetricFamily,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from callsctl_sfu.calls.manager import CallManager
    from callsctl_sfu.calls.model import Call
    from callsctl_sfu.calls.sessionstats import SessionSampler
    from callsctl_sfu.rtc.mux import UdpMux

log = logging.getLogger("callsctl_sfu.metrics")

# rtcd's buckets (seconds, and fractions for loss), so dashboards' quantiles compare.
LATENCY_BUCKETS = (.001, .005, .0075, .01, .025, .05, .075, .1, .25, .3, .4, .5, .75, 1)
LOSS_BUCKETS = (.001, .005, .0075, .01, .025, .05, .075, .1, .25, .5, .75, 1)
SETUP_BUCKETS = (.05, .1, .25, .5, .75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 30)
QUALITY_EVERY_S = 5.0
CONN_STATES = ("new", "connecting", "connected", "disconnected", "failed", "closed")
SNMP_PATH = Path("/proc/net/snmp")
MALFORMED_TRANSPORTS = ("udp", "tcp")
MALFORMED_KINDS = ("stun", "frame", "handler")


def read_udp_snmp(path: Path = SNMP_PATH) -> dict[str, int]:
    """The kernel's UDP counters (this network namespace): RcvbufErrors, InErrors, ..."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    rows = [line.split() for line in lines if line.startswith("Udp:")]
    if len(rows) < 2:
        return {}
    names, values = rows[0][1:], rows[1][1:]
    result = {}
    for name, value in zip(names, values, strict=False):
        try:
            result[name] = int(value)
        except ValueError:
            continue
    return result


class _PluginProcessAlias(Collector):
    """The four process metrics the seed document names rtcd_plugin_calls_process_*."""

    WANTED = {"rtcd_plugin_calls_process_max_fds", "rtcd_plugin_calls_process_open_fds",
              "rtcd_plugin_calls_process_resident_memory_bytes",
              "rtcd_plugin_calls_process_virtual_memory_bytes"}

    def __init__(self) -> None:
        self._inner = ProcessCollector(namespace="rtcd_plugin_calls", registry=None)

    def collect(self) -> Iterable[Metric]:
        for family in self._inner.collect():
            if family.name in self.WANTED:
                yield family


@dataclasses.dataclass
class _Tracked:
    peer: Any
    joined: float
    connected_seen: bool = False
    dc_seen: bool = False
    rtt_samples_seen: int = 0


class Metrics:
    """The registry /metrics serves, and the hooks that feed its event-driven parts."""

    def __init__(self, manager: CallManager, mux: UdpMux, ws_stats: dict[str, Any],
                 extra: dict[str, Any] | None = None) -> None:
        disable_created_metrics()  # no *_created series: nothing in rtcd's set has them
        self.manager = manager
        self.mux = mux
        self.ws_stats = ws_stats
        self.extra = extra if extra is not None else {}
        self._tracked: dict[str, _Tracked] = {}
        self.departed = TallyCounter[str]()
        self._last_quality = 0.0
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(namespace="rtcd", registry=self.registry)
        self.registry.register(_PluginProcessAlias())
        r = self.registry
        self.conn_states = Counter("rtcd_rtc_conn_states",
                                   "Total number of RTC connection state changes", ["type"],
                                   registry=r)
        for state in CONN_STATES:
            self.conn_states.labels(type=state)
        self.connection_time = Histogram(
            "rtcd_rtc_connection_time", "Time from join to a connected RTC connection "
            "(ICE + DTLS), seconds", buckets=SETUP_BUCKETS, registry=r)
        self.dc_open_time = Histogram(
            "rtcd_rtc_dc_open_time", "Time from join to the client's data channel being "
            "open, seconds", buckets=SETUP_BUCKETS, registry=r)
        self.writes_time = Histogram(
            "rtcd_rtc_rtp_tracks_writes_time", "Time taken to write to outgoing RTP tracks "
            "(SRTP protect + send), seconds; sampled", ["type"], buckets=LATENCY_BUCKETS,
            registry=r)
        for kind in ("audio", "video"):
            self.writes_time.labels(type=kind)
        self.client_loss = Histogram("rtcd_rtc_client_loss_rate",
                                     "Client loss rate (fraction lost, RTCP receiver reports)",
                                     buckets=LOSS_BUCKETS, registry=r)
        self.client_rtt = Histogram("rtcd_rtc_client_rtt",
                                    "Client round trip time (RTCP, else ICE consent checks), "
                                    "seconds",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.client_jitter = Histogram("rtcd_rtc_client_jitter",
                                       "Client latency jitter (RTCP receiver reports), seconds",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.registry.register(_LiveCollector(self))

    # -- ForwardMetrics (calls/forward_metrics.py): what the forwarder measures ---------------

    def on_send_cost(self, kind: str, seconds: float) -> None:
        """A sampled forwarded datagram's SRTP protect + send time (C fan-out or Python)."""
        self.writes_time.labels(type=kind).observe(seconds)

    # -- the /metrics body ---------------------------------------------------------------

    content_type = CONTENT_TYPE_LATEST

    def exposition(self) -> bytes:
        # The C ingress reader thread's counters and write-time samples, folded first.
        self.manager.forwarder.collect_ingress()
        return generate_latest(self.registry)

    # -- events (CallManager observer) -------------------------------------------------------

    def observe(self, call: Call, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "user_joined":
            self._track(event.get("session_id"))
        elif kind == "user_left":
            self._untrack(event.get("session_id"))

    def _track(self, session_id: Any) -> None:
        participant = self.manager.participants.get(session_id)
        if participant is None or session_id in self._tracked:
            return
        tracked = _Tracked(participant.peer, time.monotonic())
        self._tracked[session_id] = tracked
        pc = getattr(participant.peer, "pc", None)
        if pc is None:
            return

        def on_state() -> None:
            state = pc.connectionState
            self.conn_states.labels(type=state).inc()
            if state == "connected" and not tracked.connected_seen:
                tracked.connected_seen = True
                self.connection_time.observe(time.monotonic() - tracked.joined)

        def on_datachannel(channel: Any) -> None:
            def opened() -> None:
                if not tracked.dc_seen:
                    tracked.dc_seen = True
                    self.dc_open_time.observe(time.monotonic() - tracked.joined)

            if getattr(channel, "readyState", None) == "open":
                opened()
            else:
                channel.on("open", opened)

        pc.on("connectionstatechange", on_state)
        pc.on("datachannel", on_datachannel)

    def _untrack(self, session_id: Any) -> None:
        tracked = self._tracked.pop(session_id, None)
        if tracked is None:
            return
        peer = tracked.peer
        self.departed["srtp"] += int(getattr(peer, "srtp_errors", 0) or 0)
        for track in getattr(peer, "published", {}).values():
            self.departed["in_octets"] += track.octets

    # -- periodic sampling (ControlPlane calls this once a second) --------------------------

    def tick(self, sampler: SessionSampler | None) -> None:
        now = time.monotonic()
        if sampler is not None and now - self._last_quality >= QUALITY_EVERY_S:
            self._last_quality = now
            self._observe_quality(sampler)

    def _observe_quality(self, sampler: SessionSampler) -> None:
        from callsctl_sfu.calls.sessionstats import quality

        for session_id, participant in list(self.manager.participants.items()):
            loss, jitter_ms, rtt_ms = quality(participant)
            if loss is not None:
                self.client_loss.observe(loss)
            if jitter_ms is not None:
                self.client_jitter.observe(jitter_ms / 1000)
            if rtt_ms is not None:
                self.client_rtt.observe(rtt_ms / 1000)
                continue
            probe = sampler.rtt.get(session_id)
            tracked = self._tracked.get(session_id)
            if probe is not None and probe.last_s is not None and tracked is not None and \
                    probe.samples > tracked.rtt_samples_seen:
                tracked.rtt_samples_seen = probe.samples
                self.client_rtt.observe(probe.last_s)


class _LiveCollector(Collector):
    """Everything read from live objects at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterable[Metric]:
        m = self.m
        manager, mux = m.manager, m.mux
        participants = list(manager.participants.values())

        sessions = UnknownMetricFamily("rtcd_rtc_sessions_total",
                                       "Total number of active RTC sessions")
        sessions.add_metric([], len(participants))
        yield sessions

        tracks = UnknownMetricFamily("rtcd_rtc_rtp_tracks_total",
                                     "Total number of active RTP tracks",
                                     labels=["direction", "type"])
        tally: TallyCounter[tuple[str, str]] = TallyCounter()
        srtp_live = 0
        in_octets_live = 0
        for participant in participants:
            peer = participant.peer
            for track in getattr(peer, "published", {}).values():
                tally[("in", track.kind)] += 1
                in_octets_live += track.octets
            for down in getattr(peer, "downtracks", {}).values():
                tally[("out", down.kind)] += 1
            srtp_live += int(getattr(peer, "srtp_errors", 0) or 0)
        for direction in ("in", "out"):
            for kind in ("audio", "video"):
                tracks.add_metric([direction, kind], tally[(direction, kind)])
        yield tracks

        forwarding = dataclasses.asdict(manager.forwarder.stats)
        mux_stats = mux.stats.as_dict()

        errors = CounterMetricFamily("rtcd_rtc_errors", "Total number of RTC related errors",
                                     labels=["type"])
        errors.add_metric(["srtp"], srtp_live + m.departed["srtp"])
        errors.add_metric(["ice_auth"], mux_stats.get("auth_failed", 0))
        errors.add_metric(["send"], mux_stats.get("send_errors", 0))
        errors.add_metric(["rtp_malformed"], forwarding.get("dropped_malformed", 0))
        yield errors

        packets = CounterMetricFamily("rtcd_rtc_rtp_packets",
                                      "Total number of sent/received RTP packets",
                                      labels=["direction"])
        packets.add_metric(["in"], forwarding.get("rtp_in", 0))
        packets.add_metric(["out"], forwarding.get("rtp_forwarded", 0))
        yield packets
        octets = CounterMetricFamily("rtcd_rtc_rtp_bytes",
                                     "Total number of sent/received RTP packets in bytes "
                                     "(in: payload of accepted packets; out: forwarded packets)",
                                     labels=["direction"])
        octets.add_metric(["in"], in_octets_live + m.departed["in_octets"])
        octets.add_metric(["out"], forwarding.get("bytes_forwarded", 0))
        yield octets

        ws = m.ws_stats
        connections = UnknownMetricFamily("rtcd_ws_connections_total",
                                          "Total number of active WebSocket sessions")
        connections.add_metric([], ws.get("active", 0))
        yield connections
        messages = CounterMetricFamily("rtcd_ws_messages",
                                       "Total number of sent/received WebSocket messages",
                                       labels=["direction", "type"])
        for direction, key in (("in", "messages_in"), ("out", "messages_out")):
            for kind, count in sorted((ws.get(key) or {}).items()):
                messages.add_metric([direction, kind], count)
        yield messages

        yield from self._own(forwarding, mux_stats)

    def _queue_delay(self) -> Metric:
        """callsctl_media_queue_delay_seconds, from the C ingress (calls/queuedelay.py)."""
        delay = self.m.manager.forwarder.queue_delay
        family = HistogramMetricFamily(
            "callsctl_media_queue_delay_seconds",
            "How long RTP packets waited in the media socket's receive queue before the "
            "server read them (kernel receive time to read; the server's own share of "
            "the media's delay, rising when its reading thread falls behind)")
        family.add_metric([], [("+Inf" if bound == float("inf") else repr(bound), count)
                               for bound, count in delay.cumulative()],
                          sum_value=delay.sum_us / 1e6)
        return family

    def _own(self, forwarding: dict[str, int], mux_stats: dict[str, int]) -> Iterable[Metric]:
        m = self.m
        own = {
            "forwarded_packets": ("rtp_forwarded", "RTP packets forwarded to receivers"),
            "forwarded_bytes": ("bytes_forwarded", "bytes of RTP forwarded to receivers"),
            "nacks_received": ("nacks_received", "generic NACKs received from receivers"),
            "nacks_answered": ("nacks_answered", "packets retransmitted to answer NACKs"),
            "nacks_sent_upstream": ("nacks_sent_upstream", "NACKs sent to publishers"),
            "plis_received": ("plis_received", "PLI/FIR received from receivers"),
            "plis_sent": ("plis_sent", "PLIs sent to publishers (throttled)"),
            "sender_reports_forwarded": ("sender_reports_forwarded",
                                         "RTCP sender reports translated and forwarded"),
        }
        for name, (key, doc) in own.items():
            family = CounterMetricFamily(f"callsctl_{name}", f"Total {doc}")
            family.add_metric([], forwarding.get(key, 0))
            yield family
        dropped = CounterMetricFamily("callsctl_dropped_packets",
                                      "RTP packets not forwarded, by reason", labels=["reason"])
        for reason in ("muted", "unknown_pt", "malformed", "late"):
            dropped.add_metric([reason], forwarding.get(f"dropped_{reason}", 0))
        yield dropped
        yield self._queue_delay()

        calls = GaugeMetricFamily("callsctl_active_calls", "Calls with at least one session")
        calls.add_metric([], len(m.manager.calls))
        yield calls
        connected = GaugeMetricFamily("callsctl_connected_sessions",
                                      "Sessions whose media (ICE + DTLS) is connected")
        connected.add_metric([], sum(1 for p in m.manager.participants.values()
                                     if getattr(p.peer, "connected", False)))
        yield connected

        datagrams = CounterMetricFamily("callsctl_media_socket_datagrams",
                                        "Datagrams on the shared media socket",
                                        labels=["direction"])
        datagrams.add_metric(["in"], mux_stats.get("datagrams_in", 0))
        datagrams.add_metric(["out"], mux_stats.get("datagrams_out", 0))
        yield datagrams
        octets = CounterMetricFamily("callsctl_media_socket_bytes",
                                     "Bytes on the shared media socket", labels=["direction"])
        octets.add_metric(["in"], mux_stats.get("bytes_in", 0))
        octets.add_metric(["out"], mux_stats.get("bytes_out", 0))
        yield octets

        malformed = CounterMetricFamily(
            "callsctl_rtc_malformed_packets",
            "Packets on the media port (UDP, ICE-TCP) dropped as malformed, by transport and "
            "kind (stun: unparseable STUN; frame: an ICE-TCP connection that did not open "
            "with STUN; handler: any other failure handling one packet)",
            labels=["transport", "kind"])
        tally = getattr(m.mux, "malformed", {})
        for transport in MALFORMED_TRANSPORTS:
            for kind in MALFORMED_KINDS:
                malformed.add_metric([transport, kind], tally.get((transport, kind), 0))
        yield malformed

        snmp = read_udp_snmp()
        for name, key, doc in (
                ("udp_rcvbuf_errors", "RcvbufErrors",
                 "UDP datagrams the kernel dropped for a full receive buffer (whole host, "
                 "/proc/net/snmp); rising = run `callsctl tune`"),
                ("udp_sndbuf_errors", "SndbufErrors",
                 "UDP datagrams not sent for a full send buffer (whole host)"),
                ("udp_in_errors", "InErrors", "UDP receive errors (whole host)")):
            if key in snmp:
                family = CounterMetricFamily(f"callsctl_{name}", doc)
                family.add_metric([], snmp[key])
                yield family

        limited = CounterMetricFamily("callsctl_signaling_rate_limited",
                                      "Signaling messages dropped by the per-connection limit")
        limited.add_metric([], m.ws_stats.get("rate_limited", 0))
        yield limited
        hub = m.extra.get("events")
        if hub is not None:
            subscribers = GaugeMetricFamily("callsctl_event_subscribers",
                                            "Open /api/v1/events streams")
            subscribers.add_metric([], len(hub.subscribers))
            yield subscribers
            lost = CounterMetricFamily("callsctl_events_dropped",
                                       "Events a slow /api/v1/events reader missed")
            lost.add_metric([], hub.dropped)
            yield lost
