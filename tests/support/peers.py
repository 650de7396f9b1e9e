"""In-process aiortc peer connections for tests that connect two of them on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtcconfiguration import RTCBundlePolicy


def max_bundle_pc() -> RTCPeerConnection:
    """A connection with no ICE servers and max-bundle, as the server's and clients' are
    (the load generator's gather_on needs max-bundle)."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[],
                                              bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))


async def until(condition: Any, what: str, seconds: float = 10.0) -> None:
    """Wait for `condition()` (polled every 50 ms) or fail naming `what`."""
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
