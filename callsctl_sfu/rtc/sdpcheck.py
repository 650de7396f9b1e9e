"""Structural checks on a client's SDP that aiortc does not make before acting on it.

aiortc trusts an offer's BUNDLE group: when the group names a mid that no
m-line carries (RFC 8843 §7.2: every identification-tag in the group is the
mid of an m= section of the same description), it bundles the other media
onto a transport that does not exist and fails later, inside a task of its own.
Checking here turns that into a `bad_signal` error naming the problem.
"""

from __future__ import annotations


def check_sdp(sdp: str) -> str | None:
    """The first structural problem of `sdp` as a sentence, or None."""
    mids: set[str] = set()
    groups: list[list[str]] = []
    in_media = False
    for line in sdp.splitlines():
        if line.startswith("m="):
            in_media = True
        elif line.startswith("a=mid:") and in_media:
            mids.add(line[6:].strip())
        elif line.startswith("a=group:BUNDLE") and not in_media:
            groups.append(line[len("a=group:BUNDLE"):].split())
    if not in_media:
        return "the SDP has no m= line (no media and no data channel)"
    for group in groups:
        missing = [mid for mid in group if mid not in mids]
        if missing:
            return (f"the BUNDLE group names mid {missing[0]!r}, which no m= line has "
                    "(RFC 8843)")
    return None
