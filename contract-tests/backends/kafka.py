"""Contract-suite fixture of flowcraft-kafka: Apache Kafka, Apache Cassandra and Redis.

Provisioning: the three servers from ``flowcraft_services`` (the environment's settings when
set, else what this checkout runs, else started locally), started in parallel. A deployment is
a topic, dead-letter topic, consumer group and Redis namespace of its own; Cassandra rows are
keyed by unique run ids, so every deployment shares the tables. The restart test gets the three
servers privately (``restartable``), so that killing them disturbs nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis as sync_redis
import redis.asyncio as aioredis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as Partition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from flowcraft_services import procs
from flowcraft_services.cli import start_many
from flowcraft_services.providers import cassandra as cassandra_provider
from flowcraft_services.providers import kafka as kafka_provider
from flowcraft_services.providers.cassandra import cluster

from backends._fixture import spawn_worker
from backends._restart import PrivateServer, PrivateServers, aof_redis
from flowcraft.blueprint import Blueprint
from flowcraft.distributed import ContextStore, CoordinationStore, DistributedAdapter
from flowcraft_kafka import (
    REASON_HEADER,
    CassandraContextStore,
    CassandraSession,
    KafkaAdapter,
    KafkaSettings,
)
from flowcraft_redis_store import RedisCoordinationStore, RedisSettings

__all__ = ["Deployment", "Fixture"]

PARTITIONS = 6
"""Two per worker of the chaos test's three."""
SESSION_TIMEOUT_MS = 2000
"""How long a killed worker keeps its partitions (the suite kills dozens of workers; the
default of 6 s is for production). The provider's broker allows sessions this short with
either group protocol, so the queue takes KIP-848's and sets it as the group's own session;
heartbeats come from librdkafka's own thread, so a busy event loop does not miss them."""


class Deployment:
    """One test's share of the servers."""

    def __init__(self, base: KafkaSettings, lease: float) -> None:
        self.settings = replace(
            base.namespaced(f"t{uuid.uuid4().hex[:8]}"),
            partitions=PARTITIONS,
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=SESSION_TIMEOUT_MS // 4,
        )
        self.lease = lease
        self.adapters: list[DistributedAdapter] = []
        self.clients: list[aioredis.Redis] = []
        self.sessions: list[CassandraSession] = []


class Fixture:
    """What the suite needs from a backend."""

    name = "kafka"

    def __init__(self) -> None:
        self.base = KafkaSettings()
        self.env: dict[str, str] = {}

    def provision(self) -> None:
        """Reach or start Kafka, Cassandra and Redis (in parallel: the JVMs take seconds)."""
        started = start_many(["kafka", "cassandra", "redis"])
        for name, service in started.items():
            if isinstance(service, Exception):
                raise RuntimeError(f"{name} did not start: {service}") from service
            self.env.update(service.env)
        self.base = _settings(self.env)
        with sync_redis.Redis.from_url(self.base.redis.url, socket_timeout=5) as client:
            client.ping()
        # The schema once, before adapters of many processes race to create it.
        asyncio.run(_create_schema(self.base))

    @contextlib.asynccontextmanager
    async def restartable(
        self, *, lease: float
    ) -> AsyncIterator[tuple[Deployment, Callable[[float], Awaitable[None]]]]:
        """A deployment on a private Kafka, Cassandra and Redis, and their restart: all three
        SIGKILLed at once, a pause, then started again on their ports and data, each with the
        durability a deployment that must lose no acknowledged write configures: Cassandra
        with ``commitlog_sync: batch`` (with the default periodic sync, a killed node
        replays its commit log only up to the last sync, seconds behind what it
        acknowledged), Redis with ``appendfsync always``; Kafka recovers what it acknowledged
        from its log segments (a killed process leaves them in the page cache)."""
        with tempfile.TemporaryDirectory(prefix="flowcraft-kafka-restart-") as workdir:
            servers = _private_servers(Path(workdir))
            deployment: Deployment | None = None
            try:
                await asyncio.to_thread(servers.start)
                base = _settings(servers.env)
                await _create_schema(base)
                deployment = Deployment(base, lease)

                async def restart(down_for: float) -> None:
                    await asyncio.to_thread(servers.restart, down_for)

                yield deployment, restart
            finally:
                for adapter in deployment.adapters if deployment is not None else ():
                    await adapter.close()
                await asyncio.to_thread(servers.stop)

    def deployment(self, *, lease: float) -> Deployment:
        """A fresh topic, group and namespace for one test."""
        return Deployment(self.base, lease)

    def spawn_worker(
        self, deployment: Deployment, app: str, env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        """A ``flowcraft worker`` process serving ``deployment`` (for SIGKILL tests)."""
        s = deployment.settings
        settings_env = {
            "KAFKA_BOOTSTRAP_SERVERS": s.bootstrap_servers,
            "CASSANDRA_CONTACT_POINTS": s.contact_points,
            "CASSANDRA_PORT": str(s.cassandra_port),
            "CASSANDRA_LOCAL_DC": s.local_dc,
            "FLOWCRAFT_KAFKA_TOPIC": s.topic,
            "FLOWCRAFT_KAFKA_DEAD_LETTER_TOPIC": s.dead_letters,
            "FLOWCRAFT_KAFKA_GROUP_ID": s.group_id,
            "FLOWCRAFT_KAFKA_PARTITIONS": str(s.partitions),
            "FLOWCRAFT_KAFKA_SESSION_TIMEOUT_MS": str(s.session_timeout_ms),
            "FLOWCRAFT_KAFKA_HEARTBEAT_INTERVAL_MS": str(s.heartbeat_interval_ms),
            "FLOWCRAFT_KAFKA_GROUP_PROTOCOL": s.group_protocol,
            "REDIS_URL": s.redis.url,
            "FLOWCRAFT_REDIS_STATE_PREFIX": s.redis.state_prefix,
            "FLOWCRAFT_REDIS_STATUS_PREFIX": s.redis.status_prefix,
            "FLOWCRAFT_REDIS_COORDINATION_PREFIX": s.redis.coordination_prefix,
            "FLOWCRAFT_REDIS_LEASE_SECONDS": str(deployment.lease),
        }
        return spawn_worker(self.name, app, {**env, **settings_env})

    def adapter(
        self,
        deployment: Deployment,
        registry: Mapping[str, Any],
        blueprints: Mapping[str, Blueprint],
        **options: Any,
    ) -> DistributedAdapter:
        """An adapter (one per worker or client) over ``deployment``."""
        options.setdefault("lease", deployment.lease)
        # Named, so that the servers can count each adapter's connections.
        settings = replace(deployment.settings, client_name=f"fc-{uuid.uuid4().hex[:12]}")
        adapter = KafkaAdapter(settings, registry=registry, blueprints=blueprints, **options)
        deployment.adapters.append(adapter)
        return adapter

    def stores(self, deployment: Deployment) -> tuple[CoordinationStore, ContextStore]:
        """Stores on connections of their own (closed at reset)."""
        client = deployment.settings.redis.client()
        session = CassandraSession(deployment.settings)
        deployment.clients.append(client)
        deployment.sessions.append(session)
        return (
            RedisCoordinationStore(client, deployment.settings.redis),
            CassandraContextStore(session),
        )

    def queued_jobs(self, deployment: Deployment) -> int:
        """Jobs on the topic past the group's committed offsets."""
        s = deployment.settings
        consumer = Consumer({"bootstrap.servers": s.bootstrap_servers, "group.id": s.group_id})
        try:
            metadata = consumer.list_topics(s.topic, timeout=10).topics.get(s.topic)
            if metadata is None or metadata.error is not None:
                return 0
            partitions = [Partition(s.topic, p) for p in metadata.partitions]
            committed = consumer.committed(partitions, timeout=10)
            total = 0
            for tp in committed:
                low, high = consumer.get_watermark_offsets(tp, timeout=10)
                total += high - (tp.offset if tp.offset >= 0 else low)
            return total
        finally:
            consumer.close()

    def client_connections(self, deployment: Deployment, adapter: DistributedAdapter) -> int:
        """Redis connections counted by Redis (client name), Cassandra ones by Cassandra
        (``system_views.clients``, application name), and for Kafka, which lists no
        connections, the most the adapter's Kafka clients hold: one per broker and the
        bootstrap one each."""
        assert isinstance(adapter, KafkaAdapter)
        name = adapter.settings.name
        with sync_redis.Redis.from_url(self.base.redis.url, decode_responses=True) as client:
            redis = sum(1 for c in client.client_list() if c.get("name") == name)
        with cluster(self.env) as servers:
            rows = servers.connect().execute("SELECT client_options FROM system_views.clients")
            cassandra = sum(
                1 for row in rows if (row.client_options or {}).get("APPLICATION_NAME") == name
            )
        return redis + cassandra + adapter.queue.kafka_connections()

    def dead_letters(self, deployment: Deployment) -> list[str]:
        """The reasons in the headers of the dead-letter topic's messages."""
        s = deployment.settings
        consumer = Consumer(
            {
                "bootstrap.servers": s.bootstrap_servers,
                "group.id": f"inspect-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
            }
        )
        try:
            tp = Partition(s.dead_letters, 0)
            try:
                low, high = consumer.get_watermark_offsets(tp, timeout=10)
            except KafkaException:
                return []
            if high <= low:
                return []
            consumer.assign([Partition(s.dead_letters, 0, OFFSET_BEGINNING)])
            reasons: list[str] = []
            seen = 0
            while seen < high - low:
                message = consumer.poll(10)
                if message is None:
                    break
                if message.error() is not None:
                    continue
                seen += 1
                headers = dict(message.headers() or [])
                reasons.append((headers.get(REASON_HEADER) or b"").decode())
            return reasons
        finally:
            consumer.close()

    async def inject(self, deployment: Deployment, body: str) -> None:
        """Produce a raw (possibly malformed) job, as a foreign producer could."""
        s = deployment.settings
        _create_topics(s)
        producer = Producer({"bootstrap.servers": s.bootstrap_servers})
        producer.produce(s.topic, body.encode())
        producer.flush(10)

    async def reset(self, deployment: Deployment) -> None:
        """Close the test's adapters and delete its topics, group and Redis keys (Cassandra
        rows are keyed by the test's run ids and expire with their TTL)."""
        for adapter in deployment.adapters:
            await adapter.close()
        for client in deployment.clients:
            await client.aclose()
        for session in deployment.sessions:
            await session.close()
        deployment.adapters.clear()
        deployment.clients.clear()
        deployment.sessions.clear()
        s = deployment.settings
        with sync_redis.Redis.from_url(self.base.redis.url) as client:
            pattern = f"*{s.redis.coordination_prefix}*"
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.delete(*keys)
        admin = AdminClient({"bootstrap.servers": s.bootstrap_servers})
        for future in admin.delete_consumer_groups([s.group_id], request_timeout=10).values():
            try:
                future.result()
            except KafkaException:
                continue
        topics = [s.topic, s.dead_letters]
        for future in admin.delete_topics(topics, operation_timeout=10).values():
            try:
                future.result()
            except KafkaException:
                continue
        # Deletion completes in the background; a test that starts again after a reset
        # must not produce into a topic still being deleted.
        deadline = time.monotonic() + 30
        while set(topics) & set(admin.list_topics(timeout=10).topics):
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics {topics} not deleted after 30 s")
            await asyncio.sleep(0.1)


def _settings(env: Mapping[str, str]) -> KafkaSettings:
    return KafkaSettings(
        # ``classic`` runs the suite on the protocol ``auto`` falls back to.
        group_protocol=os.environ.get("FLOWCRAFT_KAFKA_GROUP_PROTOCOL", "auto"),
        bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
        contact_points=env["CASSANDRA_CONTACT_POINTS"],
        cassandra_port=int(env["CASSANDRA_PORT"]),
        local_dc=env.get("CASSANDRA_LOCAL_DC", "datacenter1"),
        redis=RedisSettings(url=env["REDIS_URL"]),
    )


_QUICK_JVM = ("-XX:TieredStopAtLevel=1",)
"""For the restart test's JVMs, which serve a few dozen runs: compiled by C1 only, they start
with less CPU than with the providers' settings, tuned for long-lived servers."""


def _quick(argv: list[str]) -> list[str]:
    at = argv.index("-cp")
    return [*argv[:at], *_QUICK_JVM, *argv[at:]]


def _private_servers(workdir: Path) -> PrivateServers:
    """A Kafka broker, a Cassandra node and a Redis server of the restart test's own."""
    kafka_dir, cassandra_dir = workdir / "kafka", workdir / "cassandra"
    kafka_dir.mkdir()
    cassandra_dir.mkdir()
    port, controller = procs.free_port(), procs.free_port()
    kafka = PrivateServer(
        "kafka",
        kafka_dir,
        _quick(kafka_provider.prepare(kafka_dir, port, controller)),
        kafka_provider.KafkaService.probe,
        {"KAFKA_BOOTSTRAP_SERVERS": f"{procs.LOOPBACK}:{port}"},
        start_timeout=240,
    )
    storage, native = procs.free_port(), procs.free_port()
    cassandra = PrivateServer(
        "cassandra",
        cassandra_dir,
        _quick(cassandra_provider.prepare(cassandra_dir, storage, native, durable=True)),
        cassandra_provider.CassandraService.probe,
        {
            "CASSANDRA_CONTACT_POINTS": procs.LOOPBACK,
            "CASSANDRA_PORT": str(native),
            "CASSANDRA_LOCAL_DC": "datacenter1",
        },
        start_timeout=240,
    )
    return PrivateServers([kafka, cassandra, aof_redis(workdir / "redis")])


def _create_topics(s: KafkaSettings) -> None:
    admin = AdminClient({"bootstrap.servers": s.bootstrap_servers})
    topics = [NewTopic(s.topic, s.partitions), NewTopic(s.dead_letters, 1)]
    for future in admin.create_topics(topics, operation_timeout=30).values():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


async def _create_schema(settings: KafkaSettings) -> None:
    session = CassandraSession(settings)
    await session.session()
    await session.close()
