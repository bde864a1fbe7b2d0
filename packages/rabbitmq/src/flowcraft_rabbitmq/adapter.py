"""The RabbitMQ adapters: jobs on RabbitMQ, contexts and final results on PostgreSQL.

* ``RabbitAdapter`` (entry point ``rabbitmq``): coordination on Redis, the shared
  ``flowcraft_redis_store.RedisCoordinationStore`` (the TypeScript adapter's stack).
* ``RabbitPostgresAdapter`` (``rabbitmq-postgres``): coordination on PostgreSQL too, for a
  deployment on RabbitMQ and PostgreSQL alone.

Options: ``settings`` (or the environment, see :class:`RabbitSettings`), ``concurrency`` (the
worker's; the consumer's prefetch unless ``settings.prefetch`` is set), plus every option of
:class:`~flowcraft.backend.DistributedAdapter`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from flowcraft.backend import (
    ArrivalReader,
    ContextStore,
    CoordinationStore,
    DistributedAdapter,
    HopCommitter,
)
from flowcraft.blueprint import Blueprint
from flowcraft_rabbitmq._pg import Pool
from flowcraft_rabbitmq.context import PostgresContextStore
from flowcraft_rabbitmq.coordination import PostgresCoordinationStore
from flowcraft_rabbitmq.hop import PostgresHop
from flowcraft_rabbitmq.queue import RabbitQueue
from flowcraft_rabbitmq.results import PostgresResultChannel
from flowcraft_rabbitmq.settings import RabbitSettings

__all__ = ["RabbitAdapter", "RabbitPostgresAdapter"]

Closer = Callable[[], Awaitable[None]]


class _RabbitAdapter(DistributedAdapter):
    """The parts both variants share; a variant adds its coordination store.

    Args:
        settings: Servers and layout (default: from the environment).
        registry: ``uses`` key → implementation.
        blueprints: Blueprint id → blueprint.
        concurrency: The worker's concurrency (the consumer's prefetch).
        **options: Options of :class:`~flowcraft.backend.DistributedAdapter`.
    """

    queue: RabbitQueue

    def __init__(
        self,
        settings: RabbitSettings | None = None,
        *,
        registry: Mapping[str, Any] | None = None,
        blueprints: Mapping[str, Blueprint] | None = None,
        concurrency: int = 16,
        **options: Any,
    ) -> None:
        self.settings = settings or RabbitSettings.from_env()
        self.pool = Pool(self.settings)
        queue = RabbitQueue(self.settings, prefetch=concurrency)
        context = PostgresContextStore(self.pool)
        coordination, closers = self._coordination()
        hops, arrivals = self._fast_paths(queue, context, coordination)
        super().__init__(
            queue=queue,
            context=context,
            coordination=coordination,
            hops=hops,
            arrivals=arrivals,
            results=PostgresResultChannel(self.pool),
            closers=[*closers, self.pool.close],
            registry=registry,
            blueprints=blueprints,
            **{"lease": self.settings.lease_seconds, **options},
        )

    def _coordination(self) -> tuple[CoordinationStore, list[Closer]]:
        raise NotImplementedError

    def _fast_paths(
        self, queue: RabbitQueue, context: ContextStore, coordination: CoordinationStore
    ) -> tuple[HopCommitter | None, ArrivalReader | None]:
        raise NotImplementedError


class RabbitAdapter(_RabbitAdapter):
    """RabbitMQ + PostgreSQL, coordination on Redis; the arguments are ``_RabbitAdapter``'s."""

    def _coordination(self) -> tuple[CoordinationStore, list[Closer]]:
        # Here, not at the top: redis-py is most of a worker's start-up, and
        # ``rabbitmq-postgres`` needs none of it.
        from flowcraft_redis_store import Batcher, RedisCoordinationStore

        redis_settings = self.settings.redis()
        client = redis_settings.client()
        batcher = Batcher(client, redis_settings.retry())

        async def close() -> None:
            batcher.close()
            await client.aclose()

        return RedisCoordinationStore(client, redis_settings, batcher), [close]

    def _fast_paths(
        self, queue: RabbitQueue, context: ContextStore, coordination: CoordinationStore
    ) -> tuple[HopCommitter | None, ArrivalReader | None]:
        # A hop spans Redis and PostgreSQL here, which no one step can: without a committer
        # of its own the adapter takes core's split hop (a Lua claim on Redis, one context
        # patch, the successors published, the job counted done in one step), and core reads
        # a job's arrival from both servers at once.
        return None, None


class RabbitPostgresAdapter(_RabbitAdapter):
    """RabbitMQ + PostgreSQL alone, coordination on PostgreSQL; the arguments are
    ``_RabbitAdapter``'s."""

    def _coordination(self) -> tuple[CoordinationStore, list[Closer]]:
        return PostgresCoordinationStore(self.pool), []

    def _fast_paths(
        self, queue: RabbitQueue, context: ContextStore, coordination: CoordinationStore
    ) -> tuple[HopCommitter | None, ArrivalReader | None]:
        hop = PostgresHop(self.pool, queue)
        return hop, hop
