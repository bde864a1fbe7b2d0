"""``MemoryAdapter``: the reference backend, everything in this process.

Options: ``visibility`` (lease seconds), ``max_deliveries`` and ``hop_step`` of the shared
:class:`MemoryBackend`; the adapter's own options are those of
:class:`~flowcraft.distributed.DistributedAdapter`.

Features: leases with redelivery, dead letters, TTLs, push waits and the one-step hop.
Several adapters (workers) share one :class:`MemoryBackend`; it is the embedded default and
the control group of the contract suite.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Literal

from flowcraft.blueprint import Blueprint
from flowcraft.distributed import DistributedAdapter
from flowcraft.errors import FlowcraftError
from flowcraft.memory.context import MemoryContextStore
from flowcraft.memory.coordination import MemoryCoordinationStore
from flowcraft.memory.events import MemoryEventLog
from flowcraft.memory.hop import MemoryHopCommitter, MemorySplitCoordination
from flowcraft.memory.queue import MemoryQueue
from flowcraft.memory.results import MemoryResultChannel, MemoryWakes

__all__ = ["JoinTimeout", "MemoryAdapter", "MemoryBackend"]


class JoinTimeout(FlowcraftError):
    """:meth:`MemoryAdapter.join` timed out with jobs left."""


class MemoryBackend:
    """The shared state of one in-memory deployment: queue, stores and result wakes.

    Args:
        visibility: Seconds a delivered job stays leased.
        max_deliveries: Deliveries after which the queue dead-letters a job.
        hop_step: Whether adapters finish common hops in one step (:mod:`flowcraft.memory.hop`);
            ``"split"``: in core's split hop over a coordination store that claims hops in one
            step, as on a backend whose stores are on different servers; off, every hop takes
            the generic path, as on a backend without either.
    """

    def __init__(
        self,
        *,
        visibility: float = 30.0,
        max_deliveries: int = 10,
        hop_step: bool | Literal["split"] = True,
    ) -> None:
        self.queue = MemoryQueue(visibility=visibility, max_deliveries=max_deliveries)
        self.context = MemoryContextStore()
        self.coordination = (
            MemorySplitCoordination() if hop_step == "split" else MemoryCoordinationStore()
        )
        self.wakes = MemoryWakes()
        self.events = MemoryEventLog()
        self.hops = MemoryHopCommitter(self.queue, self.context, self.coordination)
        self.hop_step = hop_step

    def purge(self) -> None:
        """Forget all jobs, dead letters, contexts and coordination keys."""
        self.queue.purge()
        self.context.purge()
        self.coordination.purge()
        self.events.purge()


class MemoryAdapter(DistributedAdapter):
    """The in-memory adapter; one per worker or client, all sharing ``backend``.

    Args:
        backend: The shared state; a new one when omitted.
        registry: As for :class:`~flowcraft.distributed.DistributedAdapter`.
        blueprints: As for :class:`~flowcraft.distributed.DistributedAdapter`.
        **options: Further options of the adapter (``lease`` defaults to the queue's
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
            queue=self.backend.queue,
            context=self.backend.context,
            coordination=self.backend.coordination,
            results=MemoryResultChannel(self.backend.wakes),
            hops=self.backend.hops if self.backend.hop_step is True else None,
            events=self.backend.events,
            registry=registry,
            blueprints=blueprints,
            **options,
        )

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
