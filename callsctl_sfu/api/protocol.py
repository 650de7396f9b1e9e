"""Validation of client → server signaling messages (DESIGN.md, "Signaling protocol").

Kept apart from the WebSocket handler so every rule is unit-testable: each
malformed message maps to one `error` event with a code and a sentence, and
the connection and the call carry on.
"""

from __future__ import annotations

import json
from typing import Any


class ProtocolError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def event(self) -> dict[str, Any]:
        return {"type": "error", "code": self.code, "message": self.message}


# type -> {field: (python type, required)}
MESSAGES: dict[str, dict[str, tuple[type, bool]]] = {
    "join": {"call": (str, True), "name": (str, False)},
    "leave": {},
    "signal": {"data": (dict, True)},
    "mute": {},
    "unmute": {},
    "raise_hand": {},
    "lower_hand": {},
    "react": {"emoji": (str, True)},
    "reconnect": {"session_id": (str, True)},
    "ping": {},
    "screen_on": {"stream_id": (str, False)},
    "screen_off": {},
    "video_on": {},
    "video_off": {},
    "record_start": {},  # host only: start recording the call (jobs/)
    "record_stop": {},
}
BEFORE_JOIN = {"join", "reconnect", "ping"}
MAX_NAME = 64
MAX_EMOJI = 16


def parse_message(raw: str | bytes, max_size: int) -> dict[str, Any]:
    """Decode and validate one frame; raises ProtocolError naming what is wrong."""
    if len(raw) > max_size:
        raise ProtocolError("message_too_large",
                            f"message of {len(raw)} bytes exceeds the {max_size}-byte limit")
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("bad_json", "message is not valid JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError("bad_message", "message must be a JSON object with a 'type'")
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_message", "message needs a string 'type'")
    spec = MESSAGES.get(kind)
    if spec is None:
        raise ProtocolError("unknown_type", f"unknown message type {kind[:40]!r}")
    for name, (expected, required) in spec.items():
        if name not in message:
            if required:
                raise ProtocolError("bad_message", f"{kind}: missing field {name!r}")
            continue
        value = message[name]
        if not isinstance(value, expected) or isinstance(value, bool) and expected is not bool:
            raise ProtocolError("bad_message",
                                f"{kind}: field {name!r} must be {expected.__name__}")
    if kind == "join" and len(message.get("name", "")) > MAX_NAME:
        raise ProtocolError("bad_message", f"join: name longer than {MAX_NAME} characters")
    if kind == "react" and not 0 < len(message["emoji"]) <= MAX_EMOJI:
        raise ProtocolError("bad_message", f"react: emoji must be 1 to {MAX_EMOJI} characters")
    return message
