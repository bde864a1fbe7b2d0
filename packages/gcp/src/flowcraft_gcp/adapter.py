"""``GcpAdapter``: jobs on Pub/Sub, contexts in Firestore, coordination on Redis.

Options: ``settings`` (default: :meth:`GcpSettings.from_env`), plus every option of
:class:`~flowcraft.backend.DistributedAdapter`; ``lease`` defaults to the settings'
``lease_seconds`` (the ack deadline the heartbeat renews).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from flowcraft.backend import DistributedAdapter
from flowcraft.blueprint import Blueprint
from flowcraft_gcp._claims import Claims
from flowcraft_gcp.context import FirestoreContextStore
from flowcraft_gcp.queue import PubSubQueue
from flowcraft_gcp.results import GcpResultChannel
from flowcraft_gcp.settings import GcpSettings
from flowcraft_redis_store import Batcher, RedisCoordinationStore, RedisEventLog, RedisResultChannel

__all__ = ["GcpAdapter"]


class GcpAdapter(DistributedAdapter):
    """The Pub/Sub + Firestore adapter, coordinated on Redis; one per worker or client process.

    Args:
        settings: Topic, subscription, collections and Redis (default: from the environment).
        registry: ``uses`` key → implementation.
        blueprints: Blueprint id → blueprint.
        **options: Options of :class:`~flowcraft.backend.DistributedAdapter`.
    """

    queue: PubSubQueue
    context: FirestoreContextStore

    def __init__(
        self,
        settings: GcpSettings | None = None,
        *,
        registry: Mapping[str, Any] | None = None,
        blueprints: Mapping[str, Blueprint] | None = None,
        **options: Any,
    ) -> None:
        base = settings or GcpSettings.from_env()
        lease = float(options.pop("lease", base.lease_seconds))
        self.settings = replace(base, lease_seconds=lease)
        redis_settings = self.settings.redis()
        self.redis = redis_settings.client()
        self.batcher = Batcher(self.redis, redis_settings.retry())
        parts = (self.redis, redis_settings, self.batcher)
        coordination = RedisCoordinationStore(*parts)
        context = FirestoreContextStore(self.settings, redis_settings, self.batcher)
        claims = Claims(
            *parts, scope=self.settings.subscription_path, ttl=self.settings.lease_seconds
        )
        queue = PubSubQueue(
            self.settings, counter=coordination, warm_up=context.connect, claims=claims
        )
        super().__init__(
            queue=queue,
            context=context,
            coordination=coordination,
            results=GcpResultChannel(self.settings, context, RedisResultChannel(*parts)),
            events=RedisEventLog(*parts),
            closers=[queue.close, context.close, self._close_redis],
            registry=registry,
            blueprints=blueprints,
            lease=lease,
            **options,
        )

    async def _close_redis(self) -> None:
        self.batcher.close()
        await self.redis.aclose()

    def connections(self) -> int:
        """The gRPC connections this adapter holds open (Pub/Sub publisher and subscriber,
        Firestore); its Redis connections are counted by the server (``CLIENT LIST``)."""
        return self.queue.connections() + self.context.connections()
