"""The typer root: `callsctl <command>`; one module per command group."""

from __future__ import annotations

import sys
from collections.abc import Callable

import typer

from callsctl import __version__
from callsctl.errors import EXIT_FAIL, EXIT_USAGE, exit_reporting_errors, print_error

# The root group; `app` (below, PEP 562) is this with every command registered.
_root = typer.Typer(
    name="callsctl",
    help=(
        "Serve and diagnose self-hosted voice and video calls.\n\n"
        "serve runs the SFU (all media on UDP 8443, API on 8045); check finds out why a "
        "participant cannot connect or hear; tune sets the kernel's UDP buffers; calls and "
        "top watch and control live calls; loadtest measures what a server carries; token "
        "prints join links."
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"callsctl {__version__}")
        raise typer.Exit()


@_root.callback()
def root(
    version: bool = typer.Option(
        False,
        "--version",
        "-V",
        help="Print the version and exit.",
        callback=_version_callback,
        is_eager=True,
    ),
) -> None:
    """Serve and diagnose self-hosted voice and video calls."""


def _serve() -> None:
    from callsctl import serve

    _root.command("serve", help=serve.serve.__doc__)(serve.serve)


def _token() -> None:
    from callsctl import token

    _root.command("token", help=token.token.__doc__)(token.token)


def _check() -> None:
    from callsctl.check import app as check_app

    _root.add_typer(check_app, name="check")


def _tune() -> None:
    from callsctl import tune

    _root.command("tune", help=tune.tune.__doc__)(tune.tune)


def _calls() -> None:
    from callsctl.calls import app as calls_app

    _root.add_typer(calls_app, name="calls")


def _record() -> None:
    from callsctl.record import app as record_app

    _root.add_typer(record_app, name="record")


def _worker() -> None:
    from callsctl import worker

    _root.command("worker", help=worker.worker.__doc__)(worker.worker)


def _top() -> None:
    from callsctl.top.command import top

    _root.command("top", help=top.__doc__)(top)


def _loadtest() -> None:
    from callsctl.loadtest import loadtest

    _root.command("loadtest", help=loadtest.__doc__)(loadtest)


def _fleet() -> None:
    from callsctl.fleet import app as fleet_app

    _root.add_typer(fleet_app, name="fleet")


# Every command group, in the order `--help` lists them.
_COMMANDS: dict[str, Callable[[], None]] = {
    "serve": _serve, "token": _token, "check": _check, "tune": _tune, "calls": _calls,
    "record": _record, "worker": _worker, "top": _top, "loadtest": _loadtest, "fleet": _fleet,
}
_registered: list[str] = []


def _register_commands(only: str | None = None) -> typer.Typer:
    """Register every command group (or just `only`) not registered yet; the root.

    Each module keeps its heavy imports (aiortc, scapy, textual) inside its
    command, so `callsctl --version` and `--help` stay fast. `callsctl serve`
    registers serve alone (main): the other commands' modules (check's 18,
    with aiortc for `check webrtc`; tune's tables; the admin client) are then
    never imported into a long-running server. serve comes first in the
    order, so registering the rest later keeps `--help`'s order.
    """
    for name, register in _COMMANDS.items():
        if name not in _registered and only in (None, name):
            register()
            _registered.append(name)
    return _root


def __getattr__(name: str) -> typer.Typer:
    """`callsctl.app.app`: the root with every command (docs generator, tests)."""
    if name == "app":
        return _register_commands()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """Console-script entry: every error becomes one line and an exit code.

    click runs with standalone_mode=False so that it raises usage errors instead
    of printing its box; callsctl.usage turns them into one line (exit 2).
    """
    from callsctl.usage import (
        Abort,
        ClickException,
        NoArgsIsHelpError,
        usage_exit_code,
        usage_line,
    )

    serving = sys.argv[1:2] == ["serve"]

    def run() -> int:
        try:
            # `callsctl serve ...` started over with its settings parsed (callsctl/serve.py),
            # entered here rather than through callsctl/entry.py (a script installed before
            # the entry point moved, or a caller of app.main): serve without parsing again.
            from callsctl import serving as serving_pass

            if serving_pass.started_over() and serving_pass.run_parsed():
                return 0
            # `callsctl serve ...` runs with serve alone registered: a server's memory holds
            # nothing of the other commands (docs/performance-memory.md).
            app = _register_commands("serve" if serving else None)
            code = app(standalone_mode=False, prog_name="callsctl")
        except NoArgsIsHelpError as exc:  # a bare group: its help, exit 2, as click does
            # With rich, typer has already printed the help while making this error.
            if exc.format_message().strip():
                typer.echo(exc.format_message(), err=True)
            return EXIT_USAGE
        except ClickException as exc:
            print_error(usage_line(exc, sys.argv[1:]))
            return usage_exit_code(exc)
        except Abort:  # end of input at a prompt
            print_error("aborted; nothing was done")
            return EXIT_FAIL
        # click returns an Exit's code, or the command's return value (None).
        return code if isinstance(code, int) else 0

    # Ours (one line), Ctrl-C (130) and, as a last resort, anything else: never a traceback.
    exit_reporting_errors(run)
