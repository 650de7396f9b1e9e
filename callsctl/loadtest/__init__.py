"""`callsctl loadtest`: synthetic participants against a server, like the Calls load-test tool.

The command (command.py) validates and admits the run, the engine
(callsctl_sfu.client.loadgen) joins and measures, render.py shows progress and
the report. Importing this package does not import the media stack, so
`callsctl --help` stays fast.
"""

from __future__ import annotations

from callsctl.loadtest.command import loadtest

__all__ = ["loadtest"]
