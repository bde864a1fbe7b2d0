"""The Redis adapters: ``RedisAdapter`` (BullMQ transport) and ``RedisStreamsAdapter`` (Streams).

Both keep runs in the same stores (context hash ``workflow:state:<runId>``, coordination keys,
status string ``workflow:status:<runId>``; see ``flowcraft_redis_store``) and differ only in
the queue:

* ``RedisAdapter`` queues on BullMQ (queue ``flowcraft-queue``, job ``executeNode``), for TS
  wire compatibility, BullMQ dashboards and stalled-job recovery.
* ``RedisStreamsAdapter`` queues on a Redis Stream with a consumer group and finishes the
  common hop in one Lua step (result, context, join marks, successors and ack), for speed.

Options: ``settings`` (or ``REDIS_URL``), ``connection`` (a ``redis.asyncio`` client to share,
a ``{host, port}`` mapping or a DSN), ``prefix`` (BullMQ's key prefix), ``concurrency``
(BullMQ: jobs handed over at once; Streams: most entries one read fetches), any store in place
of the adapter's own, plus every option of :class:`~flowcraft.backend.DistributedAdapter`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from flowcraft.backend import DistributedAdapter, Queue
from flowcraft.blueprint import Blueprint
from flowcraft_redis._arrival import RedisArrivalReader
from flowcraft_redis.hop import RedisHopCommitter
from flowcraft_redis.queue import BullMQQueue
from flowcraft_redis.streams import StreamsQueue
from flowcraft_redis_store import (
    BatchedStore,
    Batcher,
    RedisContextStore,
    RedisCoordinationStore,
    RedisEventLog,
    RedisResultChannel,
    RedisSettings,
)
from flowcraft_redis_store.settings import url_of

__all__ = ["RedisAdapter", "RedisStreamsAdapter"]


Connection = aioredis.Redis | Mapping[str, Any] | str
"""A ``redis.asyncio`` client to share, a ``{host, port, ...}`` mapping, or a DSN."""

_STORES = ("context", "coordination", "results", "events")
_LAYOUT = ("state_prefix", "status_prefix", "coordination_prefix", "tag")


class _RedisAdapter(DistributedAdapter):
    """The parts both transports share; a transport adds its queue and hop committer.

    Args:
        settings: Connection and key layout (default: ``REDIS_URL`` or localhost, and
            ``FLOWCRAFT_REDIS_*`` variables).
        connection: Where Redis is, as the TypeScript adapter's ``connection`` option: a
            ``redis.asyncio`` client to share (every part of the adapter then connects where
            it does; the adapter does not close it), a ``{host, port, db, username,
            password, tls}`` mapping, or a DSN (``redis://``, ``rediss://``).
        client: The same as a client given as ``connection``.
        prefix: BullMQ's key prefix (``RedisSettings.prefix``).
        registry: ``uses`` key → implementation.
        blueprints: Blueprint id → blueprint.
        concurrency: How many jobs the queue client takes at once.
        context, coordination, results, events: Stores to use instead of the adapter's own.
            One-step hops and arrival reads write the stores' keys in Lua, so they are used
            only while the context and coordination stores are Redis stores with the
            adapter's key layout on its server; otherwise each step goes through the stores.
        **options: Options of :class:`~flowcraft.backend.DistributedAdapter`.

    Raises:
        TypeError: A cluster client (``redis.asyncio.RedisCluster``) was given: pass the URL
            of any node with ``RedisSettings(cluster=True)`` instead.
    """

    def __init__(
        self,
        settings: RedisSettings | None = None,
        *,
        connection: Connection | None = None,
        client: aioredis.Redis | None = None,
        prefix: str | None = None,
        registry: Mapping[str, Any] | None = None,
        blueprints: Mapping[str, Blueprint] | None = None,
        concurrency: int = 16,
        **options: Any,
    ) -> None:
        if isinstance(connection, RedisCluster) or isinstance(client, RedisCluster):
            raise TypeError(
                "a RedisCluster client cannot be shared: every key of a deployment lives in one"
                " slot, which the adapter connects to itself; pass"
                " settings=RedisSettings(url=<any node>, cluster=True)"
            )
        if isinstance(connection, aioredis.Redis):
            if client is not None and client is not connection:
                raise TypeError("pass the shared client once, as connection= or client=")
            client, connection = connection, None
        settings = settings or RedisSettings.from_env()
        if connection is not None:
            url = connection if isinstance(connection, str) else url_of(connection)
            settings = replace(settings, url=url)
        if prefix is not None:
            settings = replace(settings, prefix=prefix)
        self.settings = settings
        self.redis = client if client is not None else settings.client()
        self.batcher = Batcher(self.redis, settings.retry())
        lease = float(options.pop("lease", settings.lease_seconds))
        given = {name: options.pop(name) for name in _STORES if options.get(name) is not None}
        queue, hops = self._transport(concurrency, lease)
        closers = [self._close_batcher]
        if client is None:
            closers.append(self.redis.aclose)
        parts = (self.redis, settings, self.batcher)
        context = given.get("context") or RedisContextStore(*parts)
        coordination = given.get("coordination") or RedisCoordinationStore(*parts)
        # The hop and arrival scripts write and read the stores' keys themselves.
        native = self._native(context) and self._native(coordination)
        super().__init__(
            queue=queue,
            context=context,
            coordination=coordination,
            results=given.get("results") or RedisResultChannel(*parts),
            hops=hops if native else None,
            arrivals=RedisArrivalReader(*parts) if native else None,
            events=given.get("events") or RedisEventLog(*parts),
            closers=closers,
            registry=registry,
            blueprints=blueprints,
            lease=lease,
            **options,
        )

    def _native(self, store: object) -> bool:
        """Whether ``store`` is a Redis store over this adapter's keys on its server."""
        if not isinstance(store, BatchedStore):
            return False
        theirs, ours = store.settings, self.settings
        return all(getattr(theirs, f) == getattr(ours, f) for f in _LAYOUT) and _same_server(
            store.client, self.redis
        )

    def _transport(self, concurrency: int, lease: float) -> tuple[Queue, RedisHopCommitter]:
        raise NotImplementedError

    async def _close_batcher(self) -> None:
        self.batcher.close()


def _same_server(a: aioredis.Redis, b: aioredis.Redis) -> bool:
    if a is b:
        return True
    where = ("host", "port", "path", "db", "cluster_slot_key")
    ka, kb = a.connection_pool.connection_kwargs, b.connection_pool.connection_kwargs
    return all(ka.get(k) == kb.get(k) for k in where)


class RedisAdapter(_RedisAdapter):
    """Distributed runs on Redis with BullMQ as the queue (``concurrency``: jobs BullMQ hands
    over at once); the arguments are ``_RedisAdapter``'s."""

    queue: BullMQQueue

    def _transport(self, concurrency: int, lease: float) -> tuple[Queue, RedisHopCommitter]:
        queue = BullMQQueue(
            self.redis,
            self.settings,
            concurrency=concurrency,
            lock_duration=lease,
            batcher=self.batcher,
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
