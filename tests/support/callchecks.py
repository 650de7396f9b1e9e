"""What the people in a call would notice, checked from their browsers.

Shared by the interop tests of Mattermost's client and of the bundled web
client. A participant here is anything with `label`, `session_id`,
`inbound()` (packets received per "<session id>/<audio|video|screen>") and
`events()` (the server events its page received), plus `diagnostics()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

STEP_TIMEOUT_S = 20.0
GROWTH = 25  # packets: half a second of Opus, a second of video


class CallChecks:
    """Assertions over everyone currently in `people` (kept up to date by the caller)."""

    def __init__(self, people: list[Any], server_log: Callable[[], str]) -> None:
        self.people = people
        self.server_log = server_log

    def diagnostics(self) -> str:
        return "\n".join(p.diagnostics() for p in self.people) + \
            "\n--- server log ---\n" + self.server_log()[-3000:]

    def wait_flowing(self, sources: dict[Any, list[str]]) -> None:
        """Wait until every listener's packet count from each named source grew.

        `sources` maps a publisher to what it should be heard and seen on:
        "audio", "video" (its camera) or "screen".
        """
        wanted = {(listener, key) for listener in self.people
                  for publisher, kinds in sources.items() if publisher is not listener
                  for key in source_keys(publisher, kinds)}
        start = {(listener, key): listener.inbound().get(key, 0) for listener, key in wanted}
        deadline = time.monotonic() + STEP_TIMEOUT_S
        missing = set(wanted)
        while missing and time.monotonic() < deadline:
            counts = {listener: listener.inbound() for listener in self.people}
            missing = {(listener, key) for listener, key in missing
                       if counts[listener].get(key, 0) < start[(listener, key)] + GROWTH}
            if missing:
                time.sleep(0.25)
        assert not missing, (
            "no media: " + ", ".join(f"{listener.label} <- {key}" for listener, key in missing)
            + "\n" + self.diagnostics())

    def assert_silent(self, publisher: Any, kind: str = "audio") -> None:
        """Nothing more arrives from `publisher` at anyone (after in-flight packets)."""
        key = source_keys(publisher, [kind])[0]
        time.sleep(1.0)
        before = {p: p.inbound().get(key, 0) for p in self.people if p is not publisher}
        time.sleep(2.0)
        grew = {p.label: p.inbound().get(key, 0) - n for p, n in before.items()}
        assert all(delta <= 2 for delta in grew.values()), (
            f"{publisher.label}'s {kind} still forwarded: {grew}\n" + self.diagnostics())

    def wait_voice_on(self, speaker: Any) -> None:
        """Every other participant got user_voice_on for `speaker`."""
        self.wait_event(speaker, "user_voice_on")

    def wait_voice_off(self, speaker: Any) -> None:
        """Every other participant got user_voice_off for `speaker` after its last voice_on."""
        self.wait_event(speaker, "user_voice_off", after="user_voice_on")

    def wait_event(self, about: Any, kind: str, after: str | None = None) -> None:
        """Every other participant got an event `kind` naming `about` (after its last `after`)."""
        def seen(person: Any) -> bool:
            mine = [e.get("type") for e in person.events()
                    if e.get("session_id") == about.session_id]
            last_after = max((i for i, t in enumerate(mine) if t == after), default=-1)
            return kind in mine[last_after + 1:]

        deadline = time.monotonic() + STEP_TIMEOUT_S
        waiting = [p for p in self.people if p is not about]
        while waiting and time.monotonic() < deadline:
            waiting = [p for p in waiting if not seen(p)]
            if waiting:
                time.sleep(0.25)
        assert not waiting, (f"no {kind} for {about.label} at "
                             f"{[p.label for p in waiting]}\n" + self.diagnostics())


def source_keys(publisher: Any, kinds: list[str]) -> list[str]:
    return [f"{publisher.session_id}/{kind}" for kind in kinds]
