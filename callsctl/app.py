"""The typer root: `callsctl <command>`; one module per command group."""

from __future__ import annotations

import sys

import typer

from callsctl import __version__
from callsctl.errors import EXIT_FAIL, EXIT_USAGE, exit_code_of, print_error
from callsctl_sfu.errors import CallsctlError

app = typer.Typer(
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


@app.callback()
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


def _register_commands() -> None:
    """Every command group, in the order `--help` lists them.

    Each module keeps its heavy imports (aiortc, scapy, textual) inside its
    command, so `callsctl --version` and `--help` stay fast.
    """
    from callsctl import serve, token, tune, worker
    from callsctl.calls import app as calls_app
    from callsctl.check import app as check_app
    from callsctl.fleet import app as fleet_app
    from callsctl.loadtest import loadtest
    from callsctl.record import app as record_app
    from callsctl.top.command import top

    app.command("serve", help=serve.serve.__doc__)(serve.serve)
    app.command("token", help=token.token.__doc__)(token.token)
    app.add_typer(check_app, name="check")
    app.command("tune", help=tune.tune.__doc__)(tune.tune)
    app.add_typer(calls_app, name="calls")
    app.add_typer(record_app, name="record")
    app.command("worker", help=worker.worker.__doc__)(worker.worker)
    app.command("top", help=top.__doc__)(top)
    app.command("loadtest", help=loadtest.__doc__)(loadtest)
    app.add_typer(fleet_app, name="fleet")


_register_commands()


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

    try:
        code = app(standalone_mode=False, prog_name="callsctl")
    except NoArgsIsHelpError as exc:  # a bare group: its help, exit 2, as click does
        # With rich, typer has already printed the help while making this error.
        if exc.format_message().strip():
            typer.echo(exc.format_message(), err=True)
        sys.exit(EXIT_USAGE)
    except ClickException as exc:
        print_error(usage_line(exc, sys.argv[1:]))
        sys.exit(usage_exit_code(exc))
    except Abort:  # end of input at a prompt
        print_error("aborted; nothing was done")
        sys.exit(EXIT_FAIL)
    except CallsctlError as exc:  # ours, from the CLI or the engine: its one line
        print_error(exc.message)
        sys.exit(exit_code_of(exc))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # last resort: never show a traceback to operators
        print_error(f"{type(exc).__name__}: {exc} (run with CALLSCTL_DEBUG=1 for details)")
        if __import__("os").environ.get("CALLSCTL_DEBUG"):
            raise
        sys.exit(EXIT_FAIL)
    # click returns an Exit's code, or the command's return value (None).
    sys.exit(code if isinstance(code, int) else 0)
