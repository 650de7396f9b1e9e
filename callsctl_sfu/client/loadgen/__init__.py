"""Synthetic participants by the hundred: the engine behind `callsctl loadtest` and bench/.

Why not the scripted `Participant` (`callsctl_sfu.client.participant`)? It is a faithful
client, but it encodes Opus per packet, decodes everything it receives and runs
aiortc's jitter buffers and decoder threads: a few dozen of those saturate a
core, and the load generator would measure itself rather than the server. Here:

- Handshakes are real: the same `/ws` signaling as the web client, aiortc for
  ICE, DTLS and the SRTP keys, one UDP socket per participant (max-bundle, one
  host candidate on the address that routes to the server).
- aiortc's per-track machinery is switched off for these connections (its RTP
  sender/receiver loops, decoder threads and RTCP reports), and the received
  datagrams are taken off the participant's socket before aiortc sees them.
- Media is real and encoded once: a generated speech-like signal encoded with
  libopus into a list of payloads (`opus_sample`), a generated picture encoded
  with libvpx into VP8 frames (`vp8_sample`). Every 20 ms (audio) or frame
  interval (video) each sender builds an RTP header, SRTP-protects the packet
  with its own DTLS-derived context and sends it on its socket. No per-packet
  encoding.
- Receivers count datagrams per SSRC without decrypting them (the SSRC is in the
  clear, RFC 3711 §3.1); the SSRC -> publisher map comes from the server's SDP
  (msid `<publisher>-<label>`, the SFU's track ids).
- Receivers send RTCP as a browser would: an RTCP receiver report on
  libwebrtc's schedule (every 5 s when only audio is received, every 1 s with
  video), each interval drawn from 0.5-1.5 times that (RFC 3550 §6.3.1), so
  the server sees the per-session RTCP load real clients cause, not a burst
  from every receiver at once. (Before, every receiver reported every second,
  all together: five times an audio client's rate.)

Forwarding delay: every sent packet carries its send time in RTP padding
(RFC 3550 §5.1: P bit set, the last padding octet counts the padding octets).
Padding is part of the payload as far as an SFU is concerned: callsctl's
forwarder rewrites the header, drops foreign header extensions and keeps the P
bit and the payload bytes, so the stamp survives, while a real receiver's
depacketizer strips padding before the decoder (so a browser in the same call
still hears clean Opus). Header extensions would not survive (the SFU drops
unknown ones). The stamp is 12 octets: magic "cl", the sender's
`time.monotonic_ns()` (8 octets), one zero octet and the count octet 12. Sender
and receivers run on one machine (one process, or worker processes of one run),
so the clocks agree. Only every Nth
packet of each received stream (`delay_sample_every`) is decrypted to read it,
keeping the receive path cheap; libsrtp's replay window (1024) tolerates the gaps.

Loss: after every participant has joined and every expected stream has
delivered its first packet (or a settle timeout passed), a steady window opens:
per sender the packets sent in it, per receiver the packets received in it
from each sender of its call. Sending stops before the window closes and the
in-flight packets drain, so expected vs received compare the same packets
(up to the few in flight when the window opened).

Probes (`probes_per_call`, for benches only): a bench that drops most
receivers' media outside the generator (bench/sink_meter.py) names a few
receivers per call, spread over the join order, that gather on their own
address; loss, delay and settling are then measured on those alone.

The package, one job per module:

- config.py       what to simulate (`LoadConfig`, `Role`) and the limits every caller is held to
- media.py        synthetic media sources: Opus and VP8 samples, encoded once
- negotiation.py  SDP: simulcast offers, reading answers, msid -> publisher
- handshake.py    aiortc for ICE/DTLS/SRTP keys only; one host candidate per participant
- sender.py       one published stream: RTP headers, the send-time stamp
- participant.py  one participant: signaling, peer, counting received SRTP
- orchestrate.py  the run (`LoadTest`): joins, media clock, settling, the steady window;
                  its `participant_factory` is the seam for another SFU's signaling
- processes.py    the run split over worker processes (`--processes`), kept in step
                  and merged into one report (`make_load_test` picks)
- report.py       live progress, percentiles, loss figures, the `--json` report
- monitor.py      the server's CPU and memory during the run

The names below are the package's interface (the CLI, bench/ and tests import
them from here); the modules are free to move things among themselves.
"""

from __future__ import annotations

from callsctl_sfu.client.loadgen.config import (
    CLOSE_TIMEOUT_S,
    MAX_CALLS,
    MAX_DURATION_S,
    MAX_JOIN_TIMEOUT_S,
    MAX_OK_LOSS,
    MAX_PARTICIPANTS,
    MAX_PROCESSES,
    MIN_DURATION_S,
    SRTP_PROFILE_NAMES,
    LoadConfig,
    LoadConfigError,
    Role,
    TokenFactory,
    WindowHook,
)
from callsctl_sfu.client.loadgen.handshake import gather_on, is_loopback_host, local_address_for
from callsctl_sfu.client.loadgen.media import (
    MediaSample,
    camera_sample,
    opus_sample,
    screen_low_sample,
    screen_sample,
    vp8_sample,
)
from callsctl_sfu.client.loadgen.monitor import ServerMonitor, proc_cpu_seconds, proc_rss_bytes
from callsctl_sfu.client.loadgen.negotiation import simulcast_offer, source_of
from callsctl_sfu.client.loadgen.orchestrate import (
    LoadTest,
    ParticipantFactory,
    join_order,
    runs_here,
)
from callsctl_sfu.client.loadgen.participant import LightParticipant, LoadJoinError
from callsctl_sfu.client.loadgen.processes import (
    LoadWorkerError,
    ProcessLoadTest,
    make_load_test,
    usable_cpus,
    worker_count,
)
from callsctl_sfu.client.loadgen.report import LoadReport, Progress, percentiles
from callsctl_sfu.client.loadgen.sender import STAMP_LEN, STAMP_MAGIC, StreamSender

__all__ = [
    "SRTP_PROFILE_NAMES",
    "CLOSE_TIMEOUT_S",
    "MAX_CALLS",
    "MAX_DURATION_S",
    "MAX_JOIN_TIMEOUT_S",
    "MAX_OK_LOSS",
    "MAX_PARTICIPANTS",
    "MAX_PROCESSES",
    "MIN_DURATION_S",
    "STAMP_LEN",
    "STAMP_MAGIC",
    "LightParticipant",
    "LoadConfig",
    "LoadConfigError",
    "LoadJoinError",
    "LoadReport",
    "LoadWorkerError",
    "LoadTest",
    "MediaSample",
    "ParticipantFactory",
    "ProcessLoadTest",
    "Progress",
    "Role",
    "ServerMonitor",
    "StreamSender",
    "TokenFactory",
    "WindowHook",
    "camera_sample",
    "gather_on",
    "is_loopback_host",
    "join_order",
    "local_address_for",
    "make_load_test",
    "opus_sample",
    "percentiles",
    "proc_cpu_seconds",
    "proc_rss_bytes",
    "runs_here",
    "screen_low_sample",
    "screen_sample",
    "simulcast_offer",
    "source_of",
    "usable_cpus",
    "vp8_sample",
    "worker_count",
]
