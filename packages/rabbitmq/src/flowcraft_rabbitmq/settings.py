"""Connection settings and the layout of the RabbitMQ backend (documented in docs/rabbitmq.md)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from flowcraft.backend import env_settings, merge_settings, settings_env

if TYPE_CHECKING:
    from flowcraft_redis_store import RedisSettings

__all__ = ["DEFAULT_AMQP_URL", "DEFAULT_DATABASE_URL", "RabbitSettings"]

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_DATABASE_URL = "postgresql://127.0.0.1:5432/flowcraft"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
"""``flowcraft_redis_store.DEFAULT_URL``; the Redis store is imported only by the ``rabbitmq``
variant that uses it: it pulls in redis-py, most of a ``rabbitmq-postgres`` worker's start-up."""
_ENV_PREFIX = "FLOWCRAFT_RABBITMQ_"
_STANDARD = {"amqp_url": "AMQP_URL", "database_url": "DATABASE_URL", "redis_url": "REDIS_URL"}
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,39}$")


@dataclass(frozen=True, slots=True)
class RabbitSettings:
    """Where the servers are and how queues and tables are named.

    Attributes:
        amqp_url: The broker (``AMQP_URL``).
        database_url: PostgreSQL, for contexts, final results and (``rabbitmq-postgres``)
            coordination (``DATABASE_URL``).
        redis_url: Redis, for coordination of the ``rabbitmq`` backend (``REDIS_URL``).
        queue_name: The job queue (a durable quorum queue); ``<name>.dead`` holds dead
            letters and ``<name>.parked`` the parked copies of long jobs.
        schema: The PostgreSQL schema of the backend's tables (created if missing).
        table_prefix: Prefix of the table names (``<prefix>context``, ``<prefix>runs``,
            ``<prefix>coordination``) and of the ``LISTEN`` channel.
        coordination_prefix: Prefix of the Redis coordination keys.
        state_ttl_seconds: How long a context row lives after its last write, and a run's
            rows after its final result (then the cleanup deletes them).
        lease_seconds: The worker's lease, renewed by the heartbeat every third of it.
        consumer_timeout_seconds: The broker's ``consumer_timeout``. A job still running after
            half of it is parked (``queue.py``), so the broker never closes the channel.
        delivery_limit: The quorum queue's ``x-delivery-limit``: the broker dead-letters a
            message returned this many times. Above the worker's ``max_deliveries`` (10), so
            the worker fails the run with its reason first; this catches what it cannot.
        dead_letter_ttl_seconds: How long dead letters are kept.
        redelivery_delay_seconds: How long a job the broker hands back (its holder died,
            released it, or lost its channel) waits before it runs again: the broker
            redelivers at once, so a job that kills its worker would otherwise kill the next
            one straight away.
        prefetch: Unacked deliveries one worker holds at once (0: the worker's concurrency).
        heartbeat_seconds: AMQP heartbeat: a peer gone silent is found after about twice it.
        pool_size: Most PostgreSQL connections one adapter's pool opens (the pool blocks: a
            burst waits for a free connection). Besides: one ``LISTEN`` connection per
            process, one AMQP connection, and up to ``redis_connections`` to Redis.
        redis_connections: Most Redis connections one adapter opens (``rabbitmq`` only).
        client_name: Names every connection (PostgreSQL ``application_name``, Redis
            ``CLIENT SETNAME``, AMQP ``connection_name``), to tell a process's apart.
        cleanup_seconds: How often an adapter deletes expired rows (0: never; run it
            elsewhere then).
    """

    amqp_url: str = DEFAULT_AMQP_URL
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    queue_name: str = "flowcraft-queue"
    schema: str = "public"
    table_prefix: str = "flowcraft_"
    coordination_prefix: str = ""
    state_ttl_seconds: int = 7 * 86_400
    lease_seconds: float = 30.0
    consumer_timeout_seconds: float = 1800.0
    delivery_limit: int = 20
    dead_letter_ttl_seconds: int = 7 * 86_400
    redelivery_delay_seconds: float = 0.5
    prefetch: int = 0
    heartbeat_seconds: int = 30
    pool_size: int = 8
    redis_connections: int = 8
    client_name: str = "flowcraft"
    cleanup_seconds: float = 60.0

    def __post_init__(self) -> None:
        # Identifiers are configuration, never data, but they are spliced into SQL: refuse
        # anything but plain lower-case names.
        for name in ("schema", "table_prefix"):
            value = getattr(self, name)
            if not _IDENTIFIER.match(value):
                raise ValueError(f"{name} {value!r}: use lower-case letters, digits and _")

    @classmethod
    def from_env(cls, **overrides: Any) -> RabbitSettings:
        """Settings from ``AMQP_URL``, ``DATABASE_URL``, ``REDIS_URL`` and
        ``FLOWCRAFT_RABBITMQ_<FIELD>`` variables (e.g. ``FLOWCRAFT_RABBITMQ_QUEUE_NAME``), then
        keyword overrides."""
        values = env_settings(cls, _ENV_PREFIX, os.environ, _STANDARD)
        return merge_settings(cls(), {**values, **overrides}, backend="RabbitMQ")

    def to_env(self) -> dict[str, str]:
        """These settings as the environment variables :meth:`from_env` reads (for spawning
        worker processes)."""
        env = settings_env(self, _ENV_PREFIX)
        for name, variable in _STANDARD.items():
            del env[_ENV_PREFIX + name.upper()]
            env[variable] = getattr(self, name)
        return env

    def namespaced(self, tag: str) -> RabbitSettings:
        """These settings with a queue, schema and key prefix of their own (``tag`` is a
        lower-case identifier): for deployments, tests or benchmarks sharing servers."""
        return replace(
            self,
            queue_name=f"{self.queue_name}-{tag}",
            schema=tag,
            coordination_prefix=f"{tag}:{self.coordination_prefix}",
        )

    def redis(self) -> RedisSettings:
        """The settings of the Redis coordination store."""
        from flowcraft_redis_store import RedisSettings

        return RedisSettings(
            url=self.redis_url,
            coordination_prefix=self.coordination_prefix,
            max_connections=self.redis_connections,
            client_name=self.client_name,
        )
