"""A job whose handling fails in the backend (not a lost connection) comes back after the lease,
and is given up on after the worker's ``max_deliveries``.

On Streams the entry is simply not renewed and is taken over. BullMQ renews a job's lock for as
long as the processor holds it, so the adapter must hand the job back itself: before that, such
a job stayed locked, and its run stuck, for as long as the worker lived.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis

from flowcraft import NodeContext, create_flow
from flowcraft.distributed import Client, Worker
from flowcraft.errors import AdapterError, DeliveryLimitExceeded
from flowcraft.result import WorkflowResult
from flowcraft_redis import RedisAdapter, RedisSettings, RedisStreamsAdapter

T = 20.0


async def step(ctx: NodeContext) -> str:
    return str(ctx.input or "") + ctx.node_id


FLOW = create_flow("flaky-backend").node("a", step).node("b", step).edge("a", "b")


Kind = type[RedisAdapter] | type[RedisStreamsAdapter]
KINDS = pytest.mark.parametrize(
    "kind", [RedisAdapter, RedisStreamsAdapter], ids=["bullmq", "streams"]
)


async def run_with_failing_hops(
    redis_url: str, kind: Kind, fails: Callable[[str, list[str]], bool], **worker: Any
) -> tuple[WorkflowResult, list[str], RedisSettings]:
    """Run FLOW with a worker whose hop commits raise a store error (not a lost connection)
    when ``fails(member, failures so far)``; the result, the failed hops, the settings."""
    settings = RedisSettings(url=redis_url, lease_seconds=1.0).namespaced(
        f"e{uuid.uuid4().hex[:8]}"
    )
    blueprint = FLOW.to_blueprint()
    options: dict[str, Any] = {
        "registry": FLOW.function_registry,
        "blueprints": {blueprint.id: blueprint},
    }
    worker_adapter, client_adapter = kind(settings, **options), kind(settings, **options)
    hops = worker_adapter.hops
    assert hops is not None
    commit = hops.commit
    failures: list[str] = []

    async def failing(delivery: Any, hop: Any) -> Any:
        if fails(hop.member, failures):
            failures.append(hop.member)
            raise AdapterError("redis error: WRONGTYPE (injected)")
        return await commit(delivery, hop)

    hops.commit = failing  # type: ignore[method-assign]
    running = Worker(worker_adapter, concurrency=2, receive_wait=0.05, **worker)
    running.start()
    try:
        result = await Client(client_adapter).run(blueprint.id, {}, timeout=T)
    finally:
        await running.stop(timeout=2)
        await worker_adapter.close()
        await client_adapter.close()
    return result, failures, settings


@KINDS
async def test_a_job_failing_in_the_backend_is_handled_again_after_the_lease(
    redis_url: str, kind: Kind
) -> None:
    result, failures, _ = await run_with_failing_hops(
        redis_url, kind, lambda member, failures: not failures
    )
    assert len(failures) == 1  # the first hop failed once, then went through
    assert result.status == "completed"
    assert result.context["_outputs.b"] == "ab"


@KINDS
async def test_a_job_failing_in_the_backend_every_time_is_dead_lettered_and_fails_its_run(
    redis_url: str, kind: Kind
) -> None:
    result, failures, settings = await run_with_failing_hops(
        redis_url, kind, lambda member, _: member.startswith('["b"'), max_deliveries=3
    )
    # Streams: a reserved job comes back as a new stream entry, whose count starts again.
    assert 3 <= len(failures) <= 4
    assert result.status == "failed"
    assert isinstance(result.errors[0], DeliveryLimitExceeded)
    assert "WRONGTYPE" in result.errors[0].message
    assert "max_deliveries" in result.errors[0].message
    with redis.Redis.from_url(redis_url) as raw:
        if kind is RedisStreamsAdapter:
            letters = raw.xrange(f"{settings.queue_name}:dead")
            assert len(letters) == 1 and b"WRONGTYPE" in letters[0][1][b"reason"]
        else:
            assert raw.zcard(f"bull:{settings.queue_name}:failed") == 1
