"""Which forwarding engine this server runs: the C fan-out (rtc/_fanout.c) or Python.

The C extension is built at install time when a C compiler is there (setup.py
marks it optional). It needs libsrtp's srtp_protect, which it borrows from the
pylibsrtp wheel aiortc already uses (its cffi module exposes the function's
address), so both paths protect with the very same srtp_t and its sequence
state. Before trusting that address, its C signature is checked against the
libsrtp 2 one the extension was written for; anything else falls back to
Python with the reason kept for `/version` and the startup log.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from callsctl_sfu.rtc import aiortc_bridge
from callsctl_sfu.rtc.rtp import PyRewrite

# libsrtp 2.x, as pylibsrtp 1.0's cffi declares it.
EXPECTED_PROTECT = "srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)"
# The environment switch for side-by-side measurements and tests of the Python path.
DISABLE_ENV = "CALLSCTL_FAST_PATH"

try:  # the compiled extension, when the install built it
    from callsctl_sfu.rtc import _fanout
except ImportError as error:  # pragma: no cover - depends on the build machine
    _fanout = None
    _import_error = f"C extension not built ({error})"
else:
    _import_error = ""


def _wire_protect() -> str:
    """Give the extension libsrtp's srtp_protect; '' when done, else why not."""
    if _fanout is None:
        return _import_error
    try:
        address, signature = aiortc_bridge.srtp_protect_function()
    except ImportError as error:
        return f"pylibsrtp has no cffi binding ({error})"
    if signature != EXPECTED_PROTECT:
        return f"pylibsrtp's srtp_protect is {signature!r}, not the libsrtp 2 signature"
    _fanout.set_protect(address)
    return ""


_unavailable = _wire_protect()
if not _unavailable and os.environ.get(DISABLE_ENV, "").lower() in ("0", "off", "false", "no"):
    _unavailable = f"disabled by {DISABLE_ENV}"

AVAILABLE = not _unavailable
ENGINE = "c" if AVAILABLE else "python"
REASON = _unavailable  # why the Python path runs, for operators ('' when C runs)
# Rewrite objects the fan-out can use directly when it runs; the Python twin otherwise.
Rewrite: Any = _fanout.Rewrite if AVAILABLE and _fanout is not None else PyRewrite


def packed_ipv4(addr: tuple[str, int]) -> bytes:
    """struct sockaddr_in for sendmmsg (family in host order, port and address in network)."""
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H4s8x", addr[1],
                                                           socket.inet_aton(addr[0]))


FanoutResult = tuple[int, int, int, int, int, list[int] | None,
                     list[tuple[bytes, tuple[str, int]]] | None]


def _no_fanout(*_args: Any) -> FanoutResult:
    raise RuntimeError(f"the C fan-out is not available: {REASON}")


# fanout(fd, first_byte, marker, sequence, timestamp, ssrc, payload, level_byte, targets):
# see _fanout.fanout's docstring. Bound directly (no wrapper frame on the hot path).
fanout: Callable[..., FanoutResult] = (
    _fanout.fanout if AVAILABLE and _fanout is not None else _no_fanout)
