"""Calls gathered into SQS's batch requests (ten entries each).

An entry goes out at the next event-loop tick with whatever else was submitted in that tick,
unless ``IN_FLIGHT`` batches of its kind are on the wire already: then it waits for one of
them to come back and leaves with the entries gathered meanwhile. A lone call pays no delay,
and under load the requests fill up instead of multiplying (a hop's ack and its successor's
send each cost a tenth of a request, not one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["IN_FLIGHT", "Batcher"]

E = TypeVar("E")
Flush = Callable[[Sequence[E]], Awaitable[Sequence[BaseException | None]]]
"""Sends one batch; the error of each entry (None where it succeeded), in order."""

_SQS_BATCH = 10
IN_FLIGHT = 2
"""Batches of one kind on the wire at once."""


class Batcher(Generic[E]):
    """Gathers submitted entries into batches of ten, at most ``IN_FLIGHT`` on the wire.

    A caller awaits its own entry's outcome; a batch that fails as a whole fails each of
    its callers with that error.
    """

    def __init__(self, flush: Flush[E], in_flight: int = IN_FLIGHT) -> None:
        self._flush = flush
        self._limit = in_flight
        self._pending: list[tuple[E, asyncio.Future[None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._scheduled = False

    async def submit(self, entry: E) -> None:
        """Send ``entry`` with whatever else is waiting to go."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((entry, future))
        self._schedule(loop)
        await future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._scheduled and len(self._tasks) < self._limit:
            self._scheduled = True
            loop.call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = False
        while self._pending and len(self._tasks) < self._limit:
            batch, self._pending = self._pending[:_SQS_BATCH], self._pending[_SQS_BATCH:]
            task = asyncio.ensure_future(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._pending:
            self._schedule(asyncio.get_running_loop())

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
