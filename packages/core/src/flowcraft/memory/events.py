"""``MemoryEventLog``: each run's events, shared by every adapter of a memory backend."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Sequence

__all__ = ["MemoryEventLog"]


class MemoryEventLog:
    """An :class:`~flowcraft.distributed.EventLog` in this process, ``max_events`` per run."""

    def __init__(self, max_events: int = 10_000) -> None:
        self._runs: dict[str, deque[tuple[str, bytes]]] = {}
        self._max = max_events
        self._sequence = itertools.count(1)
        self._changed = asyncio.Condition()

    async def append(self, run_id: str, events: Sequence[bytes]) -> None:
        log = self._runs.setdefault(run_id, deque(maxlen=self._max))
        for event in events:
            log.append((f"{next(self._sequence):012d}", event))
        async with self._changed:
            self._changed.notify_all()

    async def read(self, run_id: str, after: str | None, wait: float) -> list[tuple[str, bytes]]:
        def fresh() -> list[tuple[str, bytes]]:
            log = self._runs.get(run_id, ())
            return [(c, e) for c, e in log if after is None or c > after]

        out = fresh()
        if out or wait <= 0:
            return out
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(lambda: bool(fresh())), wait)
        return fresh()

    def purge(self) -> None:
        """Forget every run's events."""
        self._runs.clear()
