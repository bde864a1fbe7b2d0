"""The botocore clients of one adapter, opened on first use, and the translation of their
errors into Flowcraft's."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from aiobotocore.session import AioSession, get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
)

from flowcraft.backend import AdapterError, ConnectionFailed
from flowcraft_sqs.settings import SqsSettings

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient
    from types_aiobotocore_sqs import SQSClient

__all__ = ["Clients", "error_code", "translated"]

# Throttling that outlasted botocore's retries is waited out like an outage: the worker
# backs off and retries the job in place instead of failing it.
_BUSY = {
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "ServiceUnavailable",
    "InternalServerError",
    "InternalFailure",
}
_UNREACHABLE = (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError, HTTPClientError)


def error_code(exc: BaseException) -> str:
    """The AWS error code of a ``ClientError`` ("" for anything else)."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


@contextlib.contextmanager
def translated(service: str) -> Iterator[None]:
    """Re-raise botocore errors as ``ConnectionFailed`` (unreachable, throttled) or
    ``AdapterError`` (anything else the service or driver rejected)."""
    try:
        yield
    except _UNREACHABLE as exc:
        raise ConnectionFailed(f"{service} unreachable: {exc}") from exc
    except ClientError as exc:
        if error_code(exc) in _BUSY:
            raise ConnectionFailed(f"{service} unavailable: {exc}") from exc
        raise AdapterError(f"{service} error: {exc}") from exc
    except (BotoCoreError, OSError) as exc:
        raise ConnectionFailed(f"{service} unreachable: {exc}") from exc


class Clients:
    """The SQS and DynamoDB clients of one adapter.

    Opened on first use (a factory's ``__init__`` cannot await), closed by :meth:`close`;
    a part used after ``close`` opens them again rather than failing, as a redis-py client
    reconnects.
    """

    def __init__(self, settings: SqsSettings, session: AioSession | None = None) -> None:
        self.settings = settings
        self._session = session or get_session()
        self._stack: AsyncExitStack | None = None
        self._sqs: SQSClient | None = None
        self._dynamodb: DynamoDBClient | None = None
        self._lock = asyncio.Lock()

    async def sqs(self) -> SQSClient:
        """The SQS client."""
        if self._sqs is None:
            await self._open()
        assert self._sqs is not None
        return self._sqs

    async def dynamodb(self) -> DynamoDBClient:
        """The DynamoDB client."""
        if self._dynamodb is None:
            await self._open()
        assert self._dynamodb is not None
        return self._dynamodb

    async def _open(self) -> None:
        async with self._lock:
            if self._sqs is not None:
                return
            stack = AsyncExitStack()
            create: Any = self._session.create_client
            self._dynamodb = await stack.enter_async_context(
                create("dynamodb", **self.settings.client_kwargs("dynamodb"))
            )
            self._sqs = await stack.enter_async_context(
                create("sqs", **self.settings.client_kwargs("sqs"))
            )
            self._stack = stack

    async def close(self) -> None:
        """Close both clients; safe to call repeatedly."""
        stack, self._stack = self._stack, None
        self._sqs = self._dynamodb = None
        if stack is not None:
            await stack.aclose()
