"""Redis driver errors translated into Flowcraft's, where they occur."""

from __future__ import annotations

import redis.exceptions

from flowcraft.backend import translate_errors

__all__ = ["retryable_errors", "text", "translated"]

retryable_errors: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
"""Driver errors after which a reconnect and retry can succeed."""

_TRANSLATED = translate_errors("redis", retryable_errors, (redis.exceptions.RedisError,))


def translated() -> translate_errors:
    """Re-raise redis errors as :class:`~flowcraft.errors.ConnectionFailed` or
    :class:`~flowcraft.errors.AdapterError` (one shared instance: it wraps every command)."""
    return _TRANSLATED


def text(raw: object) -> str:
    """A reply as text (replies are bytes: the client does not decode)."""
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
