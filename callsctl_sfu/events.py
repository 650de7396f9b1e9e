"""The signaling protocol in one place: every server → client event, and the client's messages.

Every event the server sends over `/ws` is a class here whose dataclass fields
are the event's fields, declared once: their Python type, whether they are
always present, and a line for docs/signaling.md (its events table is
generated from `EVENTS`, see tools/gen_signaling.py). A sending site builds
the class and sends `.wire()`, the plain dict that is JSON-encoded:

    await send(events.UserJoined(session_id=sid, user=user, name=name).wire())

`wire()` puts "type" first, then the fields in declaration order, and leaves
out an optional field whose value is None; a required field is always sent,
None included (JSON null). So the order of the fields below is the order on
the wire, and the bytes stay what they were when the sites wrote dict literals.

`EVENTS` maps each type name to its `EventSpec` (fields, when it is sent);
tests/test_events_contract.py holds the web client (callsctl_sfu/web/*.js) to
it, in both directions. `NOT_IN_BROWSER` names the events the web client
deliberately ignores, with the reason.

The client → server messages are `CLIENT_MESSAGES` (type → field → (type,
required)); api/protocol.py validates frames against it.

Not to be confused with api/events.py, the admin SSE stream: it republishes
these events (plus server-wide ones such as `stats` and `job`) to tools.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Literal, TypeVar

# --- client -> server ------------------------------------------------------------------------

# type -> {field: (python type, required)}; the rules beyond types are in api/protocol.py.
CLIENT_MESSAGES: dict[str, dict[str, tuple[type, bool]]] = {
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
    # The call's host moderating from its own page (calls/host.py checks it is the host).
    "host_control": {"action": (str, True), "session_id": (str, False)},
    # The host mints a join link for someone else (answered with `invite_created`).
    "invite": {"name": (str, True)},
    "record_start": {},  # host only: start recording the call (jobs/)
    "record_stop": {},
    "captions_start": {},  # host only: start live captions (jobs/captions.py)
    "captions_stop": {},
    # Only the captions worker: validated further in jobs/captions.py.
    "caption": {"session_id": (str, True), "text": (str, True)},
    "captions_stats": {"window_dropped": (int, False), "buf_full": (int, False)},
}

# --- server -> client: the registry ----------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One field of an event: name, JSON type, whether it is always present, and its doc."""

    name: str
    json_type: str  # "string", "boolean", "integer", "number", "array", "object"
    nullable: bool  # a required field that may be null
    required: bool
    doc: str


@dataclass(frozen=True)
class EventSpec:
    """One server -> client event type: its class, fields and when it is sent."""

    name: str
    cls: type[ServerEvent]
    fields: tuple[Field, ...]
    when: str
    row: tuple[str, ...]  # the types documented together in one table row

    @property
    def field_names(self) -> set[str]:
        return {f.name for f in self.fields}

    @property
    def required(self) -> set[str]:
        return {f.name for f in self.fields if f.required}


EVENTS: dict[str, EventSpec] = {}
E = TypeVar("E", bound="ServerEvent")

# Events the web client deliberately does not handle: type -> why. Empty today:
# the browser handles every event (tests/test_events_contract.py keeps it so).
NOT_IN_BROWSER: dict[str, str] = {}


class ServerEvent:
    """Base of every server -> client event; `wire()` is what goes over /ws."""

    __slots__ = ()
    type: str
    # (field name, always sent) in declaration order, set by @_event.
    _WIRE: ClassVar[tuple[tuple[str, bool], ...]] = ()

    def wire(self) -> dict[str, Any]:
        """The event as the JSON object sent: "type" first, optional None fields left out."""
        out: dict[str, Any] = {"type": self.type}
        for name, always in self._WIRE:
            value = getattr(self, name)
            if always or value is not None:
                out[name] = value
        return out


def req(doc: str = "") -> Any:
    """A field every event of the type carries."""
    return field(metadata={"doc": doc})


def opt(doc: str = "") -> Any:
    """A field sent only when it has a value (None: left out of the JSON)."""
    return field(default=None, metadata={"doc": doc})


_JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number",
               list: "array", dict: "object"}


def _json_type(hint: Any) -> tuple[str, bool]:
    """(JSON type name, may be null) of a field's annotation."""
    nullable = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(hint))
        hint = args[0] if len(args) == 1 else hint
    base = typing.get_origin(hint) or hint
    if base not in _JSON_TYPES:
        raise TypeError(f"event field annotation {hint!r} has no JSON type")
    return _JSON_TYPES[base], nullable


def _event(when: dict[str | tuple[str, ...], str]) -> Callable[[type[E]], type[E]]:
    """Register the event dataclass below it under its type name(s).

    `when` maps a type name, or a tuple of names documented in one row, to
    when the server sends it. A class with one type name gets it as a class
    attribute; a class for several declares `type: Literal[...]` as a field.
    Each class is a plain `@dataclass(slots=True, kw_only=True)`, written out
    so that type checkers see its constructor.
    """

    def register(cls: type[E]) -> type[E]:
        if not is_dataclass(cls):
            raise TypeError(f"{cls.__name__}: put @_event above @dataclass")
        hints = typing.get_type_hints(cls)
        specs: list[Field] = []
        for f in fields(cls):
            if f.name == "type":
                continue
            json_type, nullable = _json_type(hints[f.name])
            required = f.default is MISSING
            specs.append(Field(f.name, json_type, nullable and required, required,
                               f.metadata.get("doc", "")))
        cls._WIRE = tuple((s.name, s.required) for s in specs)
        names: list[str] = []
        for key, text in when.items():
            row = (key,) if isinstance(key, str) else key
            for name in row:
                if name in EVENTS:
                    raise ValueError(f"event type {name!r} declared twice")
                EVENTS[name] = EventSpec(name, cls, tuple(specs), text, row)
                names.append(name)
        if "type" not in cls.__annotations__:
            if len(names) != 1:
                raise TypeError(f"{cls.__name__}: several types need a `type` field")
            cls.type = names[0]  # a class attribute, not a field
        elif set(typing.get_args(hints["type"])) != set(names):
            raise TypeError(f"{cls.__name__}: its type Literal and its registered names differ")
        return cls

    return register


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def problems(event: dict[str, Any]) -> list[str]:
    """How a received server event breaks the registry (empty: it conforms).

    For tests and clients that hold a server to this protocol: an unknown
    type, a missing required field, a field the type does not have, or a
    value of the wrong JSON type.
    """
    kind = event.get("type")
    spec = EVENTS.get(kind) if isinstance(kind, str) else None
    if spec is None:
        return [f"unknown event type {kind!r}"]
    found = [f"{kind}: missing field {name!r}" for name in sorted(spec.required - set(event))]
    found += [f"{kind}: field {name!r} is not part of the event" for name in event
              if name != "type" and name not in spec.field_names]
    for f in spec.fields:
        if f.name in event and not (event[f.name] is None and f.nullable) \
                and not _CHECKS[f.json_type](event[f.name]):
            found.append(f"{kind}: field {f.name!r} must be {f.json_type}, "
                         f"not {type(event[f.name]).__name__}")
    return found


# --- server -> client: the events ------------------------------------------------------------
# Field order = order on the wire. Keep it when adding fields (append optional ones).

PARTICIPANT_FIELDS = ("session_id", "user", "name", "muted", "hand", "voice", "screen", "video",
                      "joined_at")


@_event({"joined": "after `join`, and after `reconnect` with `reconnected: true`"})
@dataclass(slots=True, kw_only=True)
class Joined(ServerEvent):
    session_id: str = req("this connection's session")
    call: str = req()
    host: str | None = req("the host's session id")
    reconnected: bool | None = opt("`true`, only after `reconnect`")
    participants: list[dict[str, Any]] = req(
        "the others; each `" + ", ".join(PARTICIPANT_FIELDS) + "`")
    recording: bool = req()
    captions: bool = req("live captions are on")
    captions_available: bool | None = opt(
        "whether the server offers live captions at all, for the host's button; not after "
        "`reconnect`")
    ice_servers: list[dict[str, Any]] = req("for the client's RTCPeerConnection")


@_event({"signal": "the server's offers and answers (its candidates are in the SDP)"})
@dataclass(slots=True, kw_only=True)
class Signal(ServerEvent):
    data: dict[str, Any] = req("`{type: \"offer\"|\"answer\", sdp}`")


@_event({"call_start": "to the first participant of a new call"})
@dataclass(slots=True, kw_only=True)
class CallStart(ServerEvent):
    call: str = req()
    started_at: float = req("Unix time")


@_event({"call_end": "the call is over; every session is removed"})
@dataclass(slots=True, kw_only=True)
class CallEnd(ServerEvent):
    call: str = req()
    reason: str = req()
    by: str | None = opt("`host` or `admin`, when someone ended it")


@_event({"user_joined": "another participant joined"})
@dataclass(slots=True, kw_only=True)
class UserJoined(ServerEvent):
    session_id: str = req()
    user: str = req()
    name: str = req()


@_event({"user_left": "a participant left or was removed"})
@dataclass(slots=True, kw_only=True)
class UserLeft(ServerEvent):
    session_id: str = req()
    reason: str = req()


UserStateType = Literal["user_muted", "user_unmuted", "user_voice_on", "user_voice_off",
                        "user_raise_hand", "user_lower_hand", "user_video_on",
                        "user_video_off", "user_screen_off"]


@_event({
    ("user_muted", "user_unmuted"): "to everyone, the participant included",
    ("user_voice_on", "user_voice_off"):
        "voice activity, from the RFC 6464 audio level of the forwarded audio",
    ("user_raise_hand", "user_lower_hand"): "to everyone, the participant included",
    ("user_video_on", "user_video_off"): "camera on or off",
    "user_screen_off": "a screen share ended (the answer to `screen_off` too)",
})
@dataclass(slots=True, kw_only=True)
class UserState(ServerEvent):
    type: UserStateType = req()
    session_id: str = req()


@_event({"user_screen_on": "a screen share started (the answer to `screen_on` too)"})
@dataclass(slots=True, kw_only=True)
class UserScreenOn(ServerEvent):
    session_id: str = req()
    stream_id: str | None = opt("the media stream carrying the screen, as in `screen_on`")


@_event({"user_reacted": "a reaction everyone sees for a moment"})
@dataclass(slots=True, kw_only=True)
class UserReacted(ServerEvent):
    session_id: str = req()
    emoji: str = req()


@_event({"call_host_changed": "the host left, or the role was handed over"})
@dataclass(slots=True, kw_only=True)
class CallHostChanged(ServerEvent):
    host: str | None = req("the new host's session id")


@_event({"call_recording":
         "a recorder joined or left the call (it is never listed as a participant)"})
@dataclass(slots=True, kw_only=True)
class CallRecording(ServerEvent):
    recording: bool = req()
    started_at: float | None = opt("when it started, Unix time")
    reason: str | None = opt("why it stopped")


@_event({"call_captions": "live captions turned on or off (the captions worker is never "
                          "listed as a participant)"})
@dataclass(slots=True, kw_only=True)
class CallCaptions(ServerEvent):
    captions: bool = req()
    started_at: float | None = opt("when they started, Unix time")
    reason: str | None = opt("why they stopped")


@_event({"caption": "a transcribed utterance of that speaker; only the call's captions worker "
                    "can send one (as `caption`), the server adds the name"})
@dataclass(slots=True, kw_only=True)
class Caption(ServerEvent):
    session_id: str = req("the speaker")
    name: str = req("the speaker's name")
    text: str = req()
    start: float = req("Unix time of the first word")
    end: float = req("Unix time of the last word")


HostActionType = Literal["host_mute", "host_lower_hand", "host_screen_off"]


@_event({
    "host_mute": "to the participant the host (or an admin) muted",
    "host_lower_hand": "to the participant whose hand was lowered",
    "host_screen_off": "to the participant whose screen share was stopped",
})
@dataclass(slots=True, kw_only=True)
class HostAction(ServerEvent):
    type: HostActionType = req()
    session_id: str = req()
    call: str = req()
    by: str = req("`host` or `admin`")


@_event({"host_removed": "to the participant removed; its session is gone"})
@dataclass(slots=True, kw_only=True)
class HostRemoved(ServerEvent):
    session_id: str = req()
    call: str = req()
    by: str = req("`host` or `admin`")
    reason: str = req()


@_event({"host_control_done": "to the host, after its `host_control` took effect"})
@dataclass(slots=True, kw_only=True)
class HostControlDone(ServerEvent):
    action: str = req()
    session_id: str | None = opt("the target")
    changed: bool | None = opt("with `session_id`")
    muted: list[str] | None = opt("`mute_others`: the sessions muted")
    removed: int | None = opt("`end`: how many sessions were removed")


@_event({"invite_created": "to the host, after `invite`"})
@dataclass(slots=True, kw_only=True)
class InviteCreated(ServerEvent):
    call: str = req()
    user: str = req("a new user id derived from the name")
    name: str = req()
    token: str = req()
    expires_at: int = req("Unix time")
    path: str = req("`/?token=…&name=…`, the link without its origin")


@_event({"error": "see the codes below"})
@dataclass(slots=True, kw_only=True)
class Error(ServerEvent):
    code: str = req()
    message: str = req("what is wrong, in a sentence")


@_event({"pong": "after `ping`"})
@dataclass(slots=True, kw_only=True)
class Pong(ServerEvent):
    pass
