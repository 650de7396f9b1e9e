"""`callsctl serve` with its serving pass under heaptrack (bench/memory.py --native).

    python bench/native_serve.py PRELOAD_LIBRARY OUTPUT serve --bind 127.0.0.1 ...

Why a wrapper: `callsctl serve` parses its command line, then starts over as the
same command line with the parsed settings on a pipe (callsctl/serve.py), and
heaptrack's preload library takes its own variables out of the environment when
it starts, so a parse pass run under it hands nothing on and the serving pass,
the one whose memory matters, ran untraced. Here the parse pass runs without
heaptrack and sets its variables just before it starts over, so only the
serving pass is recorded, into OUTPUT. The product carries no tracing code.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    # Serve the checkout the bench started it in (its working directory: this one, or
    # --before's), as `python -m callsctl` from there would.
    sys.path.insert(0, os.getcwd())
    preload, output = sys.argv[1], sys.argv[2]
    from callsctl.serving import CONFIG_FD_ENV

    if not os.environ.get(CONFIG_FD_ENV):  # the parse pass: hand heaptrack on to the next
        os.environ["LD_PRELOAD"] = preload
        os.environ["DUMP_HEAPTRACK_OUTPUT"] = output
    sys.argv = ["callsctl", *sys.argv[3:]]
    from callsctl.app import main as callsctl_main

    callsctl_main()


if __name__ == "__main__":
    main()
