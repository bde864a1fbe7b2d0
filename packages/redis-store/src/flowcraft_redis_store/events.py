"""``RedisEventLog``: each run's events in a Redis stream, capped and expiring."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from flowcraft_redis_store.batch import Batcher, Command
from flowcraft_redis_store.errors import text, translated
from flowcraft_redis_store.settings import RedisSettings

__all__ = ["RedisEventLog"]


class RedisEventLog:
    """An :class:`~flowcraft.backend.EventLog` on ``<status prefix><runId>:events``: appends
    join the adapter's batch, readers block on XREAD (a connection of the pool each).

    Args:
        max_events: Approximate cap of a run's stream (``MAXLEN ~``).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        settings: RedisSettings,
        batcher: Batcher,
        *,
        max_events: int = 10_000,
    ) -> None:
        self._redis = client
        self._settings = settings
        self._batch = batcher
        self._max = max_events

    def _key(self, run_id: str) -> str:
        return f"{self._settings.status_key(run_id)}:events"

    async def append(self, run_id: str, events: Sequence[bytes]) -> None:
        key = self._key(run_id)
        commands: list[Command] = [
            ("XADD", key, "MAXLEN", "~", self._max, "*", "e", event) for event in events
        ]
        ttl = self._settings.state_ttl_seconds
        if ttl > 0:
            commands.append(("EXPIRE", key, ttl))
        async with translated():
            await self._batch.run(commands)

    async def read(self, run_id: str, after: str | None, wait: float) -> list[tuple[str, bytes]]:
        block = int(wait * 1000) if wait > 0 else None
        async with translated():
            reply: Any = await self._redis.xread(
                {self._key(run_id): after or "0-0"}, count=1000, block=block
            )
        return [
            (text(entry), fields[b"e"]) for _, entries in reply or () for entry, fields in entries
        ]
