"""The tests' port picker never hands out a port a browser refuses (net::ERR_UNSAFE_PORT).

A browser test served its page on 10080, which Chromium will not load; the
picker draws at random, so that failed about once in ten thousand picks.
"""

from __future__ import annotations

import random
import socket

from tests.support import helpers


def test_a_port_browsers_refuse_is_skipped_for_the_next_one(monkeypatch) -> None:
    drawn = iter([10080, 10081, 10082, 10083])
    monkeypatch.setattr(helpers, "_port_slice", lambda: (10000, 20000))
    monkeypatch.setattr(random, "randrange", lambda *_args: next(drawn))
    port = helpers.free_port(socket.SOCK_STREAM)
    assert port != 10080 and port in (10081, 10082, 10083)
