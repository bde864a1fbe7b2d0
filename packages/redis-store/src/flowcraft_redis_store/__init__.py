"""Flowcraft's Redis stores, without any queue: the coordination store every Redis-coordinated
backend shares (RabbitMQ, Kafka, Pub/Sub, Azure), the context store and result channel of the
Redis backend, and the connection, batching and error handling they need.

Installable alone as ``flowcraft-redis-store`` (redis-py and hiredis only, no bullmq).
"""

from flowcraft_redis_store.batch import BatchedStore, Batcher, Command, pairs
from flowcraft_redis_store.context import RedisContextStore, decode_fields
from flowcraft_redis_store.coordination import RedisCoordinationStore
from flowcraft_redis_store.errors import retryable_errors, text, translated
from flowcraft_redis_store.events import RedisEventLog
from flowcraft_redis_store.results import RedisResultChannel
from flowcraft_redis_store.settings import DEFAULT_URL, RedisSettings

__all__ = [
    # Stores
    "RedisContextStore",
    "RedisCoordinationStore",
    "RedisEventLog",
    "RedisResultChannel",
    # Connection and layout
    "DEFAULT_URL",
    "RedisSettings",
    # Batching
    "BatchedStore",
    "Batcher",
    "Command",
    "pairs",
    "decode_fields",
    # Errors
    "retryable_errors",
    "text",
    "translated",
]
