"""``Ticker``: the periodic actions of the jobs in progress (lease renewals, cancel checks).

One timer per ticker serves every job, instead of one per job: most jobs end long before the
first tick, so registering must cost next to nothing (a dict entry), and a job that ends needs
no timer cancelled and no task cancelled (which a store driver could swallow).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["Ticker"]

_log = logging.getLogger("flowcraft.distributed")

Action = Callable[[], Coroutine[Any, Any, None]]


class Ticker:
    """Runs every registered action each ``interval`` seconds while any is registered.

    An action is first run within one interval of :meth:`add`, then every interval; one still
    running at the next tick is not started again. A failing action is logged and the job it
    serves is unaffected.
    """

    def __init__(self, interval: float, name: str) -> None:
        self._interval = interval
        self._name = name
        self._actions: dict[object, Action] = {}
        self._busy: set[object] = set()
        self._running: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def add(self, action: Action) -> object:
        """Register ``action``; the key that :meth:`remove` takes."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A new event loop (tests run one per test): nothing of the old one carries over.
            self._loop, self._timer = loop, None
            self._busy.clear()
            self._running.clear()
        key = object()
        self._actions[key] = action
        if self._timer is None:
            self._timer = loop.call_later(self._interval, self._tick)
        return key

    def remove(self, key: object) -> None:
        """Stop running the action of ``key`` (one under way finishes on its own)."""
        self._actions.pop(key, None)

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        self._timer = None
        for key, action in list(self._actions.items()):
            if key in self._busy:
                continue
            self._busy.add(key)
            task = loop.create_task(action(), name=self._name)
            self._running.add(task)
            task.add_done_callback(functools.partial(self._done, key))
        if self._actions:
            self._timer = loop.call_later(self._interval, self._tick)

    async def close(self) -> None:
        """Stop ticking and cancel the actions under way (their adapter is closing: one left
        waiting for a connection of a closed pool would never end)."""
        self._actions.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        running = [t for t in self._running if t.get_loop() is asyncio.get_running_loop()]
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    def _done(self, key: object, task: asyncio.Task[None]) -> None:
        self._busy.discard(key)
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.warning("%s failed", task.get_name(), exc_info=task.exception())
