"""Contract-suite fixture of flowcraft-rabbitmq (RabbitMQ + PostgreSQL, coordination on Redis).

Provisioning: ``AMQP_URL``, ``DATABASE_URL`` and ``REDIS_URL`` if set, else the servers of
``flowcraft_services`` (RabbitMQ and PostgreSQL from Debian, Redis). Each test gets a queue,
a PostgreSQL schema and a Redis key prefix of its own; reset deletes all three.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import uuid
from collections.abc import Mapping
from typing import Any

import pika
import psycopg
import redis as sync_redis
from psycopg import sql

from backends._fixture import spawn_worker
from flowcraft.blueprint import Blueprint
from flowcraft.distributed import ContextStore, CoordinationStore, DistributedAdapter
from flowcraft_rabbitmq import RabbitAdapter, RabbitPostgresAdapter, RabbitSettings

__all__ = ["Deployment", "Fixture"]

REASON = "x-flowcraft-reason"


class Deployment:
    """One test's share of the servers."""

    def __init__(self, base: RabbitSettings, lease: float) -> None:
        tagged = base.namespaced(f"t{uuid.uuid4().hex[:10]}")
        self.settings = dataclasses.replace(tagged, lease_seconds=lease)
        self.lease = lease
        self.adapters: list[DistributedAdapter] = []


class Fixture:
    """What the suite needs from a backend."""

    name = "rabbitmq"
    adapter_class: type[RabbitAdapter] | type[RabbitPostgresAdapter] = RabbitAdapter
    carries_raw_text = True
    """Message bodies are the bytes published, JSON or not."""
    services = (("rabbitmq", "AMQP_URL"), ("postgres", "DATABASE_URL"), ("redis", "REDIS_URL"))

    def __init__(self) -> None:
        self.base = RabbitSettings()

    def provision(self) -> None:
        """Reach the servers named in the environment, or start them."""
        env = {name: os.environ[name] for _, name in self.services if os.environ.get(name)}
        for service, variable in self.services:
            if variable not in env:
                from flowcraft_services import resolve

                env[variable] = resolve(service).start()[variable]
        self.base = RabbitSettings.from_env(
            amqp_url=env["AMQP_URL"],
            database_url=env["DATABASE_URL"],
            **({"redis_url": env["REDIS_URL"]} if "REDIS_URL" in env else {}),
        )
        with self._channel() as channel:
            channel.queue_declare("flowcraft-probe", exclusive=True)
        with psycopg.connect(self.base.database_url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
        if "REDIS_URL" in env:
            with sync_redis.Redis.from_url(self.base.redis_url, socket_timeout=5) as client:
                client.ping()

    def _channel(self) -> Any:
        params = pika.URLParameters(self.base.amqp_url)
        params.socket_timeout = 5
        connection = pika.BlockingConnection(params)

        class Closing:
            def __enter__(self) -> Any:
                return connection.channel()

            def __exit__(self, *exc: object) -> None:
                if connection.is_open:
                    connection.close()

        return Closing()

    def spawn_worker(
        self, deployment: Deployment, app: str, env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        """A ``flowcraft worker`` process serving ``deployment`` (for SIGKILL tests)."""
        return spawn_worker(self.name, app, {**env, **deployment.settings.to_env()})

    def deployment(self, *, lease: float) -> Deployment:
        """A fresh queue, schema and key prefix for one test."""
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
        settings = dataclasses.replace(
            deployment.settings, client_name=f"fc-{uuid.uuid4().hex[:12]}"
        )
        adapter = self.adapter_class(settings, registry=registry, blueprints=blueprints, **options)
        deployment.adapters.append(adapter)
        return adapter

    def stores(self, deployment: Deployment) -> tuple[CoordinationStore, ContextStore]:
        """The stores of an adapter of their own (closed at reset)."""
        adapter = self.adapter_class(deployment.settings)
        deployment.adapters.append(adapter)
        return adapter.coordination, adapter.context

    def client_connections(self, deployment: Deployment, adapter: DistributedAdapter) -> int:
        """The adapter's PostgreSQL and Redis connections, counted by the servers under its
        client name, and its AMQP connection (RabbitMQ lists connections only through its
        management plugin or CLI, which the fixture does not assume)."""
        assert isinstance(adapter, RabbitAdapter | RabbitPostgresAdapter)
        name = adapter.settings.client_name
        with psycopg.connect(deployment.settings.database_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)
            ).fetchone()
        opened = int(row[0]) if row else 0
        opened += int(adapter.queue.connected)
        if isinstance(adapter, RabbitAdapter):
            with sync_redis.Redis.from_url(deployment.settings.redis_url) as client:
                opened += sum(1 for c in client.client_list() if c.get("name") == name)
        return opened

    def queued_jobs(self, deployment: Deployment) -> int:
        """Ready messages in the job queue and parked copies (unacked ones are held by live
        workers, whose jobs are over once the runs are)."""
        name = deployment.settings.queue_name
        total = 0
        with self._channel() as channel:
            for queue in (name, f"{name}.parked"):
                try:
                    declared = channel.queue_declare(queue, passive=True)
                except pika.exceptions.ChannelClosedByBroker:
                    return total
                total += int(declared.method.message_count)
        return total

    def dead_letters(self, deployment: Deployment) -> list[str]:
        """Reasons of the messages in the dead-letter queue (left in it)."""
        reasons: list[str] = []
        with self._channel() as channel:
            queue = f"{deployment.settings.queue_name}.dead"
            try:
                channel.queue_declare(queue, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                return reasons
            # Read without acking; closing the channel puts them all back.
            while True:
                method, properties, _ = channel.basic_get(queue, auto_ack=False)
                if method is None:
                    return reasons
                headers = properties.headers or {}
                reason = headers.get(REASON) or headers.get("x-first-death-reason") or ""
                reasons.append(reason.decode() if isinstance(reason, bytes) else str(reason))

    async def inject(self, deployment: Deployment, body: str) -> None:
        """Publish a raw (possibly malformed) job, as a foreign producer could."""
        with self._channel() as channel:
            channel.confirm_delivery()
            channel.basic_publish(
                "",
                deployment.settings.queue_name,
                body.encode(),
                pika.BasicProperties(delivery_mode=2),
            )

    async def reset(self, deployment: Deployment) -> None:
        """Close the test's adapters; delete its queues, schema and keys."""
        # Kept in the list: a test may use an adapter again after a reset (it reconnects),
        # and the final reset must close it again.
        for adapter in deployment.adapters:
            await adapter.close()
        settings = deployment.settings
        with self._channel() as channel:
            for suffix in ("", ".dead", ".parked"):
                channel.queue_delete(f"{settings.queue_name}{suffix}")
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(settings.schema))
            )
        if self.adapter_class is not RabbitAdapter:
            return
        with sync_redis.Redis.from_url(settings.redis_url) as client:
            keys = list(client.scan_iter(match=f"*{settings.coordination_prefix}*", count=1000))
            if keys:
                client.delete(*keys)
