"""Entry point of a job's process: `python -m callsctl_sfu.jobs.worker JOB.json`.

Runs the job named in the spec and leaves result.json beside it, then exits
0 on success or 1 with the error in result.json (and one line on stderr).
Both runners use it: the local pool starts it as a child process, and a
`callsctl worker` pulled the job from the Redis queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from callsctl_sfu.jobs.runner import RESULT_FILE

log = logging.getLogger("callsctl_sfu.jobs.worker")


# SIGTERM can come while the job is still importing aiortc: remember it, do not die.
EARLY_STOP: list[str] = []


def _early_stop(signum: int, _frame: Any) -> None:
    EARLY_STOP.append(signal.Signals(signum).name)


async def run_job(spec: dict[str, Any], directory: Path) -> dict[str, Any]:
    kind = spec.get("type")
    if kind == "recording":
        from callsctl_sfu.jobs.recorder.run import record

        return await record(spec, directory, lambda: bool(EARLY_STOP))
    if kind == "captions":
        from callsctl_sfu.jobs.transcribe.live import caption

        return await caption(spec, directory, lambda: bool(EARLY_STOP))
    if kind == "transcription":
        from callsctl_sfu.jobs.transcribe.run import transcribe

        return await transcribe(spec)
    return {"error": f"unknown job type {kind!r}"}


def write_result(directory: Path, result: dict[str, Any]) -> None:
    partial = directory / f".{RESULT_FILE}.part"
    partial.write_text(json.dumps(result))
    os.replace(partial, directory / RESULT_FILE)


def main(argv: list[str]) -> int:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _early_stop)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(argv) != 1:
        print("usage: python -m callsctl_sfu.jobs.worker JOB.json", file=sys.stderr)
        return 2
    spec_path = Path(argv[0])
    try:
        spec = json.loads(spec_path.read_text())
    except (OSError, ValueError) as exc:
        print(f"cannot read job spec {spec_path}: {exc}", file=sys.stderr)
        return 2
    directory = spec_path.parent
    try:
        result = asyncio.run(run_job(spec, directory))
    except Exception as exc:
        log.error("job failed: %s", exc, exc_info=not isinstance(exc, RuntimeError))
        result = {"error": str(exc) or type(exc).__name__}
    try:
        write_result(directory, result)
    except OSError as exc:
        print(f"cannot write {RESULT_FILE}: {exc}", file=sys.stderr)
        return 1
    if result.get("error"):
        print(f"job failed: {result['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
