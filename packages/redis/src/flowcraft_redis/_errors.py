"""Driver errors translated into Flowcraft's, where they occur."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.exceptions

from flowcraft.errors import AdapterError, ConnectionFailed

__all__ = ["retryable_errors", "text", "translated"]

retryable_errors: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
"""Driver errors after which a reconnect and retry can succeed."""


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Re-raise redis errors as :class:`ConnectionFailed` or :class:`AdapterError`."""
    try:
        yield
    except retryable_errors as exc:
        raise ConnectionFailed(f"redis unreachable: {exc}") from exc
    except redis.exceptions.RedisError as exc:
        raise AdapterError(f"redis error: {exc}") from exc


def text(raw: object) -> str:
    """A reply as text (replies are bytes: the client does not decode)."""
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
