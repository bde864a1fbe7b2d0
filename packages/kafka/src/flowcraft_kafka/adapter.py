"""``KafkaAdapter``: jobs on Kafka, contexts in Cassandra, coordination and wakes in Redis.

Options: ``settings`` (or the environment, see :mod:`flowcraft_kafka.settings`), plus every
option of :class:`~flowcraft.backend.DistributedAdapter`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from flowcraft.backend import DistributedAdapter
from flowcraft.blueprint import Blueprint
from flowcraft_kafka.context import CassandraContextStore, CassandraSession
from flowcraft_kafka.queue import KafkaQueue
from flowcraft_kafka.results import KafkaResultChannel
from flowcraft_kafka.settings import KafkaSettings
from flowcraft_redis_store import Batcher, RedisCoordinationStore, RedisResultChannel

__all__ = ["KafkaAdapter"]


class KafkaAdapter(DistributedAdapter):
    """Distributed runs on Apache Kafka, Apache Cassandra and Redis.

    Args:
        settings: Servers and names (default: from the environment).
        registry: ``uses`` key → implementation.
        blueprints: Blueprint id → blueprint.
        **options: Options of :class:`~flowcraft.backend.DistributedAdapter` (``lease``
            defaults to ``settings.redis.lease_seconds``).
    """

    queue: KafkaQueue

    def __init__(
        self,
        settings: KafkaSettings | None = None,
        *,
        registry: Mapping[str, Any] | None = None,
        blueprints: Mapping[str, Blueprint] | None = None,
        **options: Any,
    ) -> None:
        settings = settings or KafkaSettings.from_env()
        if not settings.redis.client_name:
            settings = replace(settings, redis=replace(settings.redis, client_name=settings.name))
        self.settings = settings
        redis_settings = settings.redis
        self.redis = redis_settings.client()
        self.batcher = Batcher(self.redis, redis_settings.retry())
        self.cassandra = CassandraSession(settings)
        lease = float(options.pop("lease", redis_settings.lease_seconds))
        parts = (self.redis, redis_settings, self.batcher)
        context = CassandraContextStore(self.cassandra)
        super().__init__(
            queue=KafkaQueue(settings, self.batcher, lease=lease, adopt=context.adopt),
            context=context,
            coordination=RedisCoordinationStore(*parts),
            results=KafkaResultChannel(self.cassandra, RedisResultChannel(*parts)),
            closers=[self.cassandra.close, self._close_batcher, self.redis.aclose],
            registry=registry,
            blueprints=blueprints,
            lease=lease,
            **options,
        )

    async def _close_batcher(self) -> None:
        self.batcher.close()
