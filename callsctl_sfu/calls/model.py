"""The call model: calls, their sessions and each participant's visible state.

Plain data with no I/O, so the rules (who is host, who is forwarded to whom)
can be tested without sockets.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any


def new_session_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class ParticipantState:
    """What every other participant sees of one session."""

    muted: bool = False
    hand: bool = False
    voice: bool = False
    screen: bool = False
    video: bool = False


@dataclass
class Session:
    """One participant's presence in one call (a user may have several)."""

    session_id: str
    user: str
    name: str
    call_id: str
    joined_at: float = field(default_factory=time.time)
    state: ParticipantState = field(default_factory=ParticipantState)
    # Voice activity bookkeeping (loop time of the last loud packet).
    last_loud: float = 0.0
    # A job's receive-only participant: never host, not counted, not listed.
    recorder: bool = False
    # Which job: "recorder" or "captions" (the live captions worker).
    role: str = ""

    def public(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "user": self.user, "name": self.name,
                "muted": self.state.muted, "hand": self.state.hand, "voice": self.state.voice,
                "screen": self.state.screen, "video": self.state.video,
                "joined_at": self.joined_at}


@dataclass
class Call:
    """A call and its sessions in join order (the order decides the next host)."""

    call_id: str
    started_at: float = field(default_factory=time.time)
    sessions: dict[str, Session] = field(default_factory=dict)
    host: str | None = None

    def add(self, session: Session) -> None:
        self.sessions[session.session_id] = session
        if self.host is None and not session.recorder:
            self.host = session.session_id

    def remove(self, session_id: str) -> bool:
        """Remove a session; returns True when the host changed as a result."""
        self.sessions.pop(session_id, None)
        if self.host == session_id:
            self.host = next((s.session_id for s in self.people()), None)
            return self.host is not None
        return False

    def is_host(self, session_id: str | None) -> bool:
        """Whether `session_id` holds the host role now (host controls check this)."""
        return session_id is not None and self.host == session_id

    def others(self, session_id: str) -> list[Session]:
        """The other people in the call (a recorder is not one of them)."""
        return [s for s in self.people() if s.session_id != session_id]

    def people(self) -> list[Session]:
        return [s for s in self.sessions.values() if not s.recorder]

    @property
    def recording(self) -> bool:
        return any(s.recorder and s.role != "captions" for s in self.sessions.values())

    @property
    def captions(self) -> bool:
        return any(s.role == "captions" for s in self.sessions.values())

    def summary(self) -> dict[str, Any]:
        return {"call": self.call_id, "started_at": self.started_at, "host": self.host,
                "participants": len(self.people()), "recording": self.recording,
                "captions": self.captions}
