"""Streams transport: a missing consumer group is made again without an error.

A fresh deployment, or a server restarted without persistence, has no group; the worker's first
receive (or the next one) makes it and logs nothing above INFO.
"""

from __future__ import annotations

import logging
import uuid

import pytest
import redis.asyncio as aioredis

from flowcraft import NodeContext, create_flow
from flowcraft.distributed import Client, Worker
from flowcraft_redis import RedisSettings, RedisStreamsAdapter

T = 15.0


async def one(ctx: NodeContext) -> str:
    return "done"


FLOW = create_flow("group").node("a", one)


def _adapter(settings: RedisSettings) -> RedisStreamsAdapter:
    blueprint = FLOW.to_blueprint()
    return RedisStreamsAdapter(
        settings, registry=FLOW.function_registry, blueprints={blueprint.id: blueprint}
    )


async def test_a_lost_group_is_made_again_and_nothing_is_logged_as_an_error(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = RedisSettings(url=redis_url, lease_seconds=1.0).namespaced(
        f"g{uuid.uuid4().hex[:8]}"
    )
    worker_adapter, client_adapter = _adapter(settings), _adapter(settings)
    raw = aioredis.Redis.from_url(redis_url)
    caplog.set_level(logging.WARNING)
    worker = Worker(worker_adapter, concurrency=2, receive_wait=0.05)
    worker.start()
    try:
        client = Client(client_adapter)
        assert (await client.run("group", {}, timeout=T)).status == "completed"
        # As after a restart without persistence: the stream and its group are gone.
        await raw.delete(f"{settings.queue_name}:jobs")
        assert (await client.run("group", {}, timeout=T)).status == "completed"
    finally:
        await worker.stop(timeout=2)
        await worker_adapter.close()
        await client_adapter.close()
        await raw.aclose()
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not errors, [r.getMessage() for r in errors]
