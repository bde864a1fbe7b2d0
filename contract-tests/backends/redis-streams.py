"""Contract-suite fixture of flowcraft-redis with the Streams transport.

Provisioning as for the BullMQ transport (``backends/redis.py``): ``REDIS_URL`` if set, else a
local redis-server.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import redis as sync_redis

from flowcraft_redis import RedisStreamsAdapter

# The BullMQ fixture module sits beside this one; contract fixtures are loaded by path.
_path = Path(__file__).with_name("redis.py")
_spec = importlib.util.spec_from_file_location("_contract_redis", _path)
assert _spec is not None and _spec.loader is not None
_redis = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_redis)

__all__ = ["Fixture"]


class Fixture(_redis.Fixture):  # type: ignore[name-defined,misc]
    """The BullMQ fixture with the Streams adapter, its dead-letter stream and raw entries."""

    name = "redis-streams"
    adapter_class = RedisStreamsAdapter
    carries_raw_text = True
    """Stream entries hold the job's text as it was written, JSON or not."""

    def dead_letters(self, deployment: Any) -> list[str]:
        """Reasons recorded on the dead-letter stream."""
        stream = f"{deployment.settings.queue_name}:dead"
        with sync_redis.Redis.from_url(self.url, decode_responses=True) as client:
            return [fields.get("reason", "") for _, fields in client.xrange(stream)]

    async def inject(self, deployment: Any, body: str) -> None:
        """Append a raw (possibly malformed) entry, as a foreign producer could."""
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.url)
        try:
            await client.xadd(f"{deployment.settings.queue_name}:jobs", {"body": body})
        finally:
            await client.aclose()

    async def reset(self, deployment: Any) -> None:
        """Close the adapters and delete the test's keys, streams included."""
        await super().reset(deployment)
        with sync_redis.Redis.from_url(self.url) as client:
            keys = list(client.scan_iter(match=f"{deployment.settings.queue_name}:*", count=1000))
            if keys:
                client.delete(*keys)
