"""Flowcraft's distributed backend on Apache Kafka (jobs), Apache Cassandra (contexts and the
TypeScript status table) and Redis (coordination and result wakes)."""

from flowcraft_kafka.adapter import KafkaAdapter
from flowcraft_kafka.context import CassandraContextStore, CassandraSession
from flowcraft_kafka.queue import REASON_HEADER, SOURCE_HEADER, KafkaQueue
from flowcraft_kafka.results import KafkaResultChannel
from flowcraft_kafka.settings import KafkaSettings

__all__ = [
    "REASON_HEADER",
    "SOURCE_HEADER",
    "CassandraContextStore",
    "CassandraSession",
    "KafkaAdapter",
    "KafkaQueue",
    "KafkaResultChannel",
    "KafkaSettings",
]
