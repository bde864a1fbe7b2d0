"""Driver errors translated into Flowcraft's, where they occur."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from types import TracebackType

import redis.exceptions

from flowcraft.errors import AdapterError, ConnectionFailed

__all__ = ["retryable_errors", "text", "translated"]

retryable_errors: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
"""Driver errors after which a reconnect and retry can succeed."""


class _Translated:
    # A class, not an @asynccontextmanager: it wraps every command of a hop, and a
    # generator-based manager costs several times more to enter and leave.
    __slots__ = ()

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if isinstance(exc, retryable_errors):
            raise ConnectionFailed(f"redis unreachable: {exc}") from exc
        if isinstance(exc, redis.exceptions.RedisError):
            raise AdapterError(f"redis error: {exc}") from exc
        return False


_TRANSLATED = _Translated()


def translated() -> AbstractAsyncContextManager[None]:
    """Re-raise redis errors as :class:`ConnectionFailed` or :class:`AdapterError`."""
    return _TRANSLATED


def text(raw: object) -> str:
    """A reply as text (replies are bytes: the client does not decode)."""
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
