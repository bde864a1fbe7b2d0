"""``MemoryAdapter``: the reference backend, everything in this process.

Options: ``visibility`` (lease seconds) and ``max_deliveries`` of the queue; the adapter's own
options are those of :class:`~flowcraft.distributed.BaseDistributedAdapter`.

Features: delayed jobs, leases with redelivery, dead letters, TTLs, push waits. Several
adapters (workers) share one :class:`MemoryBackend`; it is the embedded default and the control
group of the contract suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

from flowcraft.blueprint import Blueprint
from flowcraft.distributed import BaseDistributedAdapter, Delivery
from flowcraft.errors import FlowcraftError
from flowcraft.memory.context import MemoryContextStore
from flowcraft.memory.coordination import MemoryCoordinationStore
from flowcraft.memory.queue import MemoryQueue

__all__ = ["JoinTimeout", "MemoryAdapter", "MemoryBackend"]


class JoinTimeout(FlowcraftError):
    """:meth:`MemoryAdapter.join` timed out with jobs left."""


class MemoryBackend:
    """The shared state of one in-memory deployment: queue, stores and result notifications."""

    def __init__(self, *, visibility: float = 30.0, max_deliveries: int = 10) -> None:
        self.queue = MemoryQueue(visibility=visibility, max_deliveries=max_deliveries)
        self.context = MemoryContextStore()
        self.coordination = MemoryCoordinationStore()
        self._published: dict[str, asyncio.Condition] = {}
        self._generation: dict[str, int] = {}

    def _condition(self, run_id: str) -> asyncio.Condition:
        condition = self._published.get(run_id)
        if condition is None:
            condition = self._published[run_id] = asyncio.Condition()
        return condition

    async def notify(self, run_id: str) -> None:
        """Wake the waiters of ``run_id``."""
        condition = self._condition(run_id)
        async with condition:
            self._generation[run_id] = self._generation.get(run_id, 0) + 1
            condition.notify_all()

    def generation(self, run_id: str) -> int:
        """How many times ``run_id`` published."""
        return self._generation.get(run_id, 0)

    async def wait(self, run_id: str, seen: int, timeout: float) -> None:
        """Until ``run_id`` published after generation ``seen``, or ``timeout`` s."""
        condition = self._condition(run_id)
        async with condition:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    condition.wait_for(lambda: self.generation(run_id) > seen), timeout
                )

    def purge(self) -> None:
        """Forget all jobs, dead letters, contexts and coordination keys."""
        self.queue.purge()
        self.context.purge()
        self.coordination.purge()
        self._generation.clear()


class MemoryAdapter(BaseDistributedAdapter):
    """The in-memory adapter; one per worker or client, all sharing ``backend``.

    Args:
        backend: The shared state; a new one when omitted.
        registry: As for :class:`~flowcraft.distributed.BaseDistributedAdapter`.
        blueprints: As for :class:`~flowcraft.distributed.BaseDistributedAdapter`.
        **options: Further options of the base adapter (``lease`` defaults to the queue's
            visibility).
    """

    def __init__(
        self,
        backend: MemoryBackend | None = None,
        *,
        registry: Mapping[str, Any] | None = None,
        blueprints: Mapping[str, Blueprint] | None = None,
        **options: Any,
    ) -> None:
        self.backend = backend or MemoryBackend()
        options.setdefault("lease", self.backend.queue.visibility)
        super().__init__(
            coordination=self.backend.coordination,
            context=self.backend.context,
            registry=registry,
            blueprints=blueprints,
            **options,
        )
        self._seen: dict[str, int] = {}

    async def _receive(self, max_jobs: int, wait: float) -> list[Delivery]:
        return await self.backend.queue.receive(max_jobs, wait)

    async def _enqueue(self, body: str, delay: float = 0.0) -> None:
        self.backend.queue.put(body, delay)

    async def _ack(self, delivery: Delivery) -> None:
        self.backend.queue.ack(delivery.handle)

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        self.backend.queue.dead_letter(delivery.handle, delivery.body, reason)

    async def _release(self, delivery: Delivery) -> None:
        self.backend.queue.release(delivery.handle)

    async def _extend_lease(self, delivery: Delivery, seconds: float) -> None:
        self.backend.queue.extend(delivery.handle, seconds)

    async def _publish_result(
        self, run_id: str, status: str, errors: list[FlowcraftError] | None = None
    ) -> None:
        await self.backend.notify(run_id)

    async def _wait_for_publish(self, run_id: str, timeout: float) -> None:
        # The generation seen at the previous check: a publish in between is not missed.
        seen = self._seen.get(run_id, 0)
        await self.backend.wait(run_id, seen, timeout)
        self._seen[run_id] = self.backend.generation(run_id)

    async def wait_result(self, run_id: str, timeout: float | None = None) -> Any:
        self._seen[run_id] = self.backend.generation(run_id)
        return await super().wait_result(run_id, timeout)

    def purge(self) -> None:
        """Forget everything in the shared backend."""
        self.backend.purge()

    async def join(self, timeout: float = 30.0, *, fail_fast: bool = True) -> None:
        """Wait until no job is queued or running (test helper, like dramatiq's StubBroker).

        Raises:
            JoinTimeout: Jobs were left after ``timeout`` seconds.
            FlowcraftError: With ``fail_fast``, as soon as a job is dead-lettered.
        """
        deadline = time.monotonic() + timeout
        queue = self.backend.queue
        while len(queue):
            if fail_fast and queue.dead_letters:
                letter = queue.dead_letters[0]
                raise FlowcraftError(f"job dead-lettered: {letter.reason}")
            if time.monotonic() > deadline:
                raise JoinTimeout(f"{len(queue)} jobs left after {timeout} s")
            await asyncio.sleep(0.01)
        if fail_fast and queue.dead_letters:
            raise FlowcraftError(f"job dead-lettered: {queue.dead_letters[0].reason}")
