"""SRTP contexts made on the context thread (rtc/srtparena.py): together in memory, still usable.

The point of the thread is where glibc puts the contexts: made on it, one
receiver's context follows the previous one's even when the event loop
allocated a join's worth of other memory in between; made inline, they are
pushed apart by it. Both are measured here on real libsrtp contexts, so the
test fails if the contexts stop being made on the thread (or if the thread
stops mattering). The sessions made there must work from any thread, and
errors must reach the caller as before.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading

import pylibsrtp
import pytest

from callsctl_sfu.rtc import fastpath, srtparena
from tests.support.helpers import REPO
from tests.support.srtp import KEY_LEN, srtp_pair

pytestmark = pytest.mark.skipif(not fastpath.AVAILABLE, reason=fastpath.REASON)

# Run in a fresh interpreter: the arenas of a test worker that already ran servers
# are full of holes that new contexts would fill wherever they are.
LAYOUT = """
import json, os, sys
import pylibsrtp
from callsctl_sfu.rtc import aiortc_bridge, srtparena

def amid_junk(make, count=40):
    # count outbound srtp_t made one by one, 12 x 8000 octets of heap (under glibc's
    # mmap threshold) allocated between each two, as a join allocates around its keys
    keep, addresses = [], []
    for _ in range(count):
        keep.append([bytearray(8000) for _ in range(12)])
        policy = pylibsrtp.Policy(key=os.urandom(30),
                                  ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        session = make(policy)
        keep.append(session)
        addresses.append(aiortc_bridge.srtp_context_address(session))
    return [abs(b - a) for a, b in zip(addresses, addresses[1:])]

def inline(policy):
    session = pylibsrtp.Session.__new__(pylibsrtp.Session)
    init = pylibsrtp.Session.__init__
    getattr(init, "__wrapped__", init)(session, policy)
    return session

assert srtparena.install()
print(json.dumps({"thread": amid_junk(pylibsrtp.Session), "inline": amid_junk(inline)}))
"""
APART = 32 * 1024  # more than one session's contexts, less than the junk between two joins


def test_contexts_made_on_the_thread_lie_together_despite_the_joins_other_allocations() -> None:
    result = subprocess.run([sys.executable, "-c", LAYOUT], cwd=REPO, capture_output=True,
                            text=True, timeout=60, env={**os.environ, srtparena.ENV: "1"})
    assert result.returncode == 0, result.stderr
    gaps = json.loads(result.stdout)
    # Medians: one odd gap where an arena grew is allowed.
    together, apart = sorted(gaps["thread"]), sorted(gaps["inline"])
    assert together[len(together) // 2] < APART, together
    assert apart[len(apart) // 2] > APART, apart


def test_a_session_made_on_the_thread_protects_and_unprotects_from_the_callers_thread() -> None:
    assert srtparena.install()
    outbound, inbound = srtp_pair()  # both made on the context thread
    assert srtparena.CONTEXTS.ident not in (None, threading.get_ident())
    packet = struct.pack("!BBHII", 0x80, 111, 7, 960, 0x1234) + b"opus payload"
    assert inbound.unprotect(outbound.protect(packet)) == packet


def test_an_error_in_srtp_create_reaches_the_caller() -> None:
    srtparena.install()
    policy = pylibsrtp.Policy(key=os.urandom(KEY_LEN), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    policy.window_size = 10  # libsrtp refuses replay windows under 64
    with pytest.raises(pylibsrtp.Error):
        pylibsrtp.Session(policy)
    # and the thread still serves the next one
    srtp_pair()


def test_the_context_thread_runs_calls_in_turn_and_hands_back_results_and_errors() -> None:
    worker = srtparena.ContextThread()
    assert worker.run(threading.get_ident) != threading.get_ident()
    assert worker.run(lambda: worker.run(lambda: 42)) == 42  # a call from the thread itself
    with pytest.raises(ZeroDivisionError):
        worker.run(lambda: 1 / 0)
    assert worker.run(lambda: "still there") == "still there"


def test_the_switch_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(srtparena.ENV, "0")
    assert not srtparena.wanted()
    assert srtparena.install() is False
    monkeypatch.setenv(srtparena.ENV, "1")
    assert srtparena.wanted()
