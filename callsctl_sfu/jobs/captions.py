"""Live captions on the server side: what the captions worker may say, and its counters.

The captions worker (transcribe/live.py) joins the call as a receive-only
session whose token has `role: captions`; it posts each caption over its own
signaling connection (`caption`), and the server checks it and sends it to
everyone in the call as `{type: caption, session_id, name, text, start, end}`.
The worker also reports what it had to drop (`captions_stats`), which becomes
Prometheus counters in /metrics, equivalents of the Calls job service's
`live_captions_window_dropped` (utterances dropped because the transcriber was
behind) and `live_captions_pktPayloadCh_buf_full` (audio frames dropped because
the worker's receive queue was full), spelled in snake case as Prometheus
wants: `…_pkt_payload_ch_buf_full`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from callsctl_sfu import events
from callsctl_sfu.calls.manager import JoinRefused

if TYPE_CHECKING:
    from callsctl_sfu.calls.manager import CallManager
    from callsctl_sfu.calls.model import Call, Session

MAX_TEXT = 500
MAX_REPORTED = 1_000_000  # per captions_stats message: more is a bug, not a count
AUDIO_LEN_BUCKETS_S = (0.25, 0.5, 1, 2, 3, 5, 8, 12, 20)


class CaptionMetrics:
    """The live captions counters, registered in the server's /metrics registry."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.window_dropped = Counter(
            "callsctl_jobs_live_captions_window_dropped",
            "Utterances (windows of audio) the captions worker dropped because the "
            "transcriber was behind", registry=registry)
        self.buf_full = Counter(
            "callsctl_jobs_live_captions_pkt_payload_ch_buf_full",
            "Audio frames the captions worker dropped because its receive queue was full",
            registry=registry)
        self.captions = Counter("callsctl_jobs_live_captions_sent",
                                "Captions sent to calls", registry=registry)
        self.audio_len = Histogram(
            "callsctl_jobs_live_captions_new_audio_len_seconds",
            "Duration of the audio of each caption, seconds",
            buckets=AUDIO_LEN_BUCKETS_S, registry=registry)


def _seconds(message: dict[str, Any], name: str) -> float:
    value = message.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not math.isfinite(value) or value < 0:
        raise JoinRefused("bad_message", f"caption: field {name!r} must be a number of "
                                         "seconds (Unix time)")
    return float(value)


class CaptionRelay:
    """Checks the captions worker's messages and passes captions on to the call."""

    def __init__(self, manager: CallManager, metrics: CaptionMetrics) -> None:
        self.manager = manager
        self.metrics = metrics

    async def __call__(self, call: Call, worker: Session, message: dict[str, Any]) -> None:
        if message["type"] == "captions_stats":
            for name, counter in (("window_dropped", self.metrics.window_dropped),
                                  ("buf_full", self.metrics.buf_full)):
                count = message.get(name, 0)
                if not 0 <= count <= MAX_REPORTED:
                    raise JoinRefused("bad_message", f"captions_stats: {name} must be 0 to "
                                                     f"{MAX_REPORTED}")
                counter.inc(count)
            return
        speaker = call.sessions.get(message["session_id"])
        if speaker is None or speaker.recorder:
            return  # the speaker left while the worker was transcribing: nothing to show
        text = " ".join(message["text"].split())[:MAX_TEXT]
        start, end = _seconds(message, "start"), _seconds(message, "end")
        if not text or end < start:
            raise JoinRefused("bad_message", "caption: needs text, and an end after its start")
        self.metrics.captions.inc()
        self.metrics.audio_len.observe(end - start)
        await self.manager.broadcast(call, events.Caption(
            session_id=speaker.session_id, name=speaker.name, text=text, start=start,
            end=end).wire(), exclude=worker.session_id)
