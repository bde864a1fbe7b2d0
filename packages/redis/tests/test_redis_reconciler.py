"""``create_reconciler`` finds stalled runs by their state hashes and gets them going again.

A run is stalled here the way a real one gets stalled: its queued job is lost (the queue's keys
are deleted under it, as a Redis without persistence loses them in a restart).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import pytest
import redis
from redis_test_support import RedisServer

from flowcraft import NodeContext, create_flow
from flowcraft.distributed import Client, Worker
from flowcraft_redis import (
    RedisAdapter,
    RedisSettings,
    RedisStreamsAdapter,
    create_reconciler,
)

IDLE = 3.2
"""Seconds to wait for a 2 s idle time: OBJECT IDLETIME counts ticks of a one-second clock, so a
hash touched a moment ago can already read 1 (the threshold stays above that)."""


async def double(ctx: NodeContext) -> int:
    return int(ctx.input or 0) * 2


async def plus_one(ctx: NodeContext) -> int:
    return int(ctx.input) + 1


FLOW = (
    create_flow("reconcile-me")
    .node("double", double, inputs="seed")
    .node("plus_one", plus_one)
    .edge("double", "plus_one")
)
BLUEPRINT = FLOW.to_blueprint()

Adapter = type[RedisAdapter] | type[RedisStreamsAdapter]


@pytest.fixture
def settings(redis_url: str) -> Iterator[RedisSettings]:
    """A namespace of the test's own on the shared server; its keys are deleted afterwards."""
    tag = f"rec{uuid.uuid4().hex[:8]}"
    yield namespace(redis_url, tag)
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"*{tag}*", count=1000))
        if keys:
            client.delete(*keys)


def namespace(url: str, tag: str) -> RedisSettings:
    return RedisSettings(
        url=url,
        queue_name=f"{tag}-queue",
        state_prefix=f"{tag}:workflow:state:",
        status_prefix=f"{tag}:workflow:status:",
        coordination_prefix=f"{tag}:",
        lease_seconds=5.0,
    )


@asynccontextmanager
async def adapter_of(kind: Adapter, settings: RedisSettings) -> AsyncIterator[RedisAdapter]:
    adapter = kind(settings, registry=FLOW.function_registry, blueprints={BLUEPRINT.id: BLUEPRINT})
    try:
        yield adapter  # type: ignore[misc]
    finally:
        await adapter.close()


@asynccontextmanager
async def serving(kind: Adapter, settings: RedisSettings) -> AsyncIterator[None]:
    async with adapter_of(kind, settings) as adapter:
        worker = Worker(adapter, timer_interval=0.1)
        worker.start()
        try:
            yield
        finally:
            await worker.stop(timeout=5)


def lose_queued_jobs(settings: RedisSettings) -> None:
    """Delete the queue's keys, and with them every job waiting in it."""
    with redis.Redis.from_url(settings.url) as client:
        keys = list(client.scan_iter(match=f"*{settings.queue_name}*", count=1000))
        assert keys, "the queue holds no job to lose"
        client.delete(*keys)


async def assert_completes(client: Client, run_id: str, seed: int) -> None:
    result = await client.wait(run_id, timeout=30)
    assert result.status == "completed", result.errors
    assert result.context["_outputs.plus_one"] == seed * 2 + 1


@pytest.mark.parametrize("kind", [RedisAdapter, RedisStreamsAdapter], ids=["bullmq", "streams"])
async def test_stalled_run_is_found_by_idle_time_and_completes(
    settings: RedisSettings, kind: Adapter
) -> None:
    async with adapter_of(kind, settings) as adapter:
        client = Client(adapter)
        async with serving(kind, settings):
            finished = await client.start(BLUEPRINT.id, {"seed": 1})
            await assert_completes(client, finished, 1)
        stalled = await client.start(BLUEPRINT.id, {"seed": 5})
        lose_queued_jobs(settings)
        # A client waiting on the run polls it all along: that must not keep it looking busy.
        waiting = asyncio.ensure_future(client.wait(stalled, timeout=60))
        await asyncio.sleep(IDLE)
        fresh = await client.start(BLUEPRINT.id, {"seed": 7})
        lose_queued_jobs(settings)

        reconciler = create_reconciler(adapter=adapter, stalled_threshold_seconds=2)
        stats = await reconciler.run()

        assert reconciler.detection == "idletime"
        assert stats == {
            "scanned_keys": 3,
            "stalled_runs": 1,
            "reconciled_runs": 1,
            "failed_runs": 0,
        }
        async with serving(kind, settings):
            result = await waiting
            assert result.status == "completed"
            assert result.context["_outputs.plus_one"] == 11
            assert await client.status(fresh) == "running"


async def test_lfu_policy_falls_back_to_progress_time(
    redis_server: Callable[..., RedisServer],
) -> None:
    server = redis_server(persistent=False, config={"maxmemory-policy": "allkeys-lfu"})
    settings = namespace(server.url, "lfu")
    async with adapter_of(RedisAdapter, settings) as adapter:
        client = Client(adapter)
        stalled = await client.start(BLUEPRINT.id, {"seed": 3})
        lose_queued_jobs(settings)
        with server.client() as probe, pytest.raises(redis.ResponseError, match="LFU"):
            probe.object("idletime", settings.state_key(stalled))
        await asyncio.sleep(1.1)

        reconciler = create_reconciler(adapter=adapter, stalled_threshold_seconds=1)
        stats = await reconciler.run()

        assert reconciler.detection == "progress"
        assert stats["stalled_runs"] == stats["reconciled_runs"] == 1
        async with serving(RedisAdapter, settings):
            await assert_completes(client, stalled, 3)


async def test_a_stall_episode_is_reconciled_once(settings: RedisSettings) -> None:
    async with adapter_of(RedisAdapter, settings) as adapter:
        stalled = await Client(adapter).start(BLUEPRINT.id, {"seed": 2})
        reconciler = create_reconciler(adapter=adapter, stalled_threshold_seconds=0)
        lose_queued_jobs(settings)
        first = await reconciler.run()
        lose_queued_jobs(settings)
        again = await reconciler.run()

        assert (first["stalled_runs"], first["reconciled_runs"]) == (1, 1)
        # No progress since: the same episode, fenced. Only new progress opens another.
        assert (again["stalled_runs"], again["reconciled_runs"]) == (1, 0)
        assert await adapter.status(stalled) == "running"


async def test_unreconcilable_run_is_counted_as_failed(settings: RedisSettings) -> None:
    async with adapter_of(RedisAdapter, settings) as adapter:
        # Listed as unfinished, but no blueprint was ever recorded for it.
        await adapter.context.set("orphan", "seed", 1)
        await adapter.coordination.add_to_set(adapter.keys.runs_of("orphan"), "orphan", 60)

        stats = await create_reconciler(adapter=adapter, stalled_threshold_seconds=0).run()

        assert stats == {
            "scanned_keys": 1,
            "stalled_runs": 1,
            "reconciled_runs": 0,
            "failed_runs": 1,
        }
