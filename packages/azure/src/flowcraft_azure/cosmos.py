"""``CosmosAccount``: the adapter's one Cosmos client and its two containers.

Both containers are partitioned on ``/runId`` (a run's items live in one logical partition)
and have a default TTL of ``retention_seconds``: Cosmos deletes an item that long after its
last write.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from azure.cosmos import PartitionKey
from azure.cosmos import exceptions as cosmos_exceptions
from azure.cosmos.aio import ContainerProxy, CosmosClient

from flowcraft_azure._errors import cosmos_errors
from flowcraft_azure._http import HttpPool
from flowcraft_azure.settings import AzureSettings

__all__ = ["PARTITION_KEY", "CosmosAccount", "item_id"]

PARTITION_KEY = "/runId"
_MAX_ID = 255
_ID_ESCAPES = str.maketrans({"%": "%25", "/": "%2F", "\\": "%5C", "?": "%3F", "#": "%23"})
"""Characters Cosmos refuses in an item id (and ``%``, the escape itself)."""


def item_id(run_id: str) -> str:
    """The item id of a run: ``/ \\ ? #`` (refused in ids; a child run's id holds slashes)
    and ``%`` percent-escaped, and a too-long one hashed."""
    escaped = run_id.translate(_ID_ESCAPES)
    if len(escaped) > _MAX_ID:
        escaped = "%h" + hashlib.sha256(run_id.encode()).hexdigest()
    return escaped


class CosmosAccount:
    """The Cosmos client (``azure.cosmos.aio``), created on first use in the running loop, and
    the context and status containers, created when missing (``settings.create``).

    Args:
        settings: Endpoint, key, database, containers, retention.
        http: The adapter's shared aiohttp pool.
    """

    def __init__(self, settings: AzureSettings, http: HttpPool) -> None:
        self._settings = settings
        self._http = http
        self._client: CosmosClient | None = None
        self._containers: dict[str, ContainerProxy] | None = None
        self._lock: asyncio.Lock | None = None

    @property
    def settings(self) -> AzureSettings:
        return self._settings

    def _cosmos(self) -> CosmosClient:
        if self._client is None:
            s = self._settings
            self._client = CosmosClient(
                s.cosmos_endpoint,
                credential=s.cosmos_key,
                transport=self._http.transport(),
                connection_verify=s.cosmos_verify,
                # An emulator advertises its own idea of its address (a container's port);
                # against Cosmos DB, discovery finds the account's regions.
                enable_endpoint_discovery=not s.cosmos_emulator,
                retry_total=2,
            )
        return self._client

    async def container(self, name: str) -> ContainerProxy:
        """The container ``name`` (the context or status container)."""
        containers = self._containers
        if containers is None:
            containers = await self._open()
        return containers[name]

    async def _open(self) -> dict[str, ContainerProxy]:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._containers is not None:
                return self._containers
            s = self._settings
            client = self._cosmos()
            names = (s.context_container, s.status_container)
            async with cosmos_errors:
                if s.create:
                    database = await client.create_database_if_not_exists(s.database)
                    containers = {
                        name: await database.create_container_if_not_exists(
                            name,
                            partition_key=PartitionKey(path=PARTITION_KEY),
                            default_ttl=s.retention_seconds,
                        )
                        for name in names
                    }
                else:
                    database = client.get_database_client(s.database)
                    containers = {name: database.get_container_client(name) for name in names}
            self._containers = containers
            return containers

    def recreate(self) -> bool:
        """After a create that found no container (it was deleted): whether it is made again
        on the next use, so the caller retries."""
        if not self._settings.create:
            return False
        self._containers = None
        return True

    def absent(self, exc: cosmos_exceptions.CosmosHttpResponseError) -> bool:
        """Whether a point read failed because the item does not exist."""
        if exc.status_code == 404:
            return True
        # The npm emulator's answer for a missing item (see settings.cosmos_emulator).
        return self._settings.cosmos_emulator and exc.status_code == 500

    async def read(self, container: str, run_id: str) -> dict[str, Any] | None:
        """The run's item in ``container``, or None."""
        proxy = await self.container(container)
        async with cosmos_errors:
            try:
                item: dict[str, Any] = await proxy.read_item(item_id(run_id), partition_key=run_id)
            except cosmos_exceptions.CosmosHttpResponseError as exc:
                if self.absent(exc):
                    return None
                raise
        return item

    async def close(self) -> None:
        """Close the client (the adapter closes the shared HTTP pool); safe to call twice."""
        client, self._client = self._client, None
        self._containers = None
        if client is not None:
            await client.close()
