"""Runs sync node code in worker threads with a cheaper hop than ``run_in_executor``.

Each hop is one queue put and one ``call_soon_threadsafe``; threads start lazily and live for
the process (daemons). The caller's context variables travel with the call, so tracing and
logging context set by middleware reach sync nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

__all__ = ["run_in_thread"]

_MAX_THREADS = min(32, (os.cpu_count() or 1) + 4)

_Item = tuple[
    asyncio.AbstractEventLoop,
    "asyncio.Future[Any]",
    contextvars.Context,
    Callable[..., Any],
    tuple[Any, ...],
]


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    # The awaiting side may have given up (timeout, cancellation) before the thread finished.
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class _Pool:
    def __init__(self, max_threads: int) -> None:
        self._queue: SimpleQueue[_Item] = SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._max = max_threads

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put((loop, future, contextvars.copy_context(), fn, args))
        # Each item either claims an idle thread or starts one; past the limit it queues.
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
            elif self._threads < self._max:
                self._threads += 1
                threading.Thread(target=self._work, name="flowcraft-sync", daemon=True).start()
        return future

    def _work(self) -> None:
        claimed = True
        while True:
            if not claimed:
                with self._lock:
                    self._idle += 1
            claimed = False
            loop, future, context, fn, args = self._queue.get()
            try:
                value = context.run(fn, *args)
            except BaseException as exc:  # handed to the awaiting coroutine, never lost
                ok, value = False, exc
            else:
                ok = True
            # A loop closed while the node ran has nobody waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, ok, value)


_POOL = _Pool(_MAX_THREADS)


def run_in_thread(fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
    """Run ``fn(*args)`` in a worker thread; await the returned future for its result."""
    return _POOL.submit(fn, args)
