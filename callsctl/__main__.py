"""Allow `python -m callsctl`."""

from callsctl.entry import main

main()
