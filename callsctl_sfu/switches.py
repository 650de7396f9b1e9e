"""The environment switches that turn a part of the engine off for comparisons.

Several parts (the C fan-out, the ingress's reader thread, the SRTP context
thread, the collector policy, the DTLS record layer, the load generator's
receive thread) stay on unless a CALLSCTL_* variable says otherwise; they all
read it the same way, here.
"""

from __future__ import annotations

import os

OFF_WORDS = ("0", "off", "false", "no")


def switched_off(name: str) -> bool:
    """Whether the environment variable `name` is one of OFF_WORDS (any case, spaces ignored)."""
    return os.environ.get(name, "").strip().lower() in OFF_WORDS
