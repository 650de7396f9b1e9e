"""The `callsctl` program's entry point: the serving pass first, then the typer CLI.

`callsctl serve` starts over once its command line is parsed (callsctl/serve.py);
the process that starts over serves straight from its piped settings
(callsctl/serving.py) without importing callsctl.app, whose typer root brings
typer, click and rich into the process (about 2 MB of a server's RSS). Every
other start is the CLI: callsctl.app.main.
"""

from __future__ import annotations


def main() -> None:
    """`callsctl` (console script) and `python -m callsctl`."""
    from callsctl import serving

    if serving.started_over():
        serving.main()
    from callsctl.app import main as cli_main

    cli_main()
