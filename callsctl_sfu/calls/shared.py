"""An event sent to every participant of a call, encoded once rather than once per receiver.

A join in a call of N sends `user_joined` to the N others: N deliveries are
inherent (every client shows the roster), but encoding the same JSON N times
and building the same WebSocket frame N times is not. The manager wraps each
broadcast event in a SharedEvent; the signaling layer asks it for the text
(and caches its frame in it), so a join costs one encoding plus N writes.
"""

from __future__ import annotations

import json
from typing import Any


class SharedEvent(dict[str, Any]):
    """A read-only-by-convention event dict whose JSON text is computed at most once."""

    __slots__ = ("_text", "frame")

    def __init__(self, event: dict[str, Any]) -> None:
        super().__init__(event)
        self._text: str | None = None
        # The transport's encoding of the text (a WebSocket frame), cached by its user.
        self.frame: bytes | None = None

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = json.dumps(self)
        return self._text
