"""``AzureAdapter``: jobs on Azure Storage Queues, contexts in Cosmos DB, coordination on Redis.

Options: ``settings`` (default: :meth:`AzureSettings.from_env`), plus every option of
:class:`~flowcraft.backend.DistributedAdapter`; ``lease`` defaults to the settings'
``lease_seconds`` (the visibility timeout the heartbeat renews).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from flowcraft.backend import DistributedAdapter
from flowcraft.blueprint import Blueprint
from flowcraft_azure._http import HttpPool
from flowcraft_azure.context import CosmosContextStore
from flowcraft_azure.cosmos import CosmosAccount
from flowcraft_azure.queue import StorageQueue
from flowcraft_azure.results import AzureResultChannel
from flowcraft_azure.settings import AzureSettings
from flowcraft_redis_store import Batcher, RedisCoordinationStore, RedisEventLog, RedisResultChannel

__all__ = ["AzureAdapter"]

_LEASE_CONNECTIONS = 2

# The SDKs log every request's headers at INFO; a worker logging at INFO would print each job's
# HTTP traffic. A level the application set itself is kept.
for _name in (
    "azure.core.pipeline.policies.http_logging_policy",
    "azure.cosmos._cosmos_http_logging_policy",
):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)


class AzureAdapter(DistributedAdapter):
    """The Storage Queues + Cosmos DB adapter, coordinated on Redis; one per worker or client
    process.

    Args:
        settings: Queues, Cosmos containers and Redis (default: from the environment).
        registry: ``uses`` key → implementation.
        blueprints: Blueprint id → blueprint.
        **options: Options of :class:`~flowcraft.backend.DistributedAdapter`.
    """

    queue: StorageQueue
    context: CosmosContextStore

    def __init__(
        self,
        settings: AzureSettings | None = None,
        *,
        registry: Mapping[str, Any] | None = None,
        blueprints: Mapping[str, Blueprint] | None = None,
        **options: Any,
    ) -> None:
        base = settings or AzureSettings.from_env()
        lease = float(options.pop("lease", base.lease_seconds))
        self.settings = replace(base, lease_seconds=lease)
        redis_settings = self.settings.redis()
        self.redis = redis_settings.client()
        self.batcher = Batcher(self.redis, redis_settings.retry())
        # A pool per account: aiohttp bounds the connections in use, not the idle ones kept
        # for each host, so one pool over two hosts could hold twice its limit.
        storage_share = max(1, self.settings.http_connections // 2)
        self.http = (
            HttpPool(storage_share),
            HttpPool(max(1, self.settings.http_connections - storage_share)),
            # Lease renewals and releases: workers only (a client holds no jobs).
            HttpPool(_LEASE_CONNECTIONS),
        )
        self.cosmos = CosmosAccount(self.settings, self.http[1])
        parts = (self.redis, redis_settings, self.batcher)
        queue = StorageQueue(self.settings, self.http[0], self.http[2])
        closers = [pool.close for pool in self.http]
        super().__init__(
            queue=queue,
            context=CosmosContextStore(self.cosmos),
            coordination=RedisCoordinationStore(*parts),
            results=AzureResultChannel(self.cosmos, RedisResultChannel(*parts)),
            events=RedisEventLog(*parts),
            closers=[queue.close, self.cosmos.close, *closers, self._close_redis],
            registry=registry,
            blueprints=blueprints,
            lease=lease,
            **options,
        )

    async def _close_redis(self) -> None:
        self.batcher.close()
        await self.redis.aclose()

    def connections(self) -> int:
        """The HTTP connections this adapter holds open (storage account and Cosmos); its
        Redis connections are counted by the server (``CLIENT LIST``)."""
        return sum(pool.connections() for pool in self.http)
