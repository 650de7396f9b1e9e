"""How every callsctl command reports failure: one line on stderr, an exit code.

Exit codes, the same across commands:
  0  success (for `check`: every check passed)
  1  the operation failed (a check failed, a port is in use, no privilege, ...)
  2  usage error (bad flag or value), as typer/click report it

Every callsctl exception derives from callsctl_sfu.errors.CallsctlError (a
stable `code`, a one-line `message`); app.main prints any of them that reaches
it as that one line and exits with its `exit_code` (1 unless it is a CliError
that says otherwise), so commands need not catch engine errors just to
re-raise them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import NoReturn

from callsctl_sfu.errors import CallsctlError

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2


class CliError(CallsctlError):
    """An error the user can act on; printed as one line, never as a traceback."""

    code = "failed"

    def __init__(self, message: str, exit_code: int = EXIT_FAIL, code: str | None = None) -> None:
        super().__init__(message, code=code or ("usage" if exit_code == EXIT_USAGE else None))
        self.exit_code = exit_code


def fail(message: str, exit_code: int = EXIT_FAIL, code: str | None = None) -> NoReturn:
    raise CliError(message, exit_code, code)


def exit_code_of(exc: CallsctlError) -> int:
    """The exit status for an error: a CliError's own, else 1 (the operation failed)."""
    return exc.exit_code if isinstance(exc, CliError) else EXIT_FAIL


def bad_option(option: str, message: str) -> NoReturn:
    """A bad value of one option: a usage error (exit 2) naming it, like click's own.

    For values only the command can judge (a duration, a port the config
    schema rejects); app.main prints it as one line with the command's path.
    """
    from callsctl.usage import BadParameter, current_context

    raise BadParameter(message, ctx=current_context(), param_hint=f"'{option}'")


def print_error(message: str) -> None:
    sys.stderr.write(f"callsctl: error: {message}\n")
    sys.stderr.flush()


def exit_reporting_errors(body: Callable[[], int]) -> NoReturn:
    """Run a command's body and exit with its status; an error is one line, never a traceback.

    Shared by the CLI (callsctl.app.main) and the serving pass (callsctl/serving.py),
    which must not import the CLI's libraries: this module imports none of them.
    """
    try:
        code = body()
    except CallsctlError as exc:  # ours, from the CLI or the engine: its one line
        print_error(exc.message)
        sys.exit(exit_code_of(exc))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # last resort: never show a traceback to operators
        print_error(f"{type(exc).__name__}: {exc} (run with CALLSCTL_DEBUG=1 for details)")
        if os.environ.get("CALLSCTL_DEBUG"):
            raise
        sys.exit(EXIT_FAIL)
    sys.exit(code)
