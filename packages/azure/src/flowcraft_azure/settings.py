"""Settings of the Storage Queues + Cosmos DB backend: from keyword arguments, environment
variables or a DSN.

The defaults reach the local emulators: Azurite's queue service on port 10001 with its
published development account, and a Cosmos DB emulator on https://localhost:8081/ with its
published key (both keys are public and work against the emulators only).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from flowcraft.backend import dsn_values, env_settings, merge_settings, settings_env
from flowcraft_redis_store import DEFAULT_URL as DEFAULT_REDIS_URL
from flowcraft_redis_store import RedisSettings

__all__ = ["MAX_BATCH", "MAX_VISIBILITY", "AzureSettings", "visibility_seconds"]

_ENV_PREFIX = "FLOWCRAFT_AZURE_"
_DSN_VAR = "FLOWCRAFT_AZURE_URL"

MAX_BATCH = 32
"""The most messages one Get Messages request returns."""
MAX_VISIBILITY = 7 * 86_400
"""The longest visibility timeout Storage Queues accept (7 days)."""

AZURITE_CONNECTION_STRING = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
    "KBHBeksoGMGw==;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
)
"""Azurite's development account (a published key that only works against the emulator)."""
COSMOS_EMULATOR_KEY = (
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
)
"""The Cosmos DB emulator's published key."""


@dataclass(frozen=True, slots=True)
class AzureSettings:
    """Where the queues, the Cosmos containers and Redis are, and how they are used.

    Attributes:
        connection_string: The storage account's connection string
            (``AZURE_STORAGE_CONNECTION_STRING``).
        queue: The job queue; dead letters go to ``<queue>-poison`` with their reason. Queue
            names are 3-63 lowercase letters, digits and single hyphens.
        cosmos_endpoint: The Cosmos DB account endpoint (``COSMOS_ENDPOINT``).
        cosmos_key: Its account key (``COSMOS_KEY``).
        database: The Cosmos database of both containers.
        context_container: One item per run (``id`` = escaped run id, partition key
            ``/runId``), its context under ``c``.
        status_container: Each run's final status item, created once.
        cosmos_verify: Verify the Cosmos endpoint's TLS certificate (off only for an
            emulator's self-signed one).
        cosmos_emulator: The endpoint is the npm ``@vercel/cosmosdb-server``, which answers a
            point read of a missing item with 500 rather than 404: such a 500 then reads as
            "absent". Never set it against Cosmos DB.
        lease_seconds: The visibility timeout a received job starts with and the heartbeat
            renews (whole seconds on the wire, at least 1).
        retention_seconds: The containers' default TTL (items expire this long after their
            last write) and the time-to-live of queued messages (at most 7 days).
        poll_min: Seconds before the first re-poll of an empty queue.
        poll_max: Seconds between polls of a queue that stays empty (the back-off's cap):
            Storage Queues have no long poll, so a job enqueued by another process waits up to
            this long on an idle worker. Jobs enqueued in the worker's own process wake it at
            once.
        batch_size: Most messages one receive asks for (1-32).
        http_connections: Most HTTP connections one adapter opens, half to the storage account
            and half to Cosmos (a burst waits for a free connection); a worker adds up to 2 of
            its own for lease renewals.
        create: Whether missing queues, the database and containers are created on first use.
        redis_url: Redis, for coordination, result wakes and run events (``REDIS_URL``).
        redis_prefix: Prefix of every Redis key, so deployments can share a server.
        redis_connections: Most Redis connections one adapter opens.
        client_name: Names the adapter's Redis connections (``CLIENT SETNAME``).
    """

    connection_string: str = AZURITE_CONNECTION_STRING
    queue: str = "flowcraft-jobs"
    cosmos_endpoint: str = "https://localhost:8081/"
    cosmos_key: str = COSMOS_EMULATOR_KEY
    database: str = "flowcraft"
    context_container: str = "flowcraft-context"
    status_container: str = "flowcraft-status"
    cosmos_verify: bool = True
    cosmos_emulator: bool = False
    lease_seconds: float = 30.0
    retention_seconds: int = 7 * 86_400
    poll_min: float = 0.05
    poll_max: float = 1.0
    batch_size: int = MAX_BATCH
    http_connections: int = 8
    create: bool = True
    redis_url: str = DEFAULT_REDIS_URL
    redis_prefix: str = ""
    redis_connections: int = 8
    client_name: str = "flowcraft"

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1-{MAX_BATCH}, not {self.batch_size}")
        if self.lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, not {self.lease_seconds}")
        if self.retention_seconds <= 0:
            raise ValueError(f"retention_seconds must be positive, not {self.retention_seconds}")
        if not 0 < self.poll_min <= self.poll_max:
            raise ValueError(
                f"need 0 < poll_min <= poll_max, not {self.poll_min} and {self.poll_max}"
            )
        if self.http_connections < 2:
            raise ValueError(f"http_connections must be at least 2, not {self.http_connections}")

    @classmethod
    def from_dsn(cls, dsn: str, **overrides: Any) -> AzureSettings:
        """Settings from ``azure://<queue>?cosmos_endpoint=…&redis_url=…`` (every field may be
        a query parameter, URL-encoded), then keyword overrides."""
        queue, _, query = dsn_values(dsn, "azure")
        values: dict[str, Any] = {"queue": queue} if queue else {}
        values.update(query)
        return merge_settings(cls(), {**values, **overrides}, backend="Azure")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> AzureSettings:
        """Settings from ``AZURE_STORAGE_CONNECTION_STRING``, ``COSMOS_ENDPOINT``,
        ``COSMOS_KEY`` and ``REDIS_URL``, then ``FLOWCRAFT_AZURE_URL`` (a DSN), then
        ``FLOWCRAFT_AZURE_<FIELD>`` variables, then keyword overrides."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for variable, name in (
            ("AZURE_STORAGE_CONNECTION_STRING", "connection_string"),
            ("COSMOS_ENDPOINT", "cosmos_endpoint"),
            ("COSMOS_KEY", "cosmos_key"),
            ("REDIS_URL", "redis_url"),
        ):
            if env.get(variable):
                values[name] = env[variable]
        base = merge_settings(cls(), values, backend="Azure")
        if env.get(_DSN_VAR):
            base = cls.from_dsn(env[_DSN_VAR], **values)
        named = env_settings(cls, _ENV_PREFIX, env)
        return merge_settings(base, {**named, **overrides}, backend="Azure")

    def to_env(self) -> dict[str, str]:
        """These settings as the environment variables :meth:`from_env` reads (for a worker
        process)."""
        env = settings_env(self, _ENV_PREFIX)
        env["REDIS_URL"] = self.redis_url
        return env

    def namespaced(self, tag: str) -> AzureSettings:
        """These settings with queues, containers and Redis keys of their own, ``tag`` in each
        (deployments, tests or benchmarks sharing the servers; ``tag``: lowercase letters and
        digits)."""
        return replace(
            self,
            queue=f"{self.queue}-{tag}",
            context_container=f"{self.context_container}-{tag}",
            status_container=f"{self.status_container}-{tag}",
            redis_prefix=f"{self.redis_prefix}{tag}:",
        )

    @property
    def poison_queue(self) -> str:
        """Where dead letters go (the name Azure Functions uses for the same purpose)."""
        return f"{self.queue}-poison"

    @property
    def visibility(self) -> int:
        """The lease as a visibility timeout."""
        return visibility_seconds(self.lease_seconds)

    def redis(self) -> RedisSettings:
        """Redis settings with this deployment's key prefix."""
        return RedisSettings(
            url=self.redis_url,
            max_connections=self.redis_connections,
            client_name=self.client_name,
            state_ttl_seconds=self.retention_seconds,
        ).prefixed(self.redis_prefix)


def visibility_seconds(seconds: float) -> int:
    """``seconds`` as a visibility timeout: whole seconds, rounded up, 1 s to 7 days."""
    return max(1, min(MAX_VISIBILITY, math.ceil(seconds)))
