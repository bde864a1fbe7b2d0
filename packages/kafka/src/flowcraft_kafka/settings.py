"""Connection settings and names of the Kafka backend, read from environment variables.

| variable | field | default |
| --- | --- | --- |
| ``KAFKA_BOOTSTRAP_SERVERS`` | ``bootstrap_servers`` | ``127.0.0.1:9092`` |
| ``CASSANDRA_CONTACT_POINTS`` | ``contact_points`` (comma-separated) | ``127.0.0.1`` |
| ``CASSANDRA_PORT`` | ``cassandra_port`` | ``9042`` |
| ``CASSANDRA_LOCAL_DC`` | ``local_dc`` | ``datacenter1`` |
| ``REDIS_URL`` and ``FLOWCRAFT_REDIS_*`` | ``redis`` (:class:`RedisSettings`) | localhost |
| ``FLOWCRAFT_KAFKA_<FIELD>`` | any other field, e.g. ``FLOWCRAFT_KAFKA_TOPIC`` | below |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

from flowcraft.backend import env_settings, merge_settings
from flowcraft_redis_store import RedisSettings

__all__ = ["KafkaSettings"]

_STANDARD = {
    "bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
    "contact_points": "CASSANDRA_CONTACT_POINTS",
    "cassandra_port": "CASSANDRA_PORT",
    "local_dc": "CASSANDRA_LOCAL_DC",
}
_PROTOCOLS = ("auto", "consumer", "classic")


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Where the servers are and what the backend names on them.

    The defaults keep the TypeScript ``@flowcraft/kafka-adapter``'s names (topic
    ``flowcraft-jobs``, group ``flowcraft-workers``, table ``statuses``) so a TypeScript client
    can drive Python workers.

    Attributes:
        bootstrap_servers: Kafka brokers, ``host:port[,host:port]``.
        topic: The jobs topic; messages are keyed by run id (murmur2, as Java and kafkajs).
        dead_letter_topic: Where rejected jobs go, the reason in the ``flowcraft-reason``
            header; empty: ``<topic>.dlq``.
        group_id: The workers' consumer group.
        partitions: Partitions of the jobs topic when the backend creates it: the most
            workers that can share the load (a run's jobs stay on one partition).
        group_protocol: ``auto`` (KIP-848's ``consumer`` protocol where the broker has it
            and lets the group have ``session_timeout_ms`` and ``heartbeat_interval_ms``,
            else ``classic``, the reason logged), ``consumer`` (KIP-848 even with the
            broker's session timeout, 45 s by default) or ``classic`` (cooperative-sticky).
        session_timeout_ms: How long a dead worker keeps its partitions (with the consumer
            protocol, the group's ``consumer.session.timeout.ms``, which the queue sets).
        heartbeat_interval_ms: How often a worker heartbeats (consumer protocol: the
            group's ``consumer.heartbeat.interval.ms``, also how soon the others learn of a
            new assignment).
        max_poll_interval_ms: Kafka's bound between polls; polling never waits for nodes,
            so only a rebalance that waits for running jobs (``drain_seconds``) comes near it.
        drain_seconds: How long a revoked partition waits for its running jobs to finish
            before it is handed over (their jobs are then redelivered to the new owner).
        fetch_batch: Most messages one fetch hands over.
        buffer: Fetched, not yet received messages above which fetching pauses.
        linger_ms: Producer batching delay.
        retention_seconds: Retention of the topics the backend creates, and the lifetime of
            delivery counters.
        contact_points: Cassandra hosts.
        cassandra_port: Cassandra's native port.
        local_dc: The data center whose nodes are queried.
        keyspace: Cassandra keyspace.
        replication: Replication factor of the keyspace when the backend creates it.
        context_table: Per-key context rows ``(run_id, key) -> value``.
        status_table: The TypeScript status table ``(run_id) -> status, status_data``.
        ts_context_table: The TypeScript context table ``(run_id) -> context_data`` (a run's
            whole context as one JSON object), read once when a run a TypeScript client
            started is adopted.
        create_schema: Create the keyspace, tables and topics when missing.
        ttl_seconds: TTL of context and status rows.
        request_timeout: Seconds a Cassandra request may take.
        client_name: Tells this process's connections apart (Kafka ``client.id``, Cassandra
            application name, Redis client name); empty: ``flowcraft``.
        redis: The coordination store's Redis.
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "flowcraft-jobs"
    dead_letter_topic: str = ""
    group_id: str = "flowcraft-workers"
    partitions: int = 8
    group_protocol: str = "auto"
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    max_poll_interval_ms: int = 300_000
    drain_seconds: float = 60.0
    fetch_batch: int = 500
    buffer: int = 2000
    linger_ms: int = 1
    retention_seconds: int = 86_400
    contact_points: str = "127.0.0.1"
    cassandra_port: int = 9042
    local_dc: str = "datacenter1"
    keyspace: str = "flowcraft"
    replication: int = 1
    context_table: str = "context_values"
    status_table: str = "statuses"
    ts_context_table: str = "contexts"
    create_schema: bool = True
    ttl_seconds: int = 86_400
    request_timeout: float = 10.0
    client_name: str = ""
    redis: RedisSettings = field(default_factory=RedisSettings)

    def __post_init__(self) -> None:
        if self.group_protocol not in _PROTOCOLS:
            choices = ", ".join(_PROTOCOLS)
            raise ValueError(f"group_protocol must be one of {choices}: {self.group_protocol!r}")

    @classmethod
    def from_env(cls, **overrides: Any) -> KafkaSettings:
        """Settings from the environment (see the module's table), then keyword overrides."""
        values: dict[str, Any] = env_settings(cls, "FLOWCRAFT_KAFKA_", os.environ, _STANDARD)
        values["redis"] = RedisSettings.from_env()
        return merge_settings(cls(), {**values, **overrides}, backend="Kafka")

    @property
    def dead_letters(self) -> str:
        """The dead-letter topic."""
        return self.dead_letter_topic or f"{self.topic}.dlq"

    @property
    def name(self) -> str:
        """The client name every connection carries."""
        return self.client_name or "flowcraft"

    def namespaced(self, tag: str) -> KafkaSettings:
        """These settings with a topic, group and Redis namespace of their own (``tag`` in
        each), for deployments, tests or benchmarks sharing the servers. Cassandra rows need
        no namespace: they are keyed by run ids, which are unique."""
        return replace(
            self,
            topic=f"{self.topic}-{tag}",
            dead_letter_topic=f"{self.dead_letters}-{tag}",
            group_id=f"{self.group_id}-{tag}",
            redis=self.redis.namespaced(tag),
        )
