"""What `callsctl top` knows about a server: the latest snapshot, rates and histories.

Pure data with no I/O and no UI, so rates, counter resets and history limits
are tested without a server or a terminal. The server reports counters (how
many packets so far); an operator wants rates (packets per second now) and
their recent shape, so each snapshot is compared with the previous one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from callsctl_sfu.calls.queuedelay import QueueDelay

HISTORY_SAMPLES = 300  # five minutes at the default one-second refresh

ActionKind = Literal["mute", "mute_others", "lower_hand", "stop_screen", "remove",
                     "make_host", "end_call"]

ACTION_VERBS: dict[str, str] = {
    "mute": "Mute", "mute_others": "Mute everyone except", "lower_hand": "Lower the hand of",
    "stop_screen": "Stop the screen share of", "remove": "Remove", "make_host": "Make host:",
    "end_call": "End call",
}


@dataclass(frozen=True)
class Action:
    """One host control aimed at one call (and, except end_call, one session)."""

    kind: ActionKind
    call_id: str
    session_id: str | None = None
    who: str = ""  # how the operator knows the target (user and name), for the question

    def question(self) -> str:
        verb = ACTION_VERBS[self.kind]
        if self.kind == "end_call":
            return f"{verb} {self.call_id!r} for everyone in it?"
        return f"{verb} {self.who or self.session_id} in call {self.call_id!r}?"


@dataclass
class Overview:
    """One refresh of the server-wide view (each optional part None if unavailable)."""

    calls: list[dict[str, Any]]
    system: dict[str, Any] | None = None
    version: dict[str, Any] | None = None
    stats: dict[str, Any] | None = None
    rcvbuf_errors: int | None = None  # from /metrics, for servers whose /system lacks it
    process_cpu_seconds: float | None = None  # likewise (rtcd_process_cpu_seconds_total)
    # The fleet's nodes (GET /api/v1/fleet/nodes) when the server is one of a fleet;
    # None on a single node, which has no such route.
    nodes: list[dict[str, Any]] | None = None

    def server_cpu_seconds(self) -> float | None:
        """CPU time the server process has used (user + system), from /system or /metrics."""
        value = _number((self.system or {}).get("process_cpu_seconds"))
        return value if value is not None else _number(self.process_cpu_seconds)

    def host_rcvbuf_errors(self) -> float | None:
        """The host's UDP receive-buffer drop counter (since boot)."""
        value = _number((self.system or {}).get("udp_rcvbuf_errors"))
        return value if value is not None else _number(self.rcvbuf_errors)

    def rcvbuf_errors_since_start(self) -> float | None:
        """The drops since the server started (None from servers that do not say)."""
        return _number((self.system or {}).get("udp_rcvbuf_errors_since_start"))


class DataSource(Protocol):
    """Where the TUI gets its data: the admin API, or fixed data in layout tests."""

    base_url: str

    async def overview(self) -> Overview: ...

    async def call_detail(self, call_id: str) -> dict[str, Any] | None: ...

    async def act(self, action: Action) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _counter(stats: dict[str, Any] | None, group: str, name: str) -> float | None:
    if not stats:
        return None
    inner = stats.get(group)
    return _number(inner.get(name)) if isinstance(inner, dict) else None


@dataclass
class ServerSample:
    """The counters of one overview that rates are computed from, and when it was taken."""

    at: float
    rtp_in: float | None
    rtp_out: float | None
    bytes_in: float | None
    bytes_out: float | None
    rcvbuf_errors: float | None
    cpu_seconds: float | None = None
    # Audio the server skipped for waiting too long in its socket (it is short of CPU).
    late: float | None = None
    # GET /stats media_queue_delay: the histogram so far (calls/queuedelay.py).
    queue: QueueDelay | None = None

    @classmethod
    def of(cls, overview: Overview, at: float) -> ServerSample:
        stats = overview.stats
        return cls(at=at, rtp_in=_counter(stats, "forwarding", "rtp_in"),
                   rtp_out=_counter(stats, "forwarding", "rtp_forwarded"),
                   bytes_in=_counter(stats, "media_socket", "bytes_in"),
                   bytes_out=_counter(stats, "media_socket", "bytes_out"),
                   rcvbuf_errors=overview.host_rcvbuf_errors(),
                   cpu_seconds=overview.server_cpu_seconds(),
                   late=_counter(stats, "forwarding", "dropped_late"),
                   queue=QueueDelay.from_stats((stats or {}).get("media_queue_delay")))


@dataclass
class ServerRates:
    """Per-second rates between two samples; None where a counter is missing or reset."""

    in_pps: float | None = None
    out_pps: float | None = None
    in_bps: float | None = None
    out_bps: float | None = None
    rcvbuf_errors_per_s: float | None = None
    cpu: float | None = None  # the server process's CPU, in cores (1.0 = one core busy)
    late_per_s: float | None = None  # audio packets skipped as stale (media_late_drop_ms)
    # The 99th percentile of the media's wait in the server's socket over the interval.
    queue_p99_ms: float | None = None

    @classmethod
    def between(cls, old: ServerSample, new: ServerSample) -> ServerRates:
        elapsed = new.at - old.at
        if elapsed <= 0:
            return cls()

        def rate(a: float | None, b: float | None, scale: float = 1.0) -> float | None:
            # A counter that went down means the server restarted: no honest rate.
            if a is None or b is None or b < a:
                return None
            return (b - a) * scale / elapsed

        return cls(in_pps=rate(old.rtp_in, new.rtp_in), out_pps=rate(old.rtp_out, new.rtp_out),
                   in_bps=rate(old.bytes_in, new.bytes_in, 8),
                   out_bps=rate(old.bytes_out, new.bytes_out, 8),
                   rcvbuf_errors_per_s=rate(old.rcvbuf_errors, new.rcvbuf_errors),
                   cpu=rate(old.cpu_seconds, new.cpu_seconds),
                   late_per_s=rate(old.late, new.late),
                   queue_p99_ms=_interval_p99(old, new))


def _interval_p99(old: ServerSample, new: ServerSample) -> float | None:
    """p99 of the packets counted between two samples (None: none, or the server restarted)."""
    window = new.queue.since(old.queue) if new.queue is not None else None
    return window.quantile(0.99) if window is not None else None


SERVER_SERIES = ("cpu", "load", "in_bps", "out_bps", "in_pps", "out_pps", "rcvbuf")


@dataclass
class SessionHistory:
    """RTT and loss of one session over the last minutes (while its call was watched)."""

    rtt_ms: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_SAMPLES))
    loss: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_SAMPLES))


@dataclass
class TopState:
    """Everything the screens render; updated by the app after each refresh."""

    overview: Overview | None = None
    sample: ServerSample | None = None
    rates: ServerRates = field(default_factory=ServerRates)
    history: dict[str, deque[float]] = field(default_factory=lambda: {
        name: deque(maxlen=HISTORY_SAMPLES) for name in SERVER_SERIES})
    details: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    sessions: dict[str, SessionHistory] = field(default_factory=dict)
    session_call: dict[str, str] = field(default_factory=dict)
    updated_at: float | None = None
    # Server clock minus ours, from /system "time": a remote server's clock may be off,
    # and durations are computed against its own started_at/joined_at stamps.
    clock_offset: float = 0.0

    @property
    def calls(self) -> list[dict[str, Any]]:
        return self.overview.calls if self.overview else []

    def apply_overview(self, overview: Overview, now: float) -> None:
        """Take a new snapshot: rates against the previous one, one point per series."""
        sample = ServerSample.of(overview, now)
        self.rates = (ServerRates.between(self.sample, sample) if self.sample is not None
                      else ServerRates())
        self.sample = sample
        self.overview = overview
        self.updated_at = now
        server_time = _number((overview.system or {}).get("time"))
        if server_time is not None:
            self.clock_offset = server_time - now
        load = _number((overview.system or {}).get("cpu_load"))
        for name, value in (("cpu", self.rates.cpu), ("load", load), ("in_bps", self.rates.in_bps),
                            ("out_bps", self.rates.out_bps), ("in_pps", self.rates.in_pps),
                            ("out_pps", self.rates.out_pps),
                            ("rcvbuf", self.rates.rcvbuf_errors_per_s)):
            if value is not None:
                self.history[name].append(value)
        live = {c.get("id") for c in overview.calls}
        for call_id in [c for c in self.details if c not in live]:
            self.details[call_id] = None

    def apply_detail(self, call_id: str, detail: dict[str, Any] | None) -> None:
        """Take a call's detail (None: it ended); record each session's RTT and loss."""
        self.details[call_id] = detail
        present = {s.get("session_id") for s in (detail or {}).get("sessions") or []}
        # Forget the sessions that left, so a long-running top does not grow without end.
        for sid in [s for s, c in self.session_call.items() if c == call_id and s not in present]:
            self.session_call.pop(sid, None)
            self.sessions.pop(sid, None)
        if detail is None:
            return
        for session in detail.get("sessions") or []:
            sid = session.get("session_id")
            if not isinstance(sid, str):
                continue
            self.session_call[sid] = call_id
            history = self.sessions.setdefault(sid, SessionHistory())
            rtt = _number(session.get("rtt_ms"))
            loss = _number(session.get("loss"))
            if rtt is not None:
                history.rtt_ms.append(rtt)
            if loss is not None:
                history.loss.append(loss)

    def call_summary(self, call_id: str) -> dict[str, Any] | None:
        return next((c for c in self.calls if c.get("id") == call_id), None)

    def session(self, call_id: str, session_id: str) -> dict[str, Any] | None:
        detail = self.details.get(call_id)
        if not detail:
            return None
        return next((s for s in detail.get("sessions") or []
                     if s.get("session_id") == session_id), None)
