"""Merging every speaker's cues into one WebVTT file and one plain-text transcript.

WebVTT follows the W3C "WebVTT: The Web Video Text Tracks Format": a `WEBVTT`
header, then cues of `hh:mm:ss.ttt --> hh:mm:ss.ttt` and a payload; the
speaker is a voice span `<v Name>`, and `&`, `<`, `>` are escaped as
character references. Cues are in order of their start time (the format
requires it), speakers interleaved.
"""

from __future__ import annotations

from dataclasses import dataclass

VTT_FILE = "transcript.vtt"
TEXT_FILE = "transcript.txt"


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    speaker: str
    text: str
    session_id: str = ""


def timestamp(seconds: float) -> str:
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def ordered(cues: list[Cue]) -> list[Cue]:
    return sorted(cues, key=lambda c: (c.start, c.end, c.speaker))


def webvtt(cues: list[Cue]) -> str:
    lines = ["WEBVTT", ""]
    for number, cue in enumerate(ordered(cues), 1):
        end = max(cue.end, cue.start + 0.001)
        lines += [str(number), f"{timestamp(cue.start)} --> {timestamp(end)}",
                  f"<v {_escape(cue.speaker)}>{_escape(cue.text)}", ""]
    return "\n".join(lines)


def plain_text(cues: list[Cue]) -> str:
    """`[hh:mm:ss] Name: text` lines; consecutive cues of one speaker are joined."""
    lines: list[str] = []
    last = None
    for cue in ordered(cues):
        if last is not None and last[0] == cue.speaker and cue.start - last[1] < 5:
            lines[-1] += " " + cue.text
        else:
            lines.append(f"[{timestamp(cue.start)[:8]}] {cue.speaker}: {cue.text}")
        last = (cue.speaker, cue.end)
    return "\n".join(lines) + ("\n" if lines else "")
