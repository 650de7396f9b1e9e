"""Usage errors as one line on stderr with exit code 2, for every command.

click (under typer) would print a four-line box for a bad flag; an operator
pasting the output into a ticket, or a script reading stderr, wants one line
that names the option and says what to do. main() in app.py runs the command
tree with click's `standalone_mode=False`, so click raises its exceptions
instead of printing them, and they all come through `usage_line()` here.

Options in callsctl belong to one level of the command tree: `--server` to
`callsctl calls`, `--host` to `callsctl check rtc`. Given at the wrong level
(`callsctl calls list --server URL`, `callsctl check --host H rtc`) click only
says "No such option"; `misplaced_hint()` looks the option up in the tree and
says where it goes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from typer import Abort

try:  # newer typer vendors click as typer._click and raises its exceptions
    from typer._click.exceptions import (
        BadParameter,
        ClickException,
        NoArgsIsHelpError,
        NoSuchOption,
        UsageError,
    )
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover - older typer runs on click itself
    from click.exceptions import (  # type: ignore[assignment]
        BadParameter,
        ClickException,
        NoArgsIsHelpError,
        NoSuchOption,
        UsageError,
    )
    from click.globals import get_current_context  # type: ignore[no-redef]

from callsctl.errors import EXIT_USAGE

__all__ = ["Abort", "BadParameter", "ClickException", "NoArgsIsHelpError", "current_context",
           "usage_exit_code", "usage_line"]


def current_context() -> Any:
    """The click context of the running command (None outside one)."""
    return get_current_context(silent=True)


def usage_exit_code(exc: ClickException) -> int:
    return EXIT_USAGE if isinstance(exc, UsageError) else exc.exit_code


def usage_line(exc: ClickException, argv: Sequence[str]) -> str:
    """The whole error as one line: where, what, a hint, and which --help to read."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return message
    path = ctx.command_path
    if isinstance(exc, NoSuchOption) and exc.option_name:
        hint = misplaced_hint(ctx, exc.option_name, argv)
        if hint:  # the hint replaces click's "Possible options" guess
            return f"{path}: {' '.join(exc.message.split())}: {hint}"
    return f"{path}: {message} (see `{path} --help`)"


def _options(command: Any) -> list[Any]:
    return [p for p in command.params if getattr(p, "param_type_name", "") == "option"]


def _names(command: Any) -> set[str]:
    return {name for p in _options(command) for name in (*p.opts, *p.secondary_opts)}


def _option(command: Any, name: str) -> Any:
    return next((p for p in _options(command) if name in (*p.opts, *p.secondary_opts)), None)


def _subcommands(command: Any) -> dict[str, Any]:
    """A group's subcommands by name ({} for a plain command)."""
    commands = getattr(command, "commands", None)
    return dict(commands) if isinstance(commands, dict) else {}


def _walk(command: Any, path: str, ctx: Any
          ) -> Iterator[tuple[str, Any]]:
    yield path, command
    for name, sub in _subcommands(command).items():
        if not getattr(sub, "hidden", False):
            yield from _walk(sub, f"{path} {name}", ctx)


def _with_value(command: Any, name: str, argv: Sequence[str]) -> str:
    """`--host X` as the user typed it (or `--host …`), for the corrected example."""
    option = _option(command, name)
    if option is None or getattr(option, "is_flag", False) or getattr(option, "count", False):
        return name
    for index, token in enumerate(argv):
        if token.startswith(name + "="):
            return token
        if token == name:
            return f"{name} {argv[index + 1]}" if index + 1 < len(argv) else f"{name} …"
    return f"{name} …"


def misplaced_hint(ctx: Any, name: str, argv: Sequence[str]) -> str | None:
    """Where `name` belongs when it was given at the wrong level, or None."""
    here = ctx.command_path
    # A parent's option given after its subcommand: `calls list --server URL`.
    parent = ctx.parent
    while parent is not None:
        if name in _names(parent.command):
            example = _with_value(parent.command, name, argv)
            return (f"{name} is an option of `{parent.command_path}`; give it before "
                    f"`{ctx.info_name}`: {parent.command_path} {example} "
                    f"{here[len(parent.command_path):].strip()} …")
        parent = parent.parent
    # A subcommand's option given before it: `check --host H rtc`.
    subcommands = _subcommands(ctx.command)
    if subcommands:
        for token in argv:
            sub = subcommands.get(token) if not token.startswith("-") else None
            if sub is None:
                continue
            for path, inner in _walk(sub, f"{here} {token}", ctx):
                if name in _names(inner):
                    return (f"{name} is an option of `{path}`; give it after `{token}`: "
                            f"{path} {_with_value(inner, name, argv)} …")
    # Anywhere else in the tree (a sibling's option): name its owners.
    root = ctx.find_root()
    owners = [path for path, inner in _walk(root.command, root.command_path, root)
              if name in _names(inner)]
    if owners and len(owners) <= 3:
        listed = ", ".join(f"`{path}`" for path in owners)
        return f"{name} is an option of {listed}, not of `{here}` (see `{here} --help`)"
    return None
