"""A job whose handling fails in the backend (not a lost connection) comes back after the lease.

On Streams the entry is simply not renewed and is taken over. BullMQ renews a job's lock for as
long as the processor holds it, so the adapter must hand the job back itself: before that, such
a job stayed locked, and its run stuck, for as long as the worker lived.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis

from flowcraft import NodeContext, create_flow
from flowcraft.distributed import Client, Worker
from flowcraft.errors import AdapterError
from flowcraft_redis import RedisAdapter, RedisSettings, RedisStreamsAdapter

T = 20.0


async def step(ctx: NodeContext) -> str:
    return str(ctx.input or "") + ctx.node_id


FLOW = create_flow("flaky-backend").node("a", step).node("b", step).edge("a", "b")


@pytest.mark.parametrize("kind", [RedisAdapter, RedisStreamsAdapter], ids=["bullmq", "streams"])
async def test_a_job_failing_in_the_backend_is_handled_again_after_the_lease(
    redis_url: str, kind: type[RedisAdapter] | type[RedisStreamsAdapter]
) -> None:
    settings = RedisSettings(url=redis_url, lease_seconds=1.0).namespaced(
        f"e{uuid.uuid4().hex[:8]}"
    )
    blueprint = FLOW.to_blueprint()
    options: dict[str, Any] = {
        "registry": FLOW.function_registry,
        "blueprints": {blueprint.id: blueprint},
    }
    worker_adapter, client_adapter = kind(settings, **options), kind(settings, **options)
    commit = worker_adapter._commit_hop
    failures: list[str] = []

    async def failing_once(delivery: Any, hop: Any) -> Any:
        if not failures:
            failures.append(hop.member)
            raise AdapterError("redis error: WRONGTYPE (injected)")
        return await commit(delivery, hop)

    worker_adapter._commit_hop = failing_once  # type: ignore[method-assign]
    worker = Worker(worker_adapter, concurrency=2, receive_wait=0.05)
    worker.start()
    try:
        result = await Client(client_adapter).run(blueprint.id, {}, timeout=T)
    finally:
        await worker.stop(timeout=2)
        await worker_adapter.close()
        await client_adapter.close()
    assert len(failures) == 1  # the first hop failed once, then went through
    assert result.status == "completed"
    assert result.context["_outputs.b"] == "ab"


@pytest.mark.parametrize("kind", [RedisAdapter, RedisStreamsAdapter], ids=["bullmq", "streams"])
async def test_a_job_failing_in_the_backend_every_time_is_dead_lettered_and_fails_its_run(
    redis_url: str, kind: type[RedisAdapter] | type[RedisStreamsAdapter]
) -> None:
    settings = RedisSettings(url=redis_url, lease_seconds=1.0).namespaced(
        f"e{uuid.uuid4().hex[:8]}"
    )
    blueprint = FLOW.to_blueprint()
    options: dict[str, Any] = {
        "registry": FLOW.function_registry,
        "blueprints": {blueprint.id: blueprint},
    }
    worker_adapter, client_adapter = kind(settings, **options), kind(settings, **options)
    commit = worker_adapter._commit_hop
    failures: list[str] = []

    async def failing_for_b(delivery: Any, hop: Any) -> Any:
        if hop.member.startswith('["b"'):
            failures.append(hop.member)
            raise AdapterError("redis error: WRONGTYPE (injected)")
        return await commit(delivery, hop)

    worker_adapter._commit_hop = failing_for_b  # type: ignore[method-assign]
    worker = Worker(worker_adapter, concurrency=2, receive_wait=0.05, max_deliveries=3)
    worker.start()
    try:
        result = await Client(client_adapter).run(blueprint.id, {}, timeout=T)
    finally:
        await worker.stop(timeout=2)
        await worker_adapter.close()
        await client_adapter.close()
    # Streams: a reserved job comes back as a new stream entry, whose count starts again.
    assert 3 <= len(failures) <= 4
    assert result.status == "failed"
    assert "WRONGTYPE" in result.errors[0].message
    assert "max_deliveries" in result.errors[0].message
    with redis.Redis.from_url(redis_url) as raw:
        if kind is RedisStreamsAdapter:
            letters = raw.xrange(f"{settings.queue_name}:dead")
            assert len(letters) == 1 and b"WRONGTYPE" in letters[0][1][b"reason"]
        else:
            assert raw.zcard(f"bull:{settings.queue_name}:failed") == 1
