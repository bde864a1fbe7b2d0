"""Servers for Flowcraft's backends: install, start, reset and stop them, with or without Docker.

Typical use::

    from flowcraft_services import resolve

    redis = resolve("redis")   # env vars > Docker (testcontainers) > local processes
    env = redis.start()        # {"REDIS_URL": "redis://127.0.0.1:PORT/0"}
    redis.reset()
    redis.stop()
"""

from .base import LocalService, Service
from .errors import ServiceError
from .registry import ALIASES, DEFAULT, PROVIDERS
from .resolve import from_state, resolve

__all__ = [
    "ALIASES",
    "DEFAULT",
    "PROVIDERS",
    "LocalService",
    "Service",
    "ServiceError",
    "from_state",
    "resolve",
]
