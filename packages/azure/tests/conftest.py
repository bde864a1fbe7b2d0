"""Fixtures of the flowcraft-azure tests: the servers, and a namespace of them per test.

The servers are the environment's (``AZURE_STORAGE_CONNECTION_STRING``, ``COSMOS_ENDPOINT`` /
``COSMOS_KEY``, ``REDIS_URL``) or those ``flowcraft_services`` starts, as the contract suite's
Azure fixture does.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Mapping

import pytest
from azure.core import exceptions as azure_errors
from flowcraft_services.cli import start_many

from flowcraft_azure import AzureAdapter, AzureSettings

_SERVICES = {
    "azurite": ("AZURE_STORAGE_CONNECTION_STRING",),
    "cosmos": ("COSMOS_ENDPOINT", "COSMOS_KEY"),
    "redis": ("REDIS_URL",),
}


@pytest.fixture(scope="session")
def servers() -> dict[str, str]:
    """Connection settings of a running Azurite, Cosmos DB server and Redis."""
    env = {
        name: os.environ[name]
        for names in _SERVICES.values()
        for name in names
        if name in os.environ
    }
    missing = [s for s, names in _SERVICES.items() if not all(n in env for n in names)]
    for name, service in start_many(missing).items():
        if isinstance(service, Exception):
            raise RuntimeError(f"{name} did not start: {service}") from service
        env.update(service.env)
    # The npm Cosmos server: a self-signed certificate, and 500 for a missing item.
    return {
        **env,
        "FLOWCRAFT_AZURE_COSMOS_VERIFY": "false",
        "FLOWCRAFT_AZURE_COSMOS_EMULATOR": "true",
    }


@pytest.fixture
async def adapter(servers: Mapping[str, str]) -> AsyncIterator[AzureAdapter]:
    """An adapter on queues and containers of its own, deleted afterwards."""
    settings = AzureSettings.from_env(servers).namespaced(f"t{uuid.uuid4().hex[:10]}")
    adapter = AzureAdapter(settings)
    try:
        yield adapter
    finally:
        # A test may have made only some of them.
        for client in adapter.queue._clients():
            with contextlib.suppress(azure_errors.ResourceNotFoundError):
                await client.delete_queue()
        database = adapter.cosmos._cosmos().get_database_client(settings.database)
        for container in (settings.context_container, settings.status_container):
            with contextlib.suppress(azure_errors.ResourceNotFoundError):
                await database.delete_container(container)
        await adapter.close()
