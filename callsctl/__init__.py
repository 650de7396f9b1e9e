"""callsctl: the command-line front end (typer, rich, textual) over callsctl_sfu."""

from callsctl_sfu import __version__

__all__ = ["__version__"]
