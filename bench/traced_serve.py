"""`callsctl serve` with tracemalloc on: each SIGUSR2 dumps a snapshot (bench/memory.py --trace).

    python bench/traced_serve.py SNAPSHOT_PREFIX serve --bind 127.0.0.1 ...

The n-th SIGUSR2 writes SNAPSHOT_PREFIX.<n> (tracemalloc.Snapshot.dump), then
writes SNAPSHOT_PREFIX.<n>.done so the reader knows the dump is complete.
tracemalloc slows every allocation and about doubles the heap, so the RSS of
a traced server is not a figure; only the traced allocation sites are.
The product itself carries no tracing code: this wrapper is all of it.
"""

from __future__ import annotations

import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType


def main() -> None:
    # Serve the checkout this file is in, as `python -m callsctl` from its root would
    # (not whatever callsctl the environment has installed).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    prefix = Path(sys.argv[1])
    count = 0

    def dump(_signum: int, _frame: FrameType | None) -> None:
        nonlocal count
        count += 1
        path = prefix.with_name(f"{prefix.name}.{count}")
        tracemalloc.take_snapshot().dump(str(path))
        path.with_name(path.name + ".done").touch()

    tracemalloc.start(1)
    signal.signal(signal.SIGUSR2, dump)
    sys.argv = ["callsctl", *sys.argv[2:]]
    from callsctl.app import main as callsctl_main

    callsctl_main()


if __name__ == "__main__":
    main()
