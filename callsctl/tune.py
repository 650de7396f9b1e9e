"""Placeholder for `callsctl tune` (being built)."""

import typer


def tune() -> None:
    """Show and set the kernel UDP buffer settings an SFU needs."""
    typer.echo("not built yet")
