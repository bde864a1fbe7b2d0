"""The final-result channel: the TS status key plus a blocking list that wakes waiters."""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis

from flowcraft.result import WorkflowResult
from flowcraft_redis._batch import Batcher, Command
from flowcraft_redis._errors import translated
from flowcraft_redis._settings import RedisSettings

__all__ = ["ResultChannel"]


def ts_status(result: WorkflowResult) -> dict[str, Any]:
    """The TypeScript adapter's ``workflow:status:<runId>`` JSON."""
    out: dict[str, Any] = {"status": result.status}
    if result.status == "completed":
        out["payload"] = {
            "context": result.context,
            "serializedContext": result.serialized_context,
            "status": "completed",
        }
    elif result.errors:
        out["reason"] = "; ".join(e.message for e in result.errors)
    return out


class ResultChannel:
    """Writes ``workflow:status:<runId>`` and wakes clients blocked on the run's wake list.

    A waiter pops one wake token and puts it back, so every waiter of a run wakes; a token left
    behind only causes one extra check of the stored result.
    """

    def __init__(self, client: aioredis.Redis, settings: RedisSettings, batcher: Batcher) -> None:
        self._redis = client
        self._settings = settings
        self._batch = batcher

    def _wake_key(self, run_id: str) -> str:
        return f"{self._settings.status_prefix}{run_id}:wake"

    async def publish(self, run_id: str, result: WorkflowResult | None) -> None:
        """Store the TS status (terminal results only) and wake the waiters."""
        ttl = self._settings.state_ttl_seconds
        wake = self._wake_key(run_id)
        commands: list[Command] = []
        if result is not None and result.status != "awaiting":
            status_key = self._settings.status_key(run_id)
            commands.append(("SET", status_key, orjson.dumps(ts_status(result))))
            if ttl > 0:
                commands.append(("EXPIRE", status_key, ttl))
                commands.append(("EXPIRE", self._settings.state_key(run_id), ttl))
        commands.append(("RPUSH", wake, b"1"))
        commands.append(("EXPIRE", wake, max(ttl, 60)))
        async with translated():
            await self._batch.transaction(commands)

    async def wait(self, run_id: str, timeout: float) -> None:
        """Block until the run publishes, or ``timeout`` seconds."""
        wake = self._wake_key(run_id)
        async with translated():
            # Short blocks: the caller loops until its deadline, and no wake token is lost.
            popped = await self._redis.blpop([wake], timeout=min(max(timeout, 0.01), 2.0))
            if popped is not None:
                await self._batch.run([("RPUSH", wake, b"1")])
