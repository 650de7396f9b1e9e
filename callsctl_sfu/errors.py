"""The one base of every callsctl exception: a stable `code` and a one-line `message`.

Why one base: the CLI prints any of them the same way (one line, exit 1) from
one place (callsctl.app.main), scripts and the signaling protocol can branch on
`code` without parsing English, and a test (tests/test_errors.py) holds every
exception class in callsctl and callsctl_sfu to it.

- `code` is machine-readable and stable: lower_snake_case, set once per class
  (`code = "bad_config"`). Classes whose raise sites already carry a protocol
  code (signaling errors such as "call_full") pass it per instance, and the
  class's own code is the fallback.
- `message` is the line a user reads: what is wrong and what to do. It is also
  `str(exc)`, so existing `str(exc)` call sites print the same text.

Classes keep their old builtin base as a second base (ConfigError is still a
ValueError, DataDirError still an OSError), so every `except ValueError` that
caught them before still does.
"""

from __future__ import annotations


class CallsctlError(Exception):
    """An error callsctl reports to a person or a client; never shown as a traceback."""

    code: str = "error"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
