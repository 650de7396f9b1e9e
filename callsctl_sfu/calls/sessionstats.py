"""What an operator sees of each live session: ICE, quality, bitrates, tracks.

Everything here is read from counters the media path already keeps (track
packet/octet counts, receiver-report loss and jitter, the nominated ICE pair),
sampled once a second off the hot path. Nothing is added per packet.

Where the numbers come from:
- in_* / out_*: RTP payload bytes and packets the SFU received from the
  session (its published tracks) and forwarded to it (its down tracks), as
  rates over the last sampling interval;
- loss / jitter_ms: the worst of both directions: the session's RTCP receiver
  reports about what the SFU sends it (RFC 3550 §6.4.2) and the SFU's own
  reception of what it publishes (MediaPeer.quality());
- rtt_ms: from RTCP (the client's receiver reports about the SFU's sender
  reports, RFC 3550 §6.4.1) when the peer computes it; otherwise the round
  trip of the ICE consent-freshness checks (RFC 7675) the server sends on the
  selected pair every ~5 s, as the consent scheduler (rtc/consent.py) times
  them, or timed around aioice's own STUN transaction where aioice checks;
- candidate_pair: aioice's nominated pair (server side is always host).

Attribute access is defensive on purpose: the media classes change while
features land, and a stats page must degrade to null, never fail.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from callsctl_sfu.calls.manager import CallManager, Member
    from callsctl_sfu.calls.model import Call
    from callsctl_sfu.rtc.consent import RoundTrip

log = logging.getLogger("callsctl_sfu.calls.stats")

CLOCK_RATES = {"audio": 48000, "video": 90000}


@dataclass
class Rates:
    in_bps: float = 0.0
    out_bps: float = 0.0
    in_pps: float = 0.0
    out_pps: float = 0.0


@dataclass
class RttProbe:
    """Round trips of STUN transactions sent without retransmission on one ICE pair."""

    last_s: float | None = None
    samples: int = 0

    def record(self, seconds: float) -> None:
        self.last_s = seconds
        self.samples += 1


Counters = tuple[int, int, int, int]  # in packets, in octets, out packets, out octets


def counters(participant: Member) -> Counters:
    """(in packets, in payload octets, out packets, out payload octets) so far.

    One pass over each table without copies: the sampler calls this for every
    session every second.
    """
    peer = participant.peer
    in_packets = in_octets = out_packets = out_octets = 0
    for track in getattr(peer, "published", {}).values():
        in_packets += track.packets
        in_octets += track.octets
    for down in getattr(peer, "downtracks", {}).values():
        rewrite = down.rewrite
        out_packets += rewrite.packets
        out_octets += rewrite.octets
    return in_packets, in_octets, out_packets, out_octets


def nominated_pair(participant: Member) -> Any | None:
    peer = participant.peer
    if not getattr(peer, "connected", False):
        return None
    selected = getattr(peer, "selected_pair", None)
    return selected() if selected is not None else None


def install_rtt_probe(pair: Any) -> RttProbe | RoundTrip | None:
    """The consent checks' round trips on this pair: the mux's scheduler's, else timed here.

    Sessions on the server's shared socket are checked by the mux's consent
    scheduler, which keeps their round trip. Otherwise this wraps the STUN
    requests aioice sends on this pair's protocol (its own consent checks).
    Only requests sent with retransmissions=0 are timed: one request, one
    response, so the elapsed time is a true round trip. The wrapper sits on
    this protocol instance only and is not on the media path.
    """
    protocol = getattr(pair, "protocol", None)
    if protocol is None:
        return None
    owner = getattr(protocol, "primary", protocol)  # ICE-TCP and IPv6 paths: the UDP one's
    # rtc/consent.py needs aioice, so it is imported here, with a session, not by an
    # idle server that imports this module.
    from callsctl_sfu.rtc.consent import ConsentScheduler

    scheduler = getattr(getattr(owner, "mux", None), "consent", None)
    if isinstance(scheduler, ConsentScheduler):
        checked = scheduler.round_trip(getattr(protocol, "receiver", None))
        if checked is not None:
            return checked
    probe = getattr(protocol, "_callsctl_rtt", None)
    if probe is not None:
        return probe
    original: Callable[..., Awaitable[Any]] | None = getattr(protocol, "request", None)
    if original is None:
        return None
    probe = RttProbe()

    async def timed_request(*args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        result = await original(*args, **kwargs)
        if kwargs.get("retransmissions") == 0:
            probe.record(time.monotonic() - start)
        return result

    try:
        protocol.request = timed_request
        protocol._callsctl_rtt = probe
    except AttributeError:  # a protocol with __slots__: no RTT, nothing else changes
        return None
    return probe


class SessionSampler:
    """Samples every session's counters once a second and keeps the latest rates."""

    def __init__(self, manager: CallManager) -> None:
        self.manager = manager
        self._last: dict[str, tuple[float, Counters]] = {}  # session -> (when, counters)
        self.rates: dict[str, Rates] = {}
        self.rtt: dict[str, RttProbe | RoundTrip] = {}

    def sample(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        live = self.manager.participants
        for session_id in [s for s in self._last if s not in live]:
            self._last.pop(session_id, None)
            self.rates.pop(session_id, None)
            self.rtt.pop(session_id, None)
        last, rates = self._last, self.rates
        for session_id, participant in live.items():  # no await in this loop
            try:
                current = counters(participant)
            except (AttributeError, TypeError):
                continue
            previous = last.get(session_id)
            last[session_id] = (now, current)
            if previous is not None and now > previous[0]:
                dt = now - previous[0]
                before = previous[1]
                rate = rates.get(session_id)
                if rate is None:
                    rate = rates[session_id] = Rates()
                # Updated in place: a second's worth of objects less for every session.
                rate.in_pps = max(0, current[0] - before[0]) / dt
                rate.in_bps = max(0, current[1] - before[1]) * 8 / dt
                rate.out_pps = max(0, current[2] - before[2]) / dt
                rate.out_bps = max(0, current[3] - before[3]) * 8 / dt
            if session_id not in self.rtt:
                pair = nominated_pair(participant)
                probe = install_rtt_probe(pair) if pair is not None else None
                if probe is not None:
                    self.rtt[session_id] = probe

    def rtt_s(self, session_id: str) -> float | None:
        probe = self.rtt.get(session_id)
        return probe.last_s if probe else None


def quality(participant: Member) -> tuple[float | None, float | None, float | None]:
    """(worst fraction lost 0..1, worst jitter ms, RTCP round trip ms) of this session.

    MediaPeer.quality() (both directions, RTT from RTCP SR/RR) is used when the
    peer has it; otherwise this session's receiver reports about the streams the
    SFU forwards to it, without an RTT.
    """
    method = getattr(participant.peer, "quality", None)
    if callable(method):
        try:
            figures = method()
            return figures.get("loss"), figures.get("jitter_ms"), figures.get("rtt_ms")
        except Exception as exc:  # a stats page must not fail with the media code
            log.debug("peer quality unavailable: %s", exc)
    loss: float | None = None
    jitter_ms: float | None = None
    for down in getattr(participant.peer, "downtracks", {}).values():
        lost = getattr(down, "fraction_lost", None)
        if lost is not None:
            loss = lost if loss is None else max(loss, lost)
        jitter = getattr(down, "jitter", None)
        if jitter is not None:
            ms = jitter / CLOCK_RATES.get(down.kind, 90000) * 1000
            jitter_ms = ms if jitter_ms is None else max(jitter_ms, ms)
    return loss, jitter_ms, None


def _address(addr: Any) -> str | None:
    if not addr:
        return None
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def candidate_pair(participant: Member) -> dict[str, Any] | None:
    pair = nominated_pair(participant)
    if pair is None:
        return None
    try:
        remote = pair.remote_candidate
        local = pair.local_candidate
        kinds = {getattr(local, "type", "host"), getattr(remote, "type", "host")}
        kind = "relay" if "relay" in kinds else getattr(remote, "type", "host")
        return {"local": _address((local.host, local.port)),
                "remote": _address(pair.remote_addr), "type": kind,
                "protocol": str(getattr(remote, "transport", "udp")).lower()}
    except AttributeError:
        return None


def tracks(participant: Member) -> list[dict[str, Any]]:
    peer = participant.peer
    out: list[dict[str, Any]] = []
    for track in getattr(peer, "published", {}).values():
        ssrc = track.primary_ssrc or next(iter(sorted(track.ssrcs)), None)
        keyframes = getattr(track, "keyframes", None)
        out.append({"kind": track.kind, "label": track.label, "ssrc": ssrc,
                    "direction": "in", "packets": track.packets,
                    "nacks": getattr(track, "nacks_sent", None),
                    "plis": getattr(keyframes, "sent", None)})
    for down in getattr(peer, "downtracks", {}).values():
        out.append({"kind": down.kind, "label": down.label, "ssrc": down.rewrite.ssrc,
                    "direction": "out", "packets": down.rewrite.packets,
                    "nacks": down.nacks_received, "plis": down.plis_received,
                    "from": down.publisher_id})
    return out


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def describe_session(participant: Member, sampler: SessionSampler | None
                     ) -> dict[str, Any]:
    """One entry of GET /api/v1/calls/{id} "sessions" (shape fixed: the TUI reads it)."""
    session = participant.session
    state = session.state
    peer = participant.peer
    rates = sampler.rates.get(session.session_id) if sampler else None
    loss, jitter_ms, rtt_ms = quality(participant)
    if rtt_ms is None and sampler is not None:
        probed = sampler.rtt_s(session.session_id)
        rtt_ms = probed * 1000 if probed is not None else None
    try:
        ice_state = peer.pc.iceConnectionState
    except AttributeError:
        ice_state = None
    return {
        "session_id": session.session_id, "user": session.user, "name": session.name,
        "joined_at": session.joined_at, "muted": state.muted, "hand": state.hand,
        "voice": state.voice, "screen": state.screen, "video": state.video,
        "ice_state": ice_state, "connected": bool(getattr(peer, "connected", False)),
        "detached": participant.detached_at is not None,
        "candidate_pair": candidate_pair(participant),
        "rtt_ms": _round(rtt_ms),
        "loss": _round(loss, 4), "jitter_ms": _round(jitter_ms),
        "in_bps": _round(rates.in_bps, 0) if rates else None,
        "out_bps": _round(rates.out_bps, 0) if rates else None,
        "in_pps": _round(rates.in_pps) if rates else None,
        "out_pps": _round(rates.out_pps) if rates else None,
        "tracks": tracks(participant),
    }


def _call_rates(manager: CallManager, call: Call, sampler: SessionSampler | None
                ) -> tuple[float | None, float | None]:
    if sampler is None:
        return None, None
    known = [sampler.rates[s] for s in call.sessions if s in sampler.rates]
    if not known:
        return None, None
    return (round(sum(r.in_bps for r in known)), round(sum(r.out_bps for r in known)))


def screen_sharer(call: Call) -> str | None:
    return next((s.session_id for s in call.sessions.values() if s.state.screen), None)


def summarize_call(manager: CallManager, call: Call, sampler: SessionSampler | None
                   ) -> dict[str, Any]:
    """One entry of GET /api/v1/calls."""
    host = call.sessions.get(call.host) if call.host else None
    in_bps, out_bps = _call_rates(manager, call, sampler)
    return {"id": call.call_id, "participants": len(call.people()),
            "recording": call.recording, "captions": call.captions,
            "started_at": call.started_at, "host": call.host,
            "host_user": host.user if host else None, "screen_sharer": screen_sharer(call),
            "in_bps": in_bps, "out_bps": out_bps}


def describe_call(manager: CallManager, call: Call, sampler: SessionSampler | None
                  ) -> dict[str, Any]:
    """GET /api/v1/calls/{id}: the call and every session in join order."""
    sessions = []
    for session in call.people():  # a recorder is shown as "recording", not a session
        participant = manager.participants.get(session.session_id)
        if participant is not None:
            sessions.append(describe_session(participant, sampler))
    summary = summarize_call(manager, call, sampler)
    return {**summary, "sessions": sessions}
