"""Contract-suite fixture of flowcraft-azure: Azurite's queue service, a Cosmos DB server and
Redis.

Provisioning: ``AZURE_STORAGE_CONNECTION_STRING``, ``COSMOS_ENDPOINT`` / ``COSMOS_KEY`` and
``REDIS_URL`` if set, else the servers of ``flowcraft_services`` (Azurite 3.35.0 and
@vercel/cosmosdb-server from npm, Redis). Each test gets a queue and poison queue, Cosmos
containers and a Redis key prefix of its own; reset deletes them all.

There is no ``restartable``: the Cosmos server keeps its data in memory only, so it cannot be
restarted with its data (the restart test skips, naming that).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import subprocess
import uuid
import warnings
from collections.abc import Mapping
from typing import Any

import orjson
import redis as sync_redis
from azure.core import exceptions as azure_errors
from azure.storage.queue import QueueClient
from urllib3.exceptions import InsecureRequestWarning

from backends._fixture import spawn_worker
from flowcraft.blueprint import Blueprint
from flowcraft.distributed import ContextStore, CoordinationStore, DistributedAdapter
from flowcraft_azure import AzureAdapter, AzureSettings, decode_body

__all__ = ["Deployment", "Fixture"]

_SERVICES = (
    ("azurite", ("AZURE_STORAGE_CONNECTION_STRING",)),
    ("cosmos", ("COSMOS_ENDPOINT", "COSMOS_KEY")),
    ("redis", ("REDIS_URL",)),
)
_PEEK_MAX = 32


class Deployment:
    """One test's share of the servers."""

    def __init__(self, base: AzureSettings, lease: float) -> None:
        tagged = base.namespaced(f"t{uuid.uuid4().hex[:10]}")
        self.settings = dataclasses.replace(tagged, lease_seconds=lease)
        self.lease = lease
        self.adapters: list[AzureAdapter] = []


class Fixture:
    """What the suite needs from a backend."""

    name = "azure"
    carries_raw_text = True
    """A message's text is the body sent (base64-decoded), JSON or not."""

    def __init__(self) -> None:
        self.base = AzureSettings()
        self.env: dict[str, str] = {}

    def provision(self) -> None:
        """Reach the servers named in the environment, or start them."""
        env: dict[str, str] = {}
        for service, variables in _SERVICES:
            if all(os.environ.get(name) for name in variables):
                env.update({name: os.environ[name] for name in variables})
            else:
                from flowcraft_services import resolve

                env.update(resolve(service).start())
        self.env = {
            "AZURE_STORAGE_CONNECTION_STRING": env["AZURE_STORAGE_CONNECTION_STRING"],
            "COSMOS_ENDPOINT": env["COSMOS_ENDPOINT"],
            "COSMOS_KEY": env["COSMOS_KEY"],
            "REDIS_URL": env["REDIS_URL"],
            # The emulator's certificate is self-signed, and it answers 500 for a missing item.
            "FLOWCRAFT_AZURE_COSMOS_VERIFY": "false",
            "FLOWCRAFT_AZURE_COSMOS_EMULATOR": "true",
        }
        self.base = AzureSettings.from_env(self.env)
        from flowcraft_services.providers.azurite import AzuriteService
        from flowcraft_services.providers.cosmos import CosmosService, quiet_tls

        AzuriteService.probe(self.env)
        with quiet_tls():
            CosmosService.probe(self.env)
        with sync_redis.Redis.from_url(self.base.redis_url, socket_timeout=5) as client:
            client.ping()

    def _queue(self, name: str) -> QueueClient:
        return QueueClient.from_connection_string(self.base.connection_string, name)

    def spawn_worker(
        self, deployment: Deployment, app: str, env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        """A ``flowcraft worker`` process serving ``deployment`` (for SIGKILL tests)."""
        return spawn_worker(self.name, app, {**env, **self.env, **deployment.settings.to_env()})

    def deployment(self, *, lease: float) -> Deployment:
        """Fresh queues, containers and key prefix for one test."""
        return Deployment(self.base, lease)

    def adapter(
        self,
        deployment: Deployment,
        registry: Mapping[str, Any],
        blueprints: Mapping[str, Blueprint],
        **options: Any,
    ) -> DistributedAdapter:
        """An adapter (one per worker or client) over ``deployment``."""
        options.setdefault("lease", deployment.lease)
        # Named, so that Redis can count each adapter's connections.
        settings = dataclasses.replace(
            deployment.settings, client_name=f"fc-{uuid.uuid4().hex[:12]}"
        )
        adapter = AzureAdapter(settings, registry=registry, blueprints=blueprints, **options)
        deployment.adapters.append(adapter)
        return adapter

    def stores(self, deployment: Deployment) -> tuple[CoordinationStore, ContextStore]:
        """The stores of an adapter of their own (closed at reset)."""
        adapter = AzureAdapter(deployment.settings)
        deployment.adapters.append(adapter)
        return adapter.coordination, adapter.context

    def client_connections(self, deployment: Deployment, adapter: DistributedAdapter) -> int:
        """The adapter's HTTP connections (its aiohttp pool; the emulators cannot list their
        clients) and its Redis connections, counted by Redis under the adapter's client
        name."""
        assert isinstance(adapter, AzureAdapter)
        name = adapter.settings.client_name
        with sync_redis.Redis.from_url(self.base.redis_url, decode_responses=True) as client:
            redis = sum(1 for c in client.client_list() if c.get("name") == name)
        return adapter.connections() + redis

    def dead_letters(self, deployment: Deployment) -> list[str]:
        """Reasons of the messages on the poison queue (peeked, left on it)."""
        try:
            peeked = self._queue(deployment.settings.poison_queue).peek_messages(_PEEK_MAX)
        except azure_errors.ResourceNotFoundError:
            return []
        return [str(orjson.loads(decode_body(m.content))["reason"]) for m in peeked]

    def queued_jobs(self, deployment: Deployment) -> int:
        """Messages on the job queue, visible or leased (the service's approximate count,
        exact on Azurite)."""
        try:
            properties = self._queue(deployment.settings.queue).get_queue_properties()
        except azure_errors.ResourceNotFoundError:
            return 0
        return int(properties.approximate_message_count or 0)

    async def inject(self, deployment: Deployment, body: str) -> None:
        """Send a raw (possibly malformed) job, base64 as the adapter sends bodies."""
        client = self._queue(deployment.settings.queue)
        with contextlib.suppress(azure_errors.ResourceExistsError):
            client.create_queue()
        client.send_message(base64.b64encode(body.encode()).decode())

    async def reset(self, deployment: Deployment) -> None:
        """Close the test's adapters; delete its queues, containers and keys."""
        # Kept in the list: a test may use an adapter again after a reset (it reconnects),
        # and the final reset must close it again.
        for adapter in deployment.adapters:
            await adapter.close()
        s = deployment.settings
        for name in (s.queue, s.poison_queue):
            with contextlib.suppress(azure_errors.ResourceNotFoundError):
                self._queue(name).delete_queue()
        from flowcraft_services.providers.cosmos import client

        # The emulator's certificate is self-signed, knowingly accepted.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecureRequestWarning)
            database = client(self.env).get_database_client(s.database)
            for container in (s.context_container, s.status_container):
                with contextlib.suppress(azure_errors.ResourceNotFoundError):
                    database.delete_container(container)
        with sync_redis.Redis.from_url(s.redis_url) as redis_client:
            keys = list(redis_client.scan_iter(match=f"{s.redis_prefix}*", count=1000))
            if keys:
                redis_client.delete(*keys)
