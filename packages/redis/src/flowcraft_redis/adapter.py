"""The Redis adapters: ``RedisAdapter`` (BullMQ transport) and ``RedisStreamsAdapter`` (Streams).

Both keep runs in the same stores (context hash ``workflow:state:<runId>``, coordination keys,
status string ``workflow:status:<runId>``) and differ only in the queue:

* ``RedisAdapter`` queues on BullMQ (queue ``flowcraft-queue``, job ``executeNode``), for TS
  wire compatibility, BullMQ dashboards and stalled-job recovery.
* ``RedisStreamsAdapter`` queues on a Redis Stream with a consumer group and finishes the
  common hop in one Lua step (result, context, join marks, successors and ack), for speed.

Options: ``settings`` (or ``REDIS_URL``), ``concurrency`` (BullMQ: jobs handed over at once),
``client`` (an existing ``redis.asyncio`` client, not closed by the adapter), plus every option
of :class:`~flowcraft.distributed.BaseDistributedAdapter`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, cast

import redis.asyncio as aioredis

from flowcraft.blueprint import Blueprint
from flowcraft.distributed import BaseDistributedAdapter, Delivery
from flowcraft.distributed._hop import Hop, HopCommit
from flowcraft.errors import FlowcraftError
from flowcraft.result import WorkflowStatus
from flowcraft_redis._arrival import ArrivalReader
from flowcraft_redis._batch import Batcher
from flowcraft_redis._errors import translated
from flowcraft_redis._results import ResultChannel
from flowcraft_redis._settings import RedisSettings
from flowcraft_redis.context import RedisContextStore
from flowcraft_redis.coordination import RedisCoordinationStore
from flowcraft_redis.hop import HopCommitter
from flowcraft_redis.queue import BullMQQueue
from flowcraft_redis.streams import StreamsQueue

__all__ = ["RedisAdapter", "RedisStreamsAdapter"]


class _RedisBase(BaseDistributedAdapter):
    """Stores, result channel and queue delegation shared by both transports.

    Args:
        settings: Connection and key layout (default: ``REDIS_URL`` or localhost).
        registry: ``uses`` key → implementation.
        blueprints: Blueprint id → blueprint.
        concurrency: How many jobs the queue client takes at once (see each transport).
        client: An existing ``redis.asyncio`` client to share (closed by its owner).
        **options: Options of :class:`~flowcraft.distributed.BaseDistributedAdapter`.
    """

    _hops: HopCommitter

    def __init__(
        self,
        settings: RedisSettings | None = None,
        *,
        registry: Mapping[str, Any] | None = None,
        blueprints: Mapping[str, Blueprint] | None = None,
        concurrency: int = 16,
        client: aioredis.Redis | None = None,
        **options: Any,
    ) -> None:
        self.settings = settings or RedisSettings.from_env()
        self._owns_client = client is None
        self.redis = client if client is not None else self.settings.client()
        options.setdefault("lease", self.settings.lease_seconds)
        self.batcher = Batcher(self.redis, self.settings.retry())
        self.coordination: RedisCoordinationStore = RedisCoordinationStore(
            self.redis, self.settings, self.batcher
        )
        self.context: RedisContextStore = RedisContextStore(self.redis, self.settings, self.batcher)
        super().__init__(
            coordination=self.coordination,
            context=self.context,
            registry=registry,
            blueprints=blueprints,
            **options,
        )
        self.results = ResultChannel(self.redis, self.settings, self.batcher)
        self._arrivals = ArrivalReader(self.redis, self.settings, self.batcher)
        self.queue = self._make_queue(concurrency)

    @abstractmethod
    def _make_queue(self, concurrency: int) -> Any:
        """The transport's queue client (and its hop committer, ``self._hops``)."""

    async def _commit_hop(self, delivery: Delivery, hop: Hop) -> HopCommit | None:
        return await self._hops.commit(delivery, hop)

    async def _receive(self, max_jobs: int, wait: float) -> list[Delivery]:
        deliveries: list[Delivery] = await self.queue.receive(max_jobs, wait)
        return deliveries

    async def _enqueue(self, body: str, delay: float = 0.0) -> None:
        await self.queue.enqueue(body, delay)

    async def _ack(self, delivery: Delivery) -> None:
        await self.queue.ack(delivery)

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        await self.queue.dead_letter(delivery, reason)

    async def _release(self, delivery: Delivery) -> None:
        await self.queue.release(delivery)

    async def _extend_lease(self, delivery: Delivery, seconds: float) -> None:
        await self.queue.extend_lease(delivery, seconds)

    async def _unsettled(self, delivery: Delivery) -> None:
        await self.queue.unsettled(delivery, self.lease)

    async def _read_job(
        self, run_id: str, keys: list[str], set_keys: list[str], context_keys: list[str] | None
    ) -> tuple[list[str | None], list[set[str]], dict[str, Any]]:
        async with translated():
            return await self._arrivals.read(run_id, keys, set_keys, context_keys or [])

    async def _publish_result(
        self, run_id: str, status: str, errors: list[FlowcraftError] | None = None
    ) -> None:
        result = None
        if status != "awaiting":
            # Known errors spare reading back the final record just written.
            if errors is None:
                result = await self.final_result(run_id)
            else:
                result = await self._result(run_id, cast(WorkflowStatus, status), errors)
        await self.results.publish(run_id, result)

    async def _wait_for_publish(self, run_id: str, timeout: float) -> None:
        await self.results.wait(run_id, timeout)

    async def stop_receiving(self) -> None:
        self.queue.stop_receiving()

    def abandon(self) -> None:
        self.queue.abandon()

    async def close(self) -> None:
        await self.queue.close()
        self.batcher.close()
        if self._owns_client:
            await self.redis.aclose()


class RedisAdapter(_RedisBase):
    """Distributed runs on Redis with BullMQ as the queue (``concurrency``: jobs BullMQ hands
    over at once); the arguments are :class:`_RedisBase`'s."""

    def _make_queue(self, concurrency: int) -> BullMQQueue:
        queue = BullMQQueue(
            self.settings, concurrency=concurrency, lock_duration=self.lease, batcher=self.batcher
        )
        self._hops = HopCommitter(self.redis, self.settings, self.batcher, enqueue=queue.enqueue)
        return queue


class RedisStreamsAdapter(_RedisBase):
    """Distributed runs on Redis with a Redis Stream as the queue and one Lua step per hop
    (``concurrency``: most entries one read fetches; the worker's free slots bound it too); the
    arguments are :class:`_RedisBase`'s."""

    # Queued successors carry their arrival read, which the stream read makes (streams.py).
    _reads_ahead = True

    def _make_queue(self, concurrency: int) -> StreamsQueue:
        queue = StreamsQueue(
            self.redis, self.settings, lease=self.lease, batch=concurrency, batcher=self.batcher
        )
        self._hops = HopCommitter(self.redis, self.settings, self.batcher, stream=queue)
        return queue
