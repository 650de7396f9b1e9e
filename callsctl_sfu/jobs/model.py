"""What a job is: its id, type, call, state and outputs, and the rules on them.

Kept free of I/O so the API, the store and both runners agree on one shape
(the calls-offloader's job object: id, type, start/stop times, output data).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from callsctl_sfu.errors import CallsctlError

JOB_TYPES = ("recording", "transcription", "captions")
# queued -> running -> stopping -> done | failed.  A job in ACTIVE occupies its call.
QUEUED, RUNNING, STOPPING, DONE, FAILED = "queued", "running", "stopping", "done", "failed"
ACTIVE = (QUEUED, RUNNING, STOPPING)
FINISHED = (DONE, FAILED)
MIN_DURATION_S = 1.0
MAX_DURATION_S = 24 * 3600.0


class JobError(CallsctlError):
    """A job request or action is refused; `status` is the HTTP status the API answers."""
    code = "job_refused"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class Job:
    """One job as stored and as the API returns it."""

    id: str
    type: str
    call_id: str
    max_duration: float
    runner: str = "local"
    state: str = QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    stopped_at: float | None = None
    error: str | None = None
    # Files (relative to the job's directory), duration, participants, stop reason.
    output: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "call": self.call_id, "state": self.state,
                "runner": self.runner, "created_at": self.created_at,
                "start_at": self.started_at, "stop_at": self.stopped_at,
                "max_duration_sec": self.max_duration, "error": self.error,
                "output_data": self.output}

    def row(self) -> tuple[Any, ...]:
        return (self.id, self.type, self.call_id, self.state, self.created_at, self.started_at,
                self.stopped_at, self.max_duration, self.runner, self.error,
                json.dumps(self.output))

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Job:
        (job_id, kind, call_id, state, created, started, stopped, max_duration, runner, error,
         output) = row
        try:
            data = json.loads(output or "{}")
        except ValueError:
            data = {}
        return cls(job_id, kind, call_id, float(max_duration), runner, state, created,
                   started, stopped, error, data if isinstance(data, dict) else {})


def parse_create(body: dict[str, Any], default_duration: float) -> \
        tuple[str, str, float, dict[str, Any]]:
    """Validate POST /jobs: (type, call id, max duration, options) or JobError(400).

    A recording needs `call` (and may ask `transcribe: true|false`, overriding the
    server's transcription_enabled); a transcription needs `recording`, the id of
    a finished recording (its call is the recording's).
    """
    unknown = set(body) - {"type", "call", "call_id", "max_duration_sec", "recording",
                           "transcribe", "language", "model"}
    if unknown:
        raise JobError(400, f"unknown field(s) {', '.join(sorted(unknown))}; known: type, "
                            "call, max_duration_sec, transcribe, recording, language, model")
    kind = body.get("type", "recording")
    if kind not in JOB_TYPES:
        raise JobError(400, f"\"type\" must be one of {', '.join(JOB_TYPES)}, not {kind!r}")
    options: dict[str, Any] = {}
    if kind == "transcription":
        recording = body.get("recording")
        if not isinstance(recording, str) or not recording or len(recording) > 64:
            raise JobError(400, "a transcription needs \"recording\": the id of a finished "
                                "recording job (callsctl record list shows them)")
        options["recording"] = recording
        call_id = ""
    else:
        call_id = body.get("call", body.get("call_id"))
        if not isinstance(call_id, str) or not call_id or len(call_id) > 64 or \
                any(ord(c) < 32 for c in call_id):
            raise JobError(400, "body needs \"call\": the id of a live call (1 to 64 "
                                "characters)")
        if "transcribe" in body:
            if not isinstance(body["transcribe"], bool):
                raise JobError(400, "\"transcribe\" must be true or false")
            options["transcribe"] = body["transcribe"]
    for name in ("language", "model"):  # this job's speech model instead of the server's
        if name in body:
            value = body[name]
            if kind == "recording" or not isinstance(value, str) or len(value) > 4096 or \
                    any(ord(c) < 32 for c in value):
                raise JobError(400, f"\"{name}\" is for transcription and captions jobs: a "
                                    "string (a model directory, or a language such as en-US)")
            options[name] = value
    duration = body.get("max_duration_sec", default_duration)
    if isinstance(duration, bool) or not isinstance(duration, int | float) or \
            not MIN_DURATION_S <= duration <= MAX_DURATION_S:
        raise JobError(400, f"\"max_duration_sec\" must be a number of seconds from "
                            f"{MIN_DURATION_S:g} to {MAX_DURATION_S:g}")
    return kind, call_id, float(duration), options
