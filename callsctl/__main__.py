"""Allow `python -m callsctl`."""

from callsctl.app import main

main()
