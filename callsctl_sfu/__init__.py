"""callsctl_sfu: the engine behind `callsctl serve`.

A library (asyncio + aiortc + aiohttp) that never imports the CLI, so it can
be embedded and tested on its own.
"""

__version__ = "0.1.0"
