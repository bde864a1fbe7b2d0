"""``GcpResultChannel``: each run's final status document in Firestore, wakes over Redis.

The final result itself is core's record in the coordination store (written once). Besides it,
``publish`` creates ``<status_collection>/<runId>`` once (``create()``; AlreadyExists means a
redelivered job got there first), as the TypeScript adapter keeps it for dashboards and other
readers: ``status``, ``finalStatus`` (the TypeScript status record as JSON text; Firestore
maps cannot hold every JSON value, e.g. arrays of arrays), ``lastUpdated`` and ``expireAt``.

Waiters are woken by Redis pub/sub (``flowcraft_redis_store.RedisResultChannel``, one
subscription per process) rather than a Firestore listener: the Python client runs listeners
in threads, one watch stream per listened document or query, while one Redis channel serves
every wait of a process and is on the coordination server the waiter re-reads anyway. Both
writes go out together, so the wake does not wait for Firestore.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import orjson
from google.api_core import exceptions as google_errors
from google.cloud import firestore

from flowcraft.backend import Woken, ts_status
from flowcraft.result import WorkflowResult
from flowcraft_gcp._errors import firestore_errors
from flowcraft_gcp.context import INLINE_MAX, FirestoreContextStore, document_id
from flowcraft_gcp.settings import GcpSettings
from flowcraft_redis_store import RedisResultChannel

__all__ = ["GcpResultChannel"]


class GcpResultChannel:
    """A :class:`~flowcraft.backend.ResultChannel`: status documents in Firestore, wakes on
    Redis.

    Args:
        settings: The status collection and retention.
        context: The context store, whose Firestore client it shares.
        wakes: The Redis channel that wakes waiting processes.
    """

    def __init__(
        self, settings: GcpSettings, context: FirestoreContextStore, wakes: RedisResultChannel
    ) -> None:
        self._settings = settings
        self._context = context
        self._wakes = wakes

    async def publish(self, run_id: str, result: WorkflowResult | None) -> None:
        """Create the run's status document (final results only) and wake the waiters."""
        # None: the Redis channel only publishes the wake, it stores no status of its own.
        wake = self._wakes.publish(run_id, None)
        if result is None or result.status == "awaiting":
            await wake
            return
        await asyncio.gather(self._store(run_id, result), wake)

    async def _store(self, run_id: str, result: WorkflowResult) -> None:
        record = orjson.dumps(ts_status(result))
        data: dict[str, object] = {
            "status": result.status,
            "lastUpdated": firestore.SERVER_TIMESTAMP,
            "expireAt": datetime.now(UTC) + timedelta(seconds=self._settings.retention_seconds),
        }
        if len(record) <= INLINE_MAX:
            data["finalStatus"] = record.decode()
        else:
            # Over a document's size: the record stays in the coordination store only.
            data["finalStatusOmitted"] = len(record)
        ref = self._context.client.collection(self._settings.status_collection).document(
            document_id(run_id)
        )
        async with firestore_errors:
            with contextlib.suppress(google_errors.AlreadyExists):
                await ref.create(data)

    async def listen(self, woken: Woken) -> None:
        """Subscribe to the wakes (one Redis connection per process)."""
        await self._wakes.listen(woken)

    async def close(self) -> None:
        """Stop listening."""
        await self._wakes.close()
