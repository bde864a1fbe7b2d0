"""Flowcraft's Redis backend: context and coordination stores on Redis."""

from flowcraft_redis._errors import retryable_errors
from flowcraft_redis._settings import RedisSettings
from flowcraft_redis.adapter import RedisAdapter
from flowcraft_redis.context import RedisContextStore
from flowcraft_redis.coordination import RedisCoordinationStore

__all__ = [
    # Adapters
    "RedisAdapter",
    # Settings
    "RedisSettings",
    # Stores
    "RedisContextStore",
    "RedisCoordinationStore",
    # Errors
    "retryable_errors",
]
