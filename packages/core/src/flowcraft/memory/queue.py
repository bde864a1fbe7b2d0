"""``MemoryQueue``: at-least-once delivery with leases and a dead-letter list.

The reference :class:`~flowcraft.distributed.Queue`; one instance is shared by every adapter
of a :class:`~flowcraft.memory.MemoryBackend`, as one broker queue is by every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass

from flowcraft.distributed._protocols import Delivery

__all__ = ["DeadLetter", "MemoryQueue"]


@dataclass(slots=True)
class _Message:
    id: int
    body: str
    visible_at: float
    deliveries: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered job and why."""

    body: str
    reason: str


class MemoryQueue:
    """One queue shared by every worker of a :class:`~flowcraft.memory.MemoryBackend`.

    A received job is invisible for ``visibility`` seconds (its lease); unless acked or
    extended by then, it is delivered again. After ``max_deliveries`` deliveries it is
    dead-lettered instead.
    """

    def __init__(self, *, visibility: float = 30.0, max_deliveries: int = 10) -> None:
        self.visibility = visibility
        self.max_deliveries = max_deliveries
        self.dead_letters: list[DeadLetter] = []
        self._messages: dict[int, _Message] = {}
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()

    def put(self, body: str) -> None:
        """Enqueue a job (synchronously, for tests injecting raw bodies)."""
        message = _Message(next(self._ids), body, time.monotonic())
        self._messages[message.id] = message
        self._changed.set()

    def leased(self, body: str) -> Delivery:
        """Enqueue a job already delivered once and leased to the caller (a reservation)."""
        message = _Message(next(self._ids), body, time.monotonic() + self.visibility, 1)
        self._messages[message.id] = message
        return Delivery(body, message.id, 1)

    async def reserve(self, delivery: Delivery, body: str) -> Delivery | None:
        """``body`` leased to the caller (:class:`~flowcraft.distributed.ReservingQueue`)."""
        return self.leased(body)

    def unreserve(self, delivery: Delivery, successor: Delivery) -> None:
        """Drop a reserved job (whoever unreserves it enqueues it again or fails)."""
        self._messages.pop(successor.handle, None)

    async def enqueue(self, body: str) -> None:
        """Enqueue a job."""
        self.put(body)

    def take(self, max_jobs: int) -> list[Delivery]:
        """Up to ``max_jobs`` visible jobs, leased now (no waiting)."""
        now = time.monotonic()
        out: list[Delivery] = []
        for message in sorted(self._messages.values(), key=lambda m: (m.visible_at, m.id)):
            if len(out) >= max_jobs or message.visible_at > now:
                break
            if message.deliveries >= self.max_deliveries:
                del self._messages[message.id]
                self.dead_letters.append(
                    DeadLetter(message.body, f"delivered {message.deliveries} times")
                )
                continue
            message.deliveries += 1
            message.visible_at = now + self.visibility
            out.append(Delivery(message.body, message.id, message.deliveries))
        return out

    async def receive(self, max_jobs: int, wait: float) -> list[Delivery]:
        """Up to ``max_jobs`` visible jobs, waiting up to ``wait`` s for one."""
        deadline = time.monotonic() + wait
        while True:
            out = self.take(max_jobs)
            if out:
                return out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            soonest = min((m.visible_at for m in self._messages.values()), default=deadline)
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait(), max(0.001, min(remaining, soonest - time.monotonic()))
                )

    async def ack(self, delivery: Delivery) -> None:
        """Remove a job for good."""
        self.settle(delivery)

    def settle(self, delivery: Delivery) -> None:
        """Remove a job for good (synchronously: the hop step acks inside its atomic step)."""
        self._messages.pop(delivery.handle, None)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a job to :attr:`dead_letters`."""
        self._messages.pop(delivery.handle, None)
        self.dead_letters.append(DeadLetter(delivery.body, reason))

    async def release(self, delivery: Delivery) -> None:
        """Make a job visible again now."""
        message = self._messages.get(delivery.handle)
        if message is not None:
            message.visible_at = time.monotonic()
            self._changed.set()

    async def unsettled(self, delivery: Delivery, lease: float) -> None:
        """Nothing to do: an unrenewed lease runs out by itself."""

    async def extend_lease(self, delivery: Delivery, seconds: float) -> None:
        """Keep a received job invisible ``seconds`` longer from now."""
        message = self._messages.get(delivery.handle)
        if message is not None:
            message.visible_at = time.monotonic() + seconds

    async def stop_receiving(self) -> None:
        """Nothing to do: nothing is prefetched."""

    def abandon(self) -> None:
        """Nothing to do: leases are not renewed in the background."""

    async def close(self) -> None:
        """Nothing to close: the queue outlives its adapters."""

    def __len__(self) -> int:
        return len(self._messages)

    def purge(self) -> None:
        """Drop every job and dead letter."""
        self._messages.clear()
        self.dead_letters.clear()
