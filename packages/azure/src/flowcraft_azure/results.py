"""``AzureResultChannel``: each run's final status item in Cosmos DB, wakes over Redis.

The final result itself is core's record in the coordination store (written once). Besides it,
``publish`` creates the run's item in the status container once (a 409 means a redelivered job
got there first), in the TypeScript adapter's layout for dashboards and other readers: ``id``
and ``runId``, ``status``, ``finalStatus`` (the TypeScript status record) and ``lastUpdated``
(epoch seconds).

Waiters are woken by Redis pub/sub (``flowcraft_redis_store.RedisResultChannel``, one
subscription per process): Cosmos's push, the change feed, is a poll of the container per
reader, and the emulators do not have it. Both writes go out together, so the wake does not
wait for Cosmos.
"""

from __future__ import annotations

import asyncio
import time

import orjson
from azure.cosmos import exceptions as cosmos_exceptions

from flowcraft.backend import Woken, ts_status
from flowcraft.result import WorkflowResult
from flowcraft_azure._errors import cosmos_errors
from flowcraft_azure.context import MAX_ITEM
from flowcraft_azure.cosmos import CosmosAccount, item_id
from flowcraft_redis_store import RedisResultChannel

__all__ = ["AzureResultChannel"]

_RECORD_MAX = MAX_ITEM - 64 * 1024
"""The largest status record kept in the item (the rest of the item and Cosmos's own
properties take the remainder)."""


class AzureResultChannel:
    """A :class:`~flowcraft.backend.ResultChannel`: status items in Cosmos DB, wakes on Redis.

    Args:
        account: The adapter's Cosmos client and containers.
        wakes: The Redis channel that wakes waiting processes.
    """

    def __init__(self, account: CosmosAccount, wakes: RedisResultChannel) -> None:
        self._account = account
        self._wakes = wakes

    async def publish(self, run_id: str, result: WorkflowResult | None) -> None:
        """Create the run's status item (final results only) and wake the waiters."""
        # None: the Redis channel only publishes the wake, it stores no status of its own.
        wake = self._wakes.publish(run_id, None)
        if result is None or result.status == "awaiting":
            await wake
            return
        await asyncio.gather(self._store(run_id, result), wake)

    async def _store(self, run_id: str, result: WorkflowResult) -> None:
        record = ts_status(result)
        item: dict[str, object] = {
            "id": item_id(run_id),
            "runId": run_id,
            "status": result.status,
            "lastUpdated": int(time.time()),
        }
        size = len(orjson.dumps(record))
        if size <= _RECORD_MAX:
            item["finalStatus"] = record
        else:
            # Over an item's size: the record stays in the coordination store only.
            item["finalStatusOmitted"] = size
        container = self._account.settings.status_container
        for _ in range(2):
            proxy = await self._account.container(container)
            async with cosmos_errors:
                try:
                    await proxy.create_item(item)
                    return
                except cosmos_exceptions.CosmosResourceExistsError:
                    return  # created once already (a redelivered job's publish)
                except cosmos_exceptions.CosmosResourceNotFoundError:
                    if not self._account.recreate():
                        raise

    async def listen(self, woken: Woken) -> None:
        """Subscribe to the wakes (one Redis connection per process)."""
        await self._wakes.listen(woken)

    async def close(self) -> None:
        """Stop listening."""
        await self._wakes.close()
