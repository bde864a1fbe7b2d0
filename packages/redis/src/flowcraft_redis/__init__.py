"""Flowcraft's Redis backend: BullMQ and Streams transports over the Redis stores of
``flowcraft_redis_store``."""

from flowcraft_redis.adapter import RedisAdapter, RedisStreamsAdapter
from flowcraft_redis.reconciler import RedisReconciler, create_reconciler
from flowcraft_redis_store import (
    RedisContextStore,
    RedisCoordinationStore,
    RedisSettings,
    retryable_errors,
)

__all__ = [
    # Adapters
    "RedisAdapter",
    "RedisStreamsAdapter",
    # Reconciliation
    "create_reconciler",
    "RedisReconciler",
    # Settings
    "RedisSettings",
    # Stores
    "RedisContextStore",
    "RedisCoordinationStore",
    # Errors
    "retryable_errors",
]
