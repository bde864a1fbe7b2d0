"""The Redis adapters: ``RedisAdapter`` (BullMQ transport) and ``RedisStreamsAdapter`` (Streams).

Both keep runs in the same stores (context hash ``workflow:state:<runId>``, coordination keys,
status string ``workflow:status:<runId>``; see ``flowcraft_redis_store``) and differ only in
the queue:

* ``RedisAdapter`` queues on BullMQ (queue ``flowcraft-queue``, job ``executeNode``), for TS
  wire compatibility, BullMQ dashboards and stalled-job recovery.
* ``RedisStreamsAdapter`` queues on a Redis Stream with a consumer group and finishes the
  common hop in one Lua step (result, context, join marks, successors and ack), for speed.

Options: ``settings`` (or ``REDIS_URL``), ``concurrency`` (BullMQ: jobs handed over at once;
Streams: most entries one read fetches), ``client`` (an existing ``redis.asyncio`` client, not
closed by the adapter), plus every option of :class:`~flowcraft.backend.DistributedAdapter`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis

from flowcraft.backend import DistributedAdapter, Queue
from flowcraft.blueprint import Blueprint
from flowcraft_redis._arrival import RedisArrivalReader
from flowcraft_redis.hop import RedisHopCommitter
from flowcraft_redis.queue import BullMQQueue
from flowcraft_redis.streams import StreamsQueue
from flowcraft_redis_store import (
    Batcher,
    RedisContextStore,
    RedisCoordinationStore,
    RedisEventLog,
    RedisResultChannel,
    RedisSettings,
)

__all__ = ["RedisAdapter", "RedisStreamsAdapter"]


class _RedisAdapter(DistributedAdapter):
    """The parts both transports share; a transport adds its queue and hop committer.

    Args:
        settings: Connection and key layout (default: ``REDIS_URL`` or localhost).
        registry: ``uses`` key → implementation.
        blueprints: Blueprint id → blueprint.
        concurrency: How many jobs the queue client takes at once.
        client: An existing ``redis.asyncio`` client to share (closed by its owner).
        **options: Options of :class:`~flowcraft.backend.DistributedAdapter`.
    """

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
        self.redis = client if client is not None else self.settings.client()
        self.batcher = Batcher(self.redis, self.settings.retry())
        lease = float(options.pop("lease", self.settings.lease_seconds))
        queue, hops = self._transport(concurrency, lease)
        closers = [self._close_batcher]
        if client is None:
            closers.append(self.redis.aclose)
        parts = (self.redis, self.settings, self.batcher)
        super().__init__(
            queue=queue,
            context=RedisContextStore(*parts),
            coordination=RedisCoordinationStore(*parts),
            results=RedisResultChannel(*parts),
            hops=hops,
            arrivals=RedisArrivalReader(*parts),
            events=RedisEventLog(*parts),
            closers=closers,
            registry=registry,
            blueprints=blueprints,
            lease=lease,
            **options,
        )

    def _transport(self, concurrency: int, lease: float) -> tuple[Queue, RedisHopCommitter]:
        raise NotImplementedError

    async def _close_batcher(self) -> None:
        self.batcher.close()


class RedisAdapter(_RedisAdapter):
    """Distributed runs on Redis with BullMQ as the queue (``concurrency``: jobs BullMQ hands
    over at once); the arguments are ``_RedisAdapter``'s."""

    queue: BullMQQueue

    def _transport(self, concurrency: int, lease: float) -> tuple[Queue, RedisHopCommitter]:
        queue = BullMQQueue(
            self.settings, concurrency=concurrency, lock_duration=lease, batcher=self.batcher
        )
        hops = RedisHopCommitter(self.redis, self.settings, self.batcher, enqueue=queue.enqueue)
        return queue, hops


class RedisStreamsAdapter(_RedisAdapter):
    """Distributed runs on Redis with a Redis Stream as the queue and one Lua step per hop
    (``concurrency``: most entries one read fetches; the worker's free slots bound it too); the
    arguments are ``_RedisAdapter``'s."""

    queue: StreamsQueue

    def _transport(self, concurrency: int, lease: float) -> tuple[Queue, RedisHopCommitter]:
        queue = StreamsQueue(
            self.redis, self.settings, lease=lease, batch=concurrency, batcher=self.batcher
        )
        hops = RedisHopCommitter(self.redis, self.settings, self.batcher, stream=queue)
        return queue, hops
