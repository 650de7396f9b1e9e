"""Ctrl-C and SIGTERM as a flag, so the long-running checks (listen, capture) end cleanly."""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any


class SignalStop:
    """Turn SIGINT/SIGTERM into a flag that bounded loops poll, so Ctrl-C ends with a summary.

    A KeyboardInterrupt could land anywhere (mid-write, in a library); a flag
    checked every loop turn stops at a clean point instead.
    """

    def __init__(self) -> None:
        self.requested = False
        self._saved: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def __enter__(self) -> SignalStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
