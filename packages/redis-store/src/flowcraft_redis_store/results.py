"""``RedisResultChannel``: the TypeScript status key, and one pub/sub channel that wakes every
waiting process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
import redis.asyncio as aioredis

from flowcraft.backend import Woken, ts_status
from flowcraft.result import WorkflowResult
from flowcraft_redis_store.batch import Batcher, Command
from flowcraft_redis_store.errors import text, translated
from flowcraft_redis_store.settings import RedisSettings

__all__ = ["RedisResultChannel"]

_log = logging.getLogger("flowcraft.redis")
_BACKOFF_MAX = 2.0
_CANCELLED = "Workflow cancelled"


class RedisResultChannel:
    """Writes ``workflow:status:<runId>`` (the TS adapter's record, read by TS clients; a
    cancelled run's carries the reason ``Workflow cancelled`` unless its errors give one) and
    publishes the run id on ``<status prefix>wake``; a process listens with one connection.

    Pub/sub delivers at most once: after the listener's connection drops, waiters are told
    to re-check everything (``woken(None)``).
    """

    def __init__(self, client: aioredis.Redis, settings: RedisSettings, batcher: Batcher) -> None:
        self._redis = client
        self._settings = settings
        self._batch = batcher
        self._channel = settings.status_key("wake")
        self._task: asyncio.Task[None] | None = None
        self._pubsub: Any = None

    async def publish(self, run_id: str, result: WorkflowResult | None) -> None:
        """Store the TS status (final results only) and wake the waiters."""
        ttl = self._settings.state_ttl_seconds
        commands: list[Command] = []
        if result is not None and result.status != "awaiting":
            status_key = self._settings.status_key(run_id)
            record = ts_status(result)
            if result.status == "cancelled":
                # The TS client prints a cancelled run's reason; a cancel call gives none.
                record.setdefault("reason", _CANCELLED)
            commands.append(("SET", status_key, orjson.dumps(record)))
            if ttl > 0:
                commands.append(("EXPIRE", status_key, ttl))
                commands.append(("EXPIRE", self._settings.state_key(run_id), ttl))
        commands.append(("PUBLISH", self._channel, run_id))
        async with translated():
            await self._batch.transaction(commands)

    async def listen(self, woken: Woken) -> None:
        """Subscribe (one connection for the whole process) and deliver wakes to ``woken``."""
        if self._task is not None:
            return
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        async with translated():
            await pubsub.subscribe(self._channel)
        self._pubsub = pubsub
        self._task = asyncio.ensure_future(self._read(pubsub, woken))

    async def _read(self, pubsub: Any, woken: Woken) -> None:
        pause = 0.05
        lost = False
        while True:
            try:
                message = await pubsub.get_message(timeout=1.0)
            except Exception as exc:
                # redis-py reconnects and subscribes again on the next read; what was
                # published meanwhile is lost, so waiters look again once it is back.
                _log.warning("result channel lost its connection (%s); reconnecting", exc)
                lost = True
                await asyncio.sleep(pause)
                pause = min(_BACKOFF_MAX, pause * 2)
                continue
            if lost:
                lost, pause = False, 0.05
                woken(None)
            if message is not None and message.get("type") == "message":
                woken(text(message["data"]))

    async def close(self) -> None:
        """Stop listening and close the subscription's connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
