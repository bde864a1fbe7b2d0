"""``Coalescer``: the calls of one event-loop tick sent as one request.

A worker's jobs move in step (they arrive in one pull and finish in the same tick), and each
Pub/Sub request costs a round trip and a share of client CPU whatever it carries, while one
``acknowledge``, ``modifyAckDeadline`` or ``publish`` takes many ids or messages. So acks,
lease changes and publishes queued in one tick go out together; each caller still learns
whether its own request succeeded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["Coalescer"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

Send = Callable[[K, list[T]], Awaitable[None]]


class Coalescer(Generic[K, T]):
    """Groups items by key (a topic, a deadline) and sends each group once per tick.

    Args:
        send: Sends one group: the key and its items (at most ``limit``).
        limit: Most items one request may carry (Pub/Sub: 1,000 messages per publish,
            2,500 ack ids per acknowledge).
    """

    def __init__(self, send: Send[K, T], limit: int) -> None:
        self._send = send
        self._limit = limit
        self._pending: dict[K, list[tuple[T, asyncio.Future[None]]]] = {}
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def add(self, key: K, item: T) -> None:
        """Send ``item`` with the others of this tick under ``key``; return once sent.

        Raises:
            Exception: What sending its group raised.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.setdefault(key, []).append((item, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        for key, queued in pending.items():
            for start in range(0, len(queued), self._limit):
                task = asyncio.ensure_future(self._run(key, queued[start : start + self._limit]))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _run(self, key: K, queued: list[tuple[T, asyncio.Future[None]]]) -> None:
        try:
            await self._send(key, [item for item, _ in queued])
        except asyncio.CancelledError:
            for _, future in queued:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in queued:
                if not future.done():
                    future.set_exception(exc)
            return
        for _, future in queued:
            if not future.done():
                future.set_result(None)

    def cancel(self) -> None:
        """Drop what is queued and stop requests in flight (their callers see the error)."""
        for task in list(self._tasks):
            task.cancel()
        for queued in self._pending.values():
            for _, future in queued:
                future.cancel()
        self._pending.clear()
