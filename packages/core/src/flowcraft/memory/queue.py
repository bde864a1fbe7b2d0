"""``MemoryQueue``: at-least-once delivery with leases, delays and a dead-letter list."""

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

    def put(self, body: str, delay: float = 0.0) -> None:
        """Enqueue a job visible after ``delay`` seconds."""
        message = _Message(next(self._ids), body, time.monotonic() + delay)
        self._messages[message.id] = message
        self._changed.set()

    def _take(self, max_jobs: int) -> list[Delivery]:
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
            out = self._take(max_jobs)
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

    def ack(self, handle: int) -> None:
        """Remove a job for good."""
        self._messages.pop(handle, None)

    def dead_letter(self, handle: int, body: str, reason: str) -> None:
        """Move a job to :attr:`dead_letters`."""
        self._messages.pop(handle, None)
        self.dead_letters.append(DeadLetter(body, reason))

    def release(self, handle: int) -> None:
        """Make a job visible again now."""
        message = self._messages.get(handle)
        if message is not None:
            message.visible_at = time.monotonic()
            self._changed.set()

    def extend(self, handle: int, seconds: float) -> None:
        """Keep a received job invisible ``seconds`` longer from now."""
        message = self._messages.get(handle)
        if message is not None:
            message.visible_at = time.monotonic() + seconds

    def __len__(self) -> int:
        return len(self._messages)

    def purge(self) -> None:
        """Drop every job and dead letter."""
        self._messages.clear()
        self.dead_letters.clear()
