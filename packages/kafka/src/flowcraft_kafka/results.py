"""``KafkaResultChannel``: the TypeScript status row in Cassandra, wakes over Redis pub/sub.

Wakes go through Redis pub/sub (``flowcraft_redis_store.RedisResultChannel``: one connection
per process, pushed to every waiting process at once) rather than a results topic: a topic
would need a consumer per client process reading every run's result, and each wake would wait
for a fetch round; Redis is already beside the queue for coordination.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from flowcraft.backend import Woken, ts_status
from flowcraft.result import WorkflowResult
from flowcraft_kafka.context import CassandraSession
from flowcraft_redis_store import RedisResultChannel

__all__ = ["KafkaResultChannel"]


class KafkaResultChannel:
    """Writes the run's row of the TypeScript ``statuses`` table once (a lightweight
    transaction), then wakes the waiters through ``wakes``.

    Args:
        session: The adapter's Cassandra session.
        wakes: The Redis channel that carries the wakes.
    """

    def __init__(self, session: CassandraSession, wakes: RedisResultChannel) -> None:
        self._db = session
        self._wakes = wakes
        settings = session.settings
        table = f"{settings.keyspace}.{settings.status_table}"
        ttl = settings.ttl_seconds
        self._insert = (
            f"INSERT INTO {table} (run_id, status, status_data, updated_at)"
            f" VALUES (?, ?, ?, ?) IF NOT EXISTS USING TTL {ttl}"
        )
        # A TypeScript client inserts its run's row as 'running' before the first job.
        self._update = (
            f"UPDATE {table} USING TTL {ttl} SET status = ?, status_data = ?, updated_at = ?"
            " WHERE run_id = ? IF status = 'running'"
        )

    async def publish(self, run_id: str, result: WorkflowResult | None) -> None:
        """Wake every waiting process, then store a final result's status row (once).

        Python clients read the result core stored before this call, so they are woken
        first: the status row's lightweight transaction (a Paxos round) would otherwise delay
        every completion seen. A crash in between leaves the row to core's reconcile pass,
        which publishes a final result again."""
        await self._wakes.publish(run_id, None)
        if result is not None and result.status != "awaiting":
            data = orjson.dumps(ts_status(result)).decode()
            now = datetime.now(UTC)
            insert = await self._db.prepared("status-insert", self._insert)
            rows = await self._db.execute(insert, (run_id, result.status, data, now))
            if rows and not rows[0][0]:  # the "[applied]" column
                update = await self._db.prepared("status-update", self._update)
                await self._db.execute(update, (result.status, data, now, run_id))

    async def listen(self, woken: Woken) -> None:
        """Listen for wakes on Redis (one subscription per process)."""
        await self._wakes.listen(woken)

    async def close(self) -> None:
        """Stop listening."""
        await self._wakes.close()
