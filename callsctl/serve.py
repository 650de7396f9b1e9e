"""Placeholder for `callsctl serve` (being built)."""


def serve() -> None:
    """Run the SFU."""
