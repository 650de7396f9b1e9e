"""A strict reader of the WebVTT files the transcription job writes (W3C WebVTT).

Strict on purpose: a header of exactly `WEBVTT`, cues separated by one blank
line, an optional numeric identifier, a `hh:mm:ss.ttt --> hh:mm:ss.ttt`
timing line, and one payload line that is a voice span `<v Name>text` with no
raw `<`, `>` or `&` left in the name or text. Anything else fails the test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STAMP = r"(\d{2}):([0-5]\d):([0-5]\d)\.(\d{3})"
TIMING = re.compile(f"^{STAMP} --> {STAMP}$")
VOICE = re.compile(r"^<v ([^<>&]+)>([^<>]*)$")


@dataclass
class ParsedCue:
    start: float
    end: float
    speaker: str
    text: str


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def parse(text: str) -> list[ParsedCue]:
    blocks = text.rstrip("\n").split("\n\n")
    assert blocks[0] == "WEBVTT", f"bad header: {blocks[0]!r}"
    cues = []
    for block in blocks[1:]:
        lines = block.split("\n")
        if not TIMING.match(lines[0]):
            assert lines[0].isdigit(), f"bad cue identifier: {lines[0]!r}"
            lines = lines[1:]
        assert len(lines) == 2, f"a cue is a timing line and one payload line: {block!r}"
        timing = TIMING.match(lines[0])
        assert timing, f"bad timing line: {lines[0]!r}"
        voice = VOICE.match(lines[1])
        assert voice, f"payload is not a voice span: {lines[1]!r}"
        start, end = _seconds(*timing.groups()[:4]), _seconds(*timing.groups()[4:])
        assert start < end, f"cue ends before it starts: {lines[0]}"
        cues.append(ParsedCue(start, end, voice.group(1), voice.group(2)))
    starts = [c.start for c in cues]
    assert starts == sorted(starts), f"cues out of order: {starts}"
    return cues
