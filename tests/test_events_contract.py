"""The server's events (callsctl_sfu/events.py) against the web client and the docs.

A renamed or dropped event breaks the meeting page silently: the page logs
"unknown message type" and the user sees a stale roster. So the registry of
server -> client events is held, in both directions, to what the web client's
JavaScript handles (every `case "…":` of its switches on the message type),
to the fields the page reads inside each case (`msg.session_id`, also one call
deep: `onJoined(msg)` reads `msg.ice_servers`), and to docs/signaling.md.
Then a real server is driven through most events and everything the scripted
participants receive is checked against the registry.

The JavaScript is read with a small scanner (comments, strings, template text
and regex literals blanked out, so braces and quotes inside them do not count)
plus regular expressions, not a full parser: enough for the plain switch the
page uses; the sanity checks below fail loudly if that stops being true.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from callsctl_sfu import events
from callsctl_sfu.client.participant import Participant
from tools import gen_signaling

REPO = Path(__file__).resolve().parent.parent
WEB = REPO / "callsctl_sfu" / "web"
DOCS = REPO / "docs" / "signaling.md"

# --- reading the web client ------------------------------------------------------------------

_REGEX_BEFORE = set("(,=:[!&|?{};+-*%<>~^") | {""}


def mask(js: str) -> str:
    """`js` with comments, string/template text and regex literals replaced by spaces.

    Same length, so an offset in the result is the same place in `js`; quotes
    are kept, code inside `${…}` is kept. Newlines are kept too.
    """
    out = list(js)
    n = len(js)

    def blank(start: int, end: int) -> None:
        for k in range(start, min(end, n)):
            if out[k] != "\n":
                out[k] = " "

    def code(i: int, stop_at_brace: bool) -> int:
        """Scan code from i; return the index after the closing `}` if stop_at_brace."""
        depth = 0
        last = ""  # last significant character, to tell a regex from a division
        while i < n:
            c = js[i]
            nxt = js[i + 1] if i + 1 < n else ""
            if c == "/" and nxt == "/":
                end = js.find("\n", i)
                end = n if end < 0 else end
                blank(i, end)
                i = end
                continue
            if c == "/" and nxt == "*":
                end = js.find("*/", i + 2)
                end = n if end < 0 else end + 2
                blank(i, end)
                i = end
                continue
            if c in "\"'":
                j = i + 1
                while j < n and js[j] != c and js[j] != "\n":
                    j += 2 if js[j] == "\\" else 1
                blank(i + 1, j)
                i, last = j + 1, c
                continue
            if c == "`":
                i, last = template(i + 1), "`"
                continue
            if c == "/" and last in _REGEX_BEFORE or c == "/" and _ends_keyword(js, i):
                j, in_class = i + 1, False
                while j < n and js[j] != "\n" and (js[j] != "/" or in_class):
                    if js[j] == "\\":
                        j += 1
                    elif js[j] == "[":
                        in_class = True
                    elif js[j] == "]":
                        in_class = False
                    j += 1
                blank(i + 1, j)
                i, last = j + 1, "/"
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                if depth == 0 and stop_at_brace:
                    return i + 1
                depth -= 1
            if not c.isspace():
                last = c
            i += 1
        return i

    def template(i: int) -> int:
        """Scan template text from i; return the index after the closing backtick."""
        while i < n:
            c = js[i]
            if c == "\\":
                blank(i, i + 2)
                i += 2
            elif c == "`":
                return i + 1
            elif c == "$" and i + 1 < n and js[i + 1] == "{":
                i = code(i + 2, True)
            else:
                blank(i, i + 1)
                i += 1
        return i

    code(0, False)
    return "".join(out)


def _ends_keyword(js: str, i: int) -> bool:
    return re.search(r"\b(return|typeof|case|of|in)\s*$", js[max(0, i - 12):i]) is not None


def _block(masked: str, open_brace: int) -> int:
    """Index of the `}` closing the `{` at open_brace (in masked text)."""
    depth = 0
    for k in range(open_brace, len(masked)):
        if masked[k] == "{":
            depth += 1
        elif masked[k] == "}":
            depth -= 1
            if depth == 0:
                return k
    raise AssertionError("unbalanced braces in the web client's JavaScript")


_SWITCH = re.compile(r"\bswitch\s*\(\s*(?:(\w+)\s*\.\s*type|(\w+))\s*\)\s*\{")
_CASE = re.compile(r"\bcase\s+([\"'])([^\"'\n]*)\1\s*:")  # on masked text: label blanked
_CALL_WITH = r"\b(\w+)\s*\(\s*{var}\s*[,)]"


def handled(js: str) -> dict[str, set[str]]:
    """Event type -> fields of the message read where the web client handles it.

    Only switches on a message's type count: `switch (msg.type)`, or
    `switch (type)` after `const type = msg && msg.type`.
    """
    masked = mask(js)
    functions = {m.group(1): m for m in re.finditer(
        r"\bfunction\s+(\w+)\s*\(\s*(\w+)[^)]*\)\s*\{", masked)}
    found: dict[str, set[str]] = {}
    for switch in _SWITCH.finditer(masked):
        var = switch.group(1)
        if var is None:
            source = re.search(rf"\b(?:const|let|var)\s+{switch.group(2)}\s*=\s*"
                               r"(?:\w+\s*&&\s*)?(\w+)\s*\.\s*type\b", masked[:switch.start()])
            if source is None:
                continue  # a switch on something else
            var = source.group(1)
        start = switch.end()
        body = masked[start:_block(masked, switch.end() - 1)]
        depth_at = _depths(body)
        labels = [m for m in _CASE.finditer(body) if depth_at[m.start()] == 0]
        default = [m.start() for m in re.finditer(r"\bdefault\s*:", body)
                   if depth_at[m.start()] == 0]
        group: list[str] = []
        for index, label in enumerate(labels):
            name = js[start + label.start(2):start + label.end(2)]
            group.append(name)
            end = labels[index + 1].start() if index + 1 < len(labels) else len(body)
            end = min([end] + [d for d in default if d > label.end()])
            segment = body[label.end():end]
            if not segment.strip():
                continue  # falls through to the next label: same code
            fields = _reads(segment, var, masked, functions)
            for name in group:
                found.setdefault(name, set()).update(fields)
            group = []
        for name in group:
            found.setdefault(name, set())
    return found


def _depths(body: str) -> list[int]:
    depths, depth = [], 0
    for c in body:
        depths.append(depth)
        depth += (c == "{") - (c == "}")
    return depths


def _reads(code: str, var: str, masked: str, functions: dict[str, re.Match[str]],
           seen: frozenset[str] = frozenset()) -> set[str]:
    """`var.field` reads in code, and in the functions it passes `var` to (their parameter)."""
    fields = set(re.findall(rf"(?<![\w.]){var}\s*\.\s*(\w+)", code)) - {"type"}
    for call in re.finditer(_CALL_WITH.format(var=var), code):
        function = functions.get(call.group(1))
        if function is None or call.group(1) in seen:
            continue
        body = masked[function.end():_block(masked, function.end() - 1)]
        fields |= _reads(body, function.group(2), masked, functions, seen | {call.group(1)})
    return fields


def web_sources() -> dict[str, str]:
    return {path.name: path.read_text(encoding="utf-8") for path in sorted(WEB.glob("*.js"))}


def contract_problems(sources: dict[str, str]) -> list[str]:
    """Every way the web client and the events registry disagree (empty: they agree)."""
    cases: dict[str, dict[str, set[str]]] = {}  # type -> file -> fields read
    for name, js in sources.items():
        for kind, fields in handled(js).items():
            cases.setdefault(kind, {})[name] = fields
    found = []
    for kind in events.EVENTS:
        if kind not in cases and kind not in events.NOT_IN_BROWSER:
            found.append(f"server event {kind!r} is not handled by the web client "
                         "(handle it, or list it in events.NOT_IN_BROWSER with the reason)")
    for kind, why in events.NOT_IN_BROWSER.items():
        if kind not in events.EVENTS:
            found.append(f"NOT_IN_BROWSER names {kind!r}, which the server does not send")
        elif kind in cases:
            found.append(f"{kind!r} is in NOT_IN_BROWSER but the web client handles it")
        elif not why.strip():
            found.append(f"NOT_IN_BROWSER gives no reason for {kind!r}")
    for kind, files in sorted(cases.items()):
        spec = events.EVENTS.get(kind)
        if spec is None:
            found.append(f"{', '.join(sorted(files))} handles {kind!r}, which the server "
                         "never sends (renamed or removed in callsctl_sfu/events.py?)")
            continue
        for name, fields in sorted(files.items()):
            for field in sorted(fields - spec.field_names):
                found.append(f"{name} reads {field!r} of {kind!r}, which has only "
                             f"{sorted(spec.field_names)}")
    return found


# --- the web client --------------------------------------------------------------------------


def test_the_web_client_and_the_server_agree_on_every_event() -> None:
    problems = contract_problems(web_sources())
    assert not problems, "\n".join(problems)


def test_the_scanner_sees_the_web_clients_switches() -> None:
    """If the page's code changes shape, this fails instead of the contract passing vacuously."""
    app = handled(web_sources()["app.js"])
    assert len(app) >= 25, sorted(app)
    assert {"session_id", "participants", "ice_servers", "host"} <= app["joined"]
    assert app["user_reacted"] == {"session_id", "emoji"}
    assert app["host_removed"] == {"by"}  # read through actor(msg)
    assert app["call_end"] == {"by", "reason"}  # also inside template literals
    captions = handled(web_sources()["captions.js"])
    assert captions["caption"] == {"session_id", "name", "text"}  # through showCaption(msg)
    assert {"captions", "captions_available"} <= captions["joined"]


def test_mask_keeps_code_and_blanks_text() -> None:
    js = ('const a = "{ case \\"x\\":"; // { case "y":\n'
          "const b = `it's ${n.a + `{${m.b}`}`; const r = /[{'/]/g; x = 1 / 2;\n")
    masked = mask(js)
    assert len(masked) == len(js)
    assert masked.count("{") == masked.count("}") == 2  # only the two `${…}`
    assert "n.a" in masked and "m.b" in masked and "1 / 2" in masked
    assert "case" not in masked and "it's" not in masked


@pytest.mark.parametrize("kind", sorted(set(events.EVENTS) - set(events.NOT_IN_BROWSER)))
def test_deleting_a_handler_is_caught(kind: str) -> None:
    sources = {name: re.sub(rf"\bcase\s+\"{kind}\"\s*:", "", js)
               for name, js in web_sources().items()}
    assert any(repr(kind) in problem and "not handled" in problem
               for problem in contract_problems(sources)), kind


def test_a_renamed_event_is_caught() -> None:
    sources = web_sources()
    sources["app.js"] = sources["app.js"].replace('case "user_left":', 'case "user_gone":')
    found = contract_problems(sources)
    assert any("'user_gone'" in p and "never sends" in p for p in found), found


def test_reading_a_field_the_event_lacks_is_caught() -> None:
    sources = web_sources()
    line = 'case "user_muted": updateParticipant(msg.session_id, {muted: true}); break;'
    assert line in sources["app.js"]
    sources["app.js"] = sources["app.js"].replace(
        line, line.replace("msg.session_id", "msg.session"))
    found = contract_problems(sources)
    assert any("'session'" in p and "'user_muted'" in p for p in found), found


# --- the wire form ---------------------------------------------------------------------------


def test_the_wire_form_is_what_clients_have_always_received() -> None:
    """Key order and omitted optional fields, as the dict literals the sites used to write."""
    joined: dict[str, Any] = dict(session_id="s", call="c", host="h", participants=[],
                                  recording=False, captions=False, ice_servers=[])
    assert list(events.Joined(**joined, captions_available=True).wire()) == [
        "type", "session_id", "call", "host", "participants", "recording", "captions",
        "captions_available", "ice_servers"]
    assert list(events.Joined(**joined, reconnected=True).wire()) == [
        "type", "session_id", "call", "host", "reconnected", "participants", "recording",
        "captions", "ice_servers"]
    assert events.CallHostChanged(host=None).wire() == {"type": "call_host_changed",
                                                        "host": None}
    assert events.UserScreenOn(session_id="s").wire() == {"type": "user_screen_on",
                                                          "session_id": "s"}
    assert events.CallEnd(call="c", reason="r", by="host").wire() == {
        "type": "call_end", "call": "c", "reason": "r", "by": "host"}
    assert events.HostControlDone(action="end", removed=0).wire() == {
        "type": "host_control_done", "action": "end", "removed": 0}
    assert events.HostControlDone(action="mute", session_id="s", changed=False).wire() == {
        "type": "host_control_done", "action": "mute", "session_id": "s", "changed": False}
    assert events.Pong().wire() == {"type": "pong"}


def test_problems_names_what_is_wrong() -> None:
    assert events.problems({"type": "user_muted", "session_id": "s"}) == []
    assert events.problems({"type": "user_mooted"}) == ["unknown event type 'user_mooted'"]
    assert events.problems({"type": "user_reacted", "session_id": 1, "extra": 2}) == [
        "user_reacted: missing field 'emoji'",
        "user_reacted: field 'extra' is not part of the event",
        "user_reacted: field 'session_id' must be string, not int"]


# --- docs/signaling.md -----------------------------------------------------------------------


def _table_rows(text: str, heading: str) -> dict[str, str]:
    """First-column code names -> the row, for the table under `heading`."""
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            first = line.split(" | ", 1)[0]
            for name in re.findall(r"`(\w+)`", first):
                rows[name] = line
    return rows


def test_the_docs_list_every_event_with_its_fields() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert gen_signaling.fill(text) == text, (
        "docs/signaling.md's events table is out of date with callsctl_sfu/events.py; "
        "run `make docs` and commit the result")
    rows = _table_rows(text, "## Server → client")
    for kind, spec in events.EVENTS.items():
        assert kind in rows, f"docs/signaling.md does not list the event {kind!r}"
        fields_cell = rows[kind].split(" | ")[1]
        for field in spec.fields:
            assert f"`{field.name}`" in fields_cell, (kind, field.name)
    assert set(rows) == set(events.EVENTS)


def test_the_docs_list_every_client_message_with_its_fields() -> None:
    rows = _table_rows(DOCS.read_text(encoding="utf-8"), "## Client → server")
    for kind, spec in events.CLIENT_MESSAGES.items():
        assert kind in rows, f"docs/signaling.md does not list the message {kind!r}"
        for field in spec:
            assert f"`{field}`" in rows[kind], (kind, field)
    assert set(rows) == set(events.CLIENT_MESSAGES)


# --- what a real server sends ----------------------------------------------------------------


async def _join(server: Any, call: str, user: str) -> Participant:
    person = Participant(server.ws_url, server.token(call, user), call, user.title(),
                         tone=None, send_audio=False)
    try:
        await person.join()
    except BaseException:
        await person.close()
        raise
    return person


async def test_what_a_real_server_sends_conforms_to_the_registry(server) -> None:
    """Drive most events through `callsctl serve`; every one received must fit the registry."""
    alice = await _join(server, "contract", "alice")
    bob = await _join(server, "contract", "bob")
    people = [alice, bob]
    try:
        async def answer_to(person: Participant, message: dict[str, Any], kind: str) -> None:
            mark = len(person.events)
            await person.send(message)
            await person.wait_for(lambda e: e["type"] in (kind, "error"), 5, since=mark)

        b = bob.session_id
        for message, kind in (
                ({"type": "mute"}, "user_muted"), ({"type": "unmute"}, "user_unmuted"),
                ({"type": "raise_hand"}, "user_raise_hand"),
                ({"type": "react", "emoji": "👍"}, "user_reacted"),
                ({"type": "video_on"}, "user_video_on"),
                ({"type": "video_off"}, "user_video_off"),
                ({"type": "screen_on", "stream_id": "s1"}, "user_screen_on"),
                ({"type": "ping"}, "pong"), ({"type": "nonsense"}, "error")):
            await answer_to(bob, message, kind)
        for action in ("lower_hand", "stop_screen", "mute"):
            await answer_to(alice, {"type": "host_control", "action": action,
                                    "session_id": b}, "host_control_done")
        await answer_to(alice, {"type": "invite", "name": "Eve"}, "invite_created")
        await answer_to(alice, {"type": "host_control", "action": "make_host",
                                "session_id": b}, "host_control_done")
        carol = await _join(server, "contract", "carol")
        people.append(carol)
        await answer_to(bob, {"type": "host_control", "action": "remove",
                              "session_id": carol.session_id}, "host_control_done")
        await answer_to(bob, {"type": "host_control", "action": "end"}, "host_control_done")
        await alice.wait_for(lambda e: e["type"] == "call_end", 5)
        await asyncio.sleep(0.2)
    finally:
        for person in people:
            await person.close()
    received = [e for person in people for e in person.events if not e["type"].startswith("_")]
    found = [f"{p} in {e}" for e in received for p in events.problems(e)]
    assert found == []
    seen = {e["type"] for e in received}
    expected = {"joined", "signal", "call_start", "call_end", "user_joined", "user_left",
                "user_muted", "user_unmuted", "user_raise_hand", "user_lower_hand",
                "user_reacted", "user_video_on", "user_video_off", "user_screen_on",
                "user_screen_off", "call_host_changed", "host_mute", "host_lower_hand",
                "host_screen_off", "host_removed", "host_control_done", "invite_created",
                "error", "pong"}
    assert expected <= seen, sorted(expected - seen)
