"""Validation of client → server signaling messages (docs/signaling.md).

Kept apart from the WebSocket handler so every rule is unit-testable: each
malformed message maps to one `error` event with a code and a sentence, and
the connection and the call carry on.
"""

from __future__ import annotations

import json
import re
import unicodedata
from itertools import accumulate
from typing import Any

from callsctl_sfu import events
from callsctl_sfu.errors import CallsctlError
from callsctl_sfu.events import CLIENT_MESSAGES


class ProtocolError(CallsctlError, ValueError):
    code = "bad_message"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def event(self) -> dict[str, Any]:
        return events.Error(code=self.code, message=self.message).wire()


# type -> {field: (python type, required)}: declared with the server's events, so one
# module lists the whole protocol; the name MESSAGES stays for this module's users.
MESSAGES = CLIENT_MESSAGES
# host_control actions; those in HOST_TARGETED need the target's session_id.
HOST_ACTIONS = ("mute", "mute_others", "stop_screen", "lower_hand", "remove", "make_host",
                "end")
HOST_TARGETED = {"mute", "stop_screen", "lower_hand", "remove", "make_host"}
BEFORE_JOIN = {"join", "reconnect", "ping"}
MAX_NAME = 64
MAX_EMOJI = 16
# Deepest nesting of arrays/objects accepted. The protocol needs 3 (a trickled
# candidate); json.loads recurses once per level and raises RecursionError near
# 1000, so depth is measured on the raw text before parsing.
MAX_DEPTH = 32

# A JSON string, or an unterminated one up to the end (so the scan stays linear),
# and runs of anything that is not a bracket.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"?', re.S)
_NOT_BRACKET = re.compile(r'[^\[\]{}]+')
# \uD800-\uDFFF escapes: the only way a lone surrogate gets into a decoded frame
# (aiohttp decodes the frame's UTF-8 strictly).
_SURROGATE_ESCAPE = re.compile(r'\\u[dD][89abcdefABCDEF]')


def nesting_depth(raw: str) -> int:
    """How deeply arrays and objects nest in a JSON text, without parsing it.

    Brackets inside strings do not count. Linear in the length of `raw`.
    """
    skeleton = _NOT_BRACKET.sub("", _STRING.sub("", raw))
    return max(accumulate(1 if c in "[{" else -1 for c in skeleton), default=0)


def _bad_text(value: str) -> str | None:
    """Why a string cannot be stored (SQLite wants UTF-8) or logged safely, or None."""
    for char in value:
        category = unicodedata.category(char)
        if category == "Cs":
            return "contains a lone surrogate (invalid Unicode)"
        if category == "Cc":
            return "contains a control character"
    return None


def _check_strings(value: Any, where: str) -> None:
    """Refuse lone surrogates anywhere in a decoded message (keys included).

    Recursion is bounded: the message passed the MAX_DEPTH check.
    """
    if isinstance(value, str):
        if _SURROGATE_CHARS.search(value):
            raise ProtocolError("bad_message", f"{where}: text contains a lone surrogate "
                                               "(invalid Unicode); send valid UTF-8 text")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key, where)
            _check_strings(item, where)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item, where)


_SURROGATE_CHARS = re.compile("[\ud800-\udfff]")


def parse_message(raw: str | bytes, max_size: int) -> dict[str, Any]:
    """Decode and validate one frame; raises ProtocolError naming what is wrong."""
    if len(raw) > max_size:
        raise ProtocolError("message_too_large",
                            f"message of {len(raw)} bytes exceeds the {max_size}-byte limit")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("bad_json", "message is not valid UTF-8 JSON") from None
    depth = nesting_depth(raw)
    if depth > MAX_DEPTH:
        raise ProtocolError("too_deep", f"message nests {depth} levels of arrays/objects; "
                                        f"at most {MAX_DEPTH} are accepted")
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):
        raise ProtocolError("bad_json", "message is not valid JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError("bad_message", "message must be a JSON object with a 'type'")
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_message", "message needs a string 'type'")
    spec = MESSAGES.get(kind)
    if spec is None:
        raise ProtocolError("unknown_type", f"unknown message type {kind[:40]!r}")
    if _SURROGATE_ESCAPE.search(raw):
        _check_strings(message, kind)
    for name, (expected, required) in spec.items():
        if name not in message:
            if required:
                raise ProtocolError("bad_message", f"{kind}: missing field {name!r}")
            continue
        value = message[name]
        if not isinstance(value, expected) or isinstance(value, bool) and expected is not bool:
            raise ProtocolError("bad_message",
                                f"{kind}: field {name!r} must be {expected.__name__}")
        if expected is str:
            problem = _bad_text(value)
            if problem:
                raise ProtocolError("bad_message", f"{kind}: field {name!r} {problem}")
    if kind == "join" and len(message.get("name", "")) > MAX_NAME:
        raise ProtocolError("bad_message", f"join: name longer than {MAX_NAME} characters")
    if kind == "host_control":
        action = message["action"]
        if action not in HOST_ACTIONS:
            raise ProtocolError("bad_message", f"host_control: unknown action {action[:40]!r}; "
                                               f"one of {', '.join(HOST_ACTIONS)}")
        if action in HOST_TARGETED and not message.get("session_id"):
            raise ProtocolError("bad_message", f"host_control: {action} needs 'session_id'")
    if kind == "invite" and not 0 < len(message["name"].strip()) <= MAX_NAME:
        raise ProtocolError("bad_message", f"invite: name must be 1 to {MAX_NAME} characters")
    if kind == "react" and not 0 < len(message["emoji"]) <= MAX_EMOJI:
        raise ProtocolError("bad_message", f"react: emoji must be 1 to {MAX_EMOJI} characters")
    return message
