"""A scripted data source for `callsctl top`: the same figures every run, for snapshots."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from textual.pilot import Pilot

from callsctl.top.app import TopApp
from callsctl.top.client import AdminUnreachable
from callsctl.top.model import Action, Overview

T0 = 1_800_000_000.0
STEPS = (240, 250, 262, 255, 300, 410, 380, 260, 250, 255, 248, 251, 600, 640, 420, 300,
         260, 250, 255, 252, 258, 262, 250, 247)


def _stub_session(sid: str, user: str, name: str, **extra: Any) -> dict[str, Any]:
    session = {"session_id": sid, "user": user, "name": name, "joined_at": T0 - 600,
               "muted": False, "hand": False, "voice": False, "screen": False, "video": False,
               "ice_state": "completed",
               "candidate_pair": {"local": "203.0.113.5:8443", "remote": "198.51.100.7:53211",
                                  "type": "srflx", "protocol": "udp"},
               "rtt_ms": 38.0, "loss": 0.0, "jitter_ms": 4.2, "in_bps": 41000.0,
               "out_bps": 82000.0, "in_pps": 50.0, "out_pps": 100.0,
               "tracks": [{"kind": "audio", "label": "audio", "ssrc": 1111, "direction": "in",
                           "packets": 30000, "nacks": 0, "plis": None}]}
    session.update(extra)
    return session


class StubSource:
    """Fixed calls and sessions whose counters grow by a fixed pattern per poll."""

    base_url = "http://calls.example:8045"

    def __init__(self) -> None:
        self.polls = 0
        self.down = False
        self.engine: str | None = None  # /version's forwarding_engine, when set
        self.actions: list[Action] = []
        standup = [
            _stub_session("a1", "alice", "Alice", voice=True),
            _stub_session("b2", "bob", "Bob", muted=True, hand=True, rtt_ms=180.0, loss=0.03),
            _stub_session("c3", "carol", "Carol", ice_state="checking", rtt_ms=420.0,
                          loss=0.07, jitter_ms=55.0, in_bps=None, out_bps=None,
                          candidate_pair={"local": "203.0.113.5:8443",
                                          "remote": "192.0.2.9:3478", "type": "relay",
                                          "protocol": "tcp"}),
        ]
        standup[0]["tracks"].append({"kind": "audio", "label": "audio", "ssrc": 2222,
                                     "direction": "out", "packets": 29876, "nacks": 3,
                                     "plis": 0, "from": "b2"})
        review = [_stub_session("d4", "dave", "Dave", screen=True, video=True),
                  _stub_session("e5", "erin", "Erin")]
        self.details = {
            "standup": {"id": "standup", "started_at": T0 - 1500, "host": "a1",
                        "screen_sharer": None, "participants": 3, "in_bps": 82000.0,
                        "out_bps": 164000.0, "sessions": standup},
            "design-review": {"id": "design-review", "started_at": T0 - 4000, "host": "d4",
                              "screen_sharer": "d4", "participants": 2,
                              "in_bps": 1900000.0, "out_bps": 1900000.0, "sessions": review},
            "support": {"id": "support", "started_at": T0 - 30, "host": "f6",
                        "screen_sharer": None, "participants": 1, "in_bps": 0.0,
                        "out_bps": 0.0, "sessions": [_stub_session("f6", "frank", "Frank")]},
        }

    def clock(self) -> float:
        return T0 + self.polls

    async def overview(self) -> Overview:
        if self.down:
            raise AdminUnreachable(f"cannot reach {self.base_url}: connection refused")
        self.polls += 1
        total = sum(STEPS[i % len(STEPS)] for i in range(self.polls))
        calls = []
        for call in self.details.values():
            summary = {k: v for k, v in call.items() if k not in ("sessions", "screen_sharer")}
            summary["host_user"] = next(s["user"] for s in call["sessions"]
                                        if s["session_id"] == call["host"])
            summary["screen_sharer"] = call["screen_sharer"]
            calls.append(summary)
        return Overview(
            calls=calls,
            system={"cpu_load": 0.31 + (self.polls % 5) / 100, "memory_bytes": 3 * 2**30,
                    "memory_total": 16 * 2**30, "sessions": 6, "calls": 3,
                    "uptime_s": 86400 + 3723 + self.polls,
                    # 0.12 s of CPU per 1 s poll: the server process runs at 12 %.
                    "process_cpu_seconds": 500 + 0.12 * self.polls,
                    "process_rss_bytes": 180 * 2**20,
                    "udp_rcvbuf_errors": 4012 + (3 if self.polls > 20 else 0),
                    "udp_rcvbuf_errors_since_start": 3 if self.polls > 20 else 0},
            version={"version": "1.2.3", **({"forwarding_engine": {"engine": self.engine}}
                                             if self.engine else {})},
            stats={"forwarding": {"rtp_in": total, "rtp_forwarded": total * 2},
                   "media_socket": {"bytes_in": total * 160, "bytes_out": total * 320}},
            rcvbuf_errors=None)

    async def call_detail(self, call_id: str) -> dict[str, Any] | None:
        return self.details.get(call_id)

    async def act(self, action: Action) -> dict[str, Any]:
        self.actions.append(action)
        return {"ok": True, "changed": True}

    async def aclose(self) -> None:
        return None


def stub_app(read_only: bool = False) -> tuple[TopApp, StubSource]:
    source = StubSource()
    return TopApp(source, read_only=read_only, clock=source.clock, live=False), source


async def prime(pilot: Pilot[None], polls: int = 24) -> None:
    app: TopApp = pilot.app  # type: ignore[assignment]
    for _ in range(polls):
        await app.poll_once()
    await pilot.pause()


def before(*steps: str | int) -> Callable[[Pilot[None]], Awaitable[None]]:
    """Prime with data, then press keys; an int polls that many more times."""

    async def run(pilot: Pilot[None]) -> None:
        await prime(pilot)
        for step in steps:
            if isinstance(step, int):
                for _ in range(step):
                    await pilot.app.poll_once()  # type: ignore[attr-defined]
            else:
                await pilot.press(step)
            await pilot.pause()

    return run
