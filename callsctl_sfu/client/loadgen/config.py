"""What a load test simulates and the limits every caller (CLI, bench, tests) is held to.

`LoadConfig.validate()` turns an out-of-range setting into a `LoadConfigError`
whose message names the setting and its bounds; every loop of a run is bounded
by these numbers. `Role` is what one participant publishes.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from callsctl_sfu.errors import CallsctlError
from callsctl_sfu.rtc.sealing import PROFILES

# -- limits: admission control for every caller (CLI, bench, tests) ----------------------------

MAX_PARTICIPANTS = 1000  # one process cannot hold more: ~3 fds and ~1 MB each, one core
# With probes set (a bench's sink meter drops the other receivers' media before their
# sockets), the generator reads only the probes' packets, so it can hold more of them.
MAX_PROBED_PARTICIPANTS = 3000
MAX_CALLS = 200
MAX_DURATION_S = 2 * 3600.0
MIN_DURATION_S = 1.0
MAX_JOIN_TIMEOUT_S = 120.0
CLOSE_TIMEOUT_S = 15.0
MAX_PROCESSES = 64
MAX_OK_LOSS = 0.05  # above this a run is reported as failed (exit code 1)


# The SRTP profiles aiortc offers (RFC 5764 §4.1.2, RFC 7714 §14.2), for --srtp-profile:
# the server's list of them (rtc/sealing.py), so the two cannot drift apart.
SRTP_PROFILE_NAMES = PROFILES


class LoadConfigError(CallsctlError, ValueError):
    """A load-test setting is out of bounds; the message names it and the limit."""

    code = "bad_load_setting"


TokenFactory = Callable[[str, str], str]
WindowHook = Callable[[str], Awaitable[None]]


@dataclass
class LoadConfig:
    """What to simulate. Validated by `validate()`; every loop it drives is bounded by it."""

    ws_url: str
    token_for: TokenFactory
    calls: int = 1
    users_per_call: int = 2
    unmuted: int = 1
    screen_sharing: bool = False
    # The screen share as two simulcast layers (rids l and h); needs a server that accepts them.
    simulcast: bool = False
    video: bool = False
    duration: float = 60.0
    join_duration: float = 30.0
    call_prefix: str = "loadtest"
    ssl: Any = None
    local_address: str | None = None
    delay_sample_every: int = 5
    join_timeout: float = 30.0
    max_concurrent_joins: int = 32
    settle_timeout: float = 10.0
    # Benches: measure exactly this many seconds once steady (duration stays the hard cap).
    window: float | None = None
    # Worker processes that run the participants (1: this process; 0: one per usable CPU).
    processes: int = 1
    # Which share of the participants this process runs (set for each worker: index, count).
    share: tuple[int, int] = (0, 1)
    # Benches with a sink meter outside the generator (bench/sink_meter.py): only these
    # receivers of each call ("probes", spread over the join order) are measured for
    # loss, delay and settling; the others' media may be dropped before their sockets.
    # Probes gather on probe_address so a packet filter can tell them apart. 0: every
    # receiver is measured (the default, and what `callsctl loadtest` does).
    probes_per_call: int = 0
    probe_address: str | None = None
    # Each participant also opens the `calls-dc` data channel (SCTP over DTLS) as the web
    # client and Mattermost's client do, and sends one "ping" on it once open (the server
    # answers "pong"; real clients ping every second, which adds CPU but no state). Off by
    # default: the recorded figures (bench/RESULTS.md) were measured without it.
    data_channel: bool = False
    # The one SRTP profile each participant accepts (RFC 5764 name), or None: aiortc's
    # list, AES-256-GCM first. Participants are the DTLS server of their sessions, so
    # this is what they pick, as Chromium picks SRTP_AES128_CM_SHA1_80 from its own list.
    srtp_profile: str | None = None

    @property
    def participants(self) -> int:
        return self.calls * self.users_per_call

    def is_probe(self, user_index: int) -> bool:
        """Whether participant `user_index` (0-based) of a call is measured (`probes_per_call`)."""
        return not self.probes_per_call or user_index in probe_indices(
            self.users_per_call, self.probes_per_call)

    def in_share(self, call_number: int, user_index: int) -> bool:
        """Whether this process runs participant `user_index` (0-based) of call `call_number`.

        With at least as many calls as shares, whole calls go to one process
        (call numbers round robin); otherwise every call's participants are dealt
        out by index, so each process holds some of each call (speakers too).
        """
        index, count = self.share
        if count == 1:
            return True
        if self.calls >= count:
            return (call_number - 1) % count == index
        return user_index % count == index

    def validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise LoadConfigError(message)

        need(1 <= self.calls <= MAX_CALLS, f"--calls must be 1..{MAX_CALLS}, not {self.calls}")
        most = MAX_PROBED_PARTICIPANTS if self.probes_per_call else MAX_PARTICIPANTS
        need(1 <= self.users_per_call <= most,
             f"--users-per-call must be 1..{most}, not {self.users_per_call}")
        need(self.participants <= most,
             f"{self.calls} calls x {self.users_per_call} users = {self.participants} "
             f"participants; one load generator holds at most {most}")
        need(0 <= self.unmuted <= self.users_per_call,
             f"--unmuted must be 0..--users-per-call ({self.users_per_call}), not {self.unmuted}")
        need(MIN_DURATION_S <= self.duration <= MAX_DURATION_S,
             f"--duration must be {MIN_DURATION_S:g} s..{MAX_DURATION_S / 3600:g} h, "
             f"not {self.duration:g} s")
        need(0 <= self.join_duration < self.duration,
             f"--join-duration ({self.join_duration:g} s) must be shorter than --duration "
             f"({self.duration:g} s)")
        need(1 <= self.delay_sample_every <= 10_000, "delay sampling must be every 1..10000")
        need(0 < self.join_timeout <= MAX_JOIN_TIMEOUT_S,
             f"join timeout must be 0..{MAX_JOIN_TIMEOUT_S:g} s")
        need(1 <= self.max_concurrent_joins <= 256, "concurrent joins must be 1..256")
        need(self.window is None or 0.5 <= self.window <= MAX_DURATION_S,
             "the measuring window must be 0.5 s..2 h")
        need(isinstance(self.processes, int) and 0 <= self.processes <= MAX_PROCESSES,
             f"--processes must be 0..{MAX_PROCESSES} (0: one per usable CPU), "
             f"not {self.processes}")
        need(0 <= self.share[0] < self.share[1], "a worker's share must be 0..count-1")
        need(0 <= self.probes_per_call <= self.users_per_call,
             f"probes per call must be 0..{self.users_per_call}, not {self.probes_per_call}")
        need(not self.probes_per_call or bool(self.probe_address),
             "probes per call need a probe address to gather on")
        need(self.srtp_profile is None or self.srtp_profile in SRTP_PROFILE_NAMES,
             f"--srtp-profile must be one of {', '.join(SRTP_PROFILE_NAMES)}, "
             f"not {self.srtp_profile!r}")
        need(bool(re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", self.call_prefix)),
             "the call prefix must be 1-40 letters, digits, '.', '_' or '-'")


def probe_indices(users: int, probes: int) -> frozenset[int]:
    """`probes` user indices of a call of `users`, evenly spread from the first to the last.

    Spread, not the first few: a fan-out sends copies in its receivers' order,
    so the last joiner of a big call waits longest and must be among them.
    """
    if probes >= users:
        return frozenset(range(users))
    if probes == 1:
        return frozenset({users - 1})
    return frozenset(round(k * (users - 1) / (probes - 1)) for k in range(probes))


@dataclass(frozen=True)
class Role:
    audio: bool = False
    camera: bool = False
    screen: bool = False
