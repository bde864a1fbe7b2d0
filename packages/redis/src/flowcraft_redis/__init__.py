"""Flowcraft's Redis backend: BullMQ and Streams transports over Redis context and
coordination stores."""

from flowcraft_redis._errors import retryable_errors
from flowcraft_redis._settings import RedisSettings
from flowcraft_redis.adapter import RedisAdapter, RedisStreamsAdapter
from flowcraft_redis.context import RedisContextStore
from flowcraft_redis.coordination import RedisCoordinationStore
from flowcraft_redis.reconciler import RedisReconciler, RedisReconcileStats, create_reconciler

__all__ = [
    # Adapters
    "RedisAdapter",
    "RedisStreamsAdapter",
    # Reconciliation
    "create_reconciler",
    "RedisReconciler",
    "RedisReconcileStats",
    # Settings
    "RedisSettings",
    # Stores
    "RedisContextStore",
    "RedisCoordinationStore",
    # Errors
    "retryable_errors",
]
