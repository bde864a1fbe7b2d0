"""Flowcraft's distributed backend on Azure: Storage Queues and Cosmos DB, coordinated on Redis.

Jobs travel on a Storage Queue as base64 of the TypeScript adapter's JSON bodies (leases as
visibility timeouts, dead letters on ``<queue>-poison`` with their reason); each run's context
is one Cosmos DB item (partition key = run id) written by patch operations; joins, fences and
timers are in Redis (``flowcraft_redis_store``), which also wakes result waits.
``docs/azure.md`` has the settings, limits and the emulators' gaps.
"""

from flowcraft_azure.adapter import AzureAdapter
from flowcraft_azure.context import MAX_ITEM, MAX_PATCH, CosmosContextStore, pointer
from flowcraft_azure.cosmos import CosmosAccount, item_id
from flowcraft_azure.queue import MAX_BODY, StorageQueue, decode_body
from flowcraft_azure.results import AzureResultChannel
from flowcraft_azure.settings import AzureSettings

__all__ = [
    "MAX_BODY",
    "MAX_ITEM",
    "MAX_PATCH",
    "AzureAdapter",
    "AzureResultChannel",
    "AzureSettings",
    "CosmosAccount",
    "CosmosContextStore",
    "StorageQueue",
    "decode_body",
    "item_id",
    "pointer",
]
