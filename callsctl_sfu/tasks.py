"""Background tasks whose failures are seen once, never lost and never a traceback flood.

asyncio logs "Task exception was never retrieved" with a traceback when a
failed task nobody awaited is garbage-collected, possibly long after the fact.
The server's own tasks are started with `spawn`, which keeps a reference until
the task ends and logs its failure as one line when it happens. Tasks started
inside libraries (aiortc schedules RTCPeerConnection.__connect itself) cannot
be given a callback, so `install_exception_handler` turns the loop's report
into one line too, at most once per task name per interval (a client can make
aiortc fail on purpose). With --log-level debug the traceback follows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from callsctl_sfu.ratelog import RateLimitedLog

log = logging.getLogger("callsctl_sfu.tasks")
_running: set[asyncio.Task[Any]] = set()
_loop_log = RateLimitedLog(log)


def spawn(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
    """Start `coro` as a task that is referenced until done and whose failure is logged."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _running.add(task)
    task.add_done_callback(_finished)
    return task


def _finished(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if task.cancelled():
        return
    exc = task.exception()  # retrieved: asyncio will not report it again
    if exc is not None:
        log.error("task %s failed: %s: %s", task.get_name(), type(exc).__name__, exc)
        log.debug("task %s traceback", task.get_name(), exc_info=exc)


def _origin(context: dict[str, Any]) -> str:
    """A name for what failed: the coroutine's qualified name, or asyncio's message."""
    future = context.get("task") or context.get("future")
    if isinstance(future, asyncio.Task):
        coro = future.get_coro()
        return getattr(coro, "__qualname__", None) or future.get_name()
    handle = context.get("handle")
    if handle is not None:
        return repr(handle)[:100]
    return str(context.get("message", "event loop"))


def _handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    origin = _origin(context)
    message = context.get("message", "unhandled error")
    if exc is None:
        _loop_log.warning(origin, "%s (%s)", message, origin)
        return
    if _loop_log.log(logging.ERROR, origin, "%s: %s: %s: %s", message, origin,
                     type(exc).__name__, exc):
        log.debug("%s traceback", origin, exc_info=exc)


def install_exception_handler(loop: asyncio.AbstractEventLoop) -> None:
    """One line per failure for whatever the loop would report with a traceback."""
    loop.set_exception_handler(_handle)
