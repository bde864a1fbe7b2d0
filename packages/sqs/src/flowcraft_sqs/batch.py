"""Calls of one event-loop tick gathered into SQS's batch requests (ten entries each)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Batcher"]

E = TypeVar("E")
Flush = Callable[[Sequence[E]], Awaitable[Sequence[BaseException | None]]]
"""Sends one batch; the error of each entry (None where it succeeded), in order."""

_SQS_BATCH = 10


class Batcher(Generic[E]):
    """Gathers the entries submitted during one tick and sends them in batches of ten.

    A caller awaits its own entry's outcome; a batch that fails as a whole fails each of
    its callers with that error.
    """

    def __init__(self, flush: Flush[E]) -> None:
        self._flush = flush
        self._pending: list[tuple[E, asyncio.Future[None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, entry: E) -> None:
        """Send ``entry`` with whatever else is submitted in this tick."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._start)
        self._pending.append((entry, future))
        await future

    def _start(self) -> None:
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), _SQS_BATCH):
            task = asyncio.ensure_future(self._send(pending[start : start + _SQS_BATCH]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[E, asyncio.Future[None]]]) -> None:
        try:
            errors = await self._flush([entry for entry, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), error in zip(batch, errors, strict=True):
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
