"""Contract-suite fixture of flowcraft-redis with the Streams transport.

Provisioning as for the BullMQ transport (``backends/redis.py``): ``REDIS_URL`` if set, else a
local redis-server.
"""

from __future__ import annotations

from typing import Any

from backends.redis import Fixture as RedisFixture
from flowcraft_redis import RedisStreamsAdapter

__all__ = ["Fixture"]


class Fixture(RedisFixture):
    """The BullMQ fixture with the Streams adapter, its dead-letter stream and raw entries."""

    name = "redis-streams"
    adapter_class = RedisStreamsAdapter
    carries_raw_text = True
    """Stream entries hold the job's text as it was written, JSON or not."""

    def queued_jobs(self, deployment: Any) -> int:
        """Entries in the stream (pending ones included) and reservations."""
        key = deployment.settings.queue_key
        with self.sync(deployment) as client:
            return int(client.xlen(key("jobs")) + client.zcard(key("delayed")))

    def dead_letters(self, deployment: Any) -> list[str]:
        """Reasons recorded on the dead-letter stream."""
        stream = deployment.settings.queue_key("dead")
        with self.sync(deployment, decode_responses=True) as client:
            return [fields.get("reason", "") for _, fields in client.xrange(stream)]

    async def inject(self, deployment: Any, body: str) -> None:
        """Append a raw (possibly malformed) entry, as a foreign producer could."""
        client = deployment.settings.client()
        try:
            await client.xadd(deployment.settings.queue_key("jobs"), {"body": body})
        finally:
            await client.aclose()

    async def reset(self, deployment: Any) -> None:
        """Close the adapters and delete the test's keys, streams included."""
        await super().reset(deployment)
        with self.sync(deployment) as client:
            keys = list(client.scan_iter(match=f"*{deployment.settings.queue_name}:*", count=1000))
            if keys:
                client.delete(*keys)
