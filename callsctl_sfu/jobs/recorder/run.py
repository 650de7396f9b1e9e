"""A recording job from start to finish, inside its worker process.

Join, record until told to stop (SIGTERM from the runner, the call ending, the
recorder being removed, or the max duration), close every track file, write
metadata.json, compose the MP4. The result dict becomes the job's output.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import signal
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from callsctl_sfu.jobs.recorder.compose import COMPOSED_FILE, ComposeError, compose
from callsctl_sfu.jobs.recorder.session import RecorderSession

log = logging.getLogger("callsctl_sfu.jobs.recorder")

METADATA_FILE = "metadata.json"


def _client_ssl(ws_url: str) -> Any:
    """The server's own certificate may be self-signed; the recorder talks to it directly."""
    if not ws_url.startswith("wss:"):
        return None
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def record(spec: dict[str, Any], directory: Path,
                 stopped_early: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    session = RecorderSession(spec["ws_url"], spec["token"], spec["call"], directory,
                              _client_ssl(spec["ws_url"]))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, session.stop, "stopped")
    if stopped_early():  # the stop came while the worker was still starting
        session.stop("stopped")
    result: dict[str, Any] = {"call": spec["call"], "started_at": session.started_at}
    try:
        await session.start()
        max_duration = float(spec.get("max_duration", 3600))
        try:
            await asyncio.wait_for(session.ended.wait(), max_duration)
        except TimeoutError:
            session.stop("max_duration")
    finally:
        stopped_at = time.time()
        await session.close()
    duration = stopped_at - session.started_at
    participants = sorted({t["name"] for t in session.tracks if t["kind"] == "audio"} |
                          set(session.names.values()))
    result.update({"stopped_at": stopped_at, "duration_s": round(duration, 3),
                   "stop_reason": session.end_reason, "tracks": session.tracks,
                   "participants": participants})
    _write_metadata(directory, result)
    log.info("recorded %.1f s, %d track(s): %s", duration, len(session.tracks),
             session.end_reason)
    if isinstance(session.failure, OSError):
        code = getattr(session.failure, "errno", None)
        what = "disk full" if code == errno.ENOSPC else "write failed"
        result["error"] = (f"{what}: {session.end_reason}; the call was not affected and the "
                           "files written so far are kept")
        return result
    if session.failure is not None:
        result["error"] = str(session.failure)
        return result
    try:
        await asyncio.to_thread(compose, session.tracks, directory, duration, participants)
        result["composed"] = COMPOSED_FILE
    except ComposeError as exc:
        result["error"] = str(exc)
    _write_metadata(directory, result)
    return result


def _write_metadata(directory: Path, result: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # a full disk must not hide the real error
        (directory / METADATA_FILE).write_text(json.dumps(result, indent=2))
