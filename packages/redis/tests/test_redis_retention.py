"""Retention on Redis: every key a run writes has a TTL, and a finished run keeps few.

Only the queue's own structures (the stream and its dead letters, BullMQ's id counter, event
stream and meta hash) live without a TTL: they are the deployment's, not a run's.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from flowcraft import NodeContext, create_flow
from flowcraft.distributed import Client, Worker
from flowcraft.distributed._keys import Keys
from flowcraft_redis import RedisAdapter, RedisSettings, RedisStreamsAdapter
from flowcraft_redis_store import RedisCoordinationStore

T = 15.0
RUNS = 10
QUEUE_KEYS = (":jobs", ":id", ":events", ":meta", ":stalled-check", ":marker")
KEYS_PER_RUN = 6
"""Final record, meta, context hash, TS status and the retry tokens of the final and meta
records (kept a minute); a run's per-node bookkeeping (results, fences, join marks, receipts) is
one hash, deleted when the run is final. Before that hash, a run of this flow left 12 keys;
before its bookkeeping was deleted, 33 (Streams) and 38 (BullMQ)."""


async def branch(ctx: NodeContext) -> str:
    return ctx.node_id


FLOW = (
    create_flow("kept")
    .node("a", branch)
    .node("b", branch)
    .node("c", branch)
    .node("d", branch)
    .node("j", branch)
    .edge("a", "b")
    .edge("a", "c")
    .edge("a", "d")
    .edge("b", "j")
    .edge("c", "j")
    .edge("d", "j")
)


@pytest.mark.parametrize("kind", [RedisAdapter, RedisStreamsAdapter])
async def test_every_key_a_run_leaves_expires(redis_url: str, kind: Any) -> None:
    tag = f"k{uuid.uuid4().hex[:8]}"
    settings = RedisSettings(url=redis_url).namespaced(tag)
    blueprint = FLOW.to_blueprint()
    options: dict[str, Any] = {
        "registry": FLOW.function_registry,
        "blueprints": {blueprint.id: blueprint},
    }
    worker_adapter, client_adapter = kind(settings, **options), kind(settings, **options)
    worker = Worker(worker_adapter, concurrency=4, receive_wait=0.05)
    worker.start()
    raw = aioredis.Redis.from_url(redis_url)
    try:
        client = Client(client_adapter)
        results = await asyncio.gather(*(client.run("kept", {}, timeout=T) for _ in range(RUNS)))
        assert {r.status for r in results} == {"completed"}
        await worker.stop(timeout=2)
        keys = [k.decode() async for k in raw.scan_iter(match=f"*{tag}*", count=1000)]
        forever = [k for k in keys if not k.endswith(QUEUE_KEYS) and await raw.ttl(k) == -1]
        assert not forever, f"keys without a TTL: {forever[:10]}"
        per_run = len([k for k in keys if not k.endswith(QUEUE_KEYS)]) / RUNS
        assert per_run <= KEYS_PER_RUN, f"{per_run} keys per finished run"
    finally:
        await worker.stop(timeout=2)
        await worker_adapter.close()
        await client_adapter.close()
        await raw.aclose()


async def test_a_runs_node_bookkeeping_is_one_hash(redis_url: str) -> None:
    tag = f"h{uuid.uuid4().hex[:8]}"
    settings = RedisSettings(url=redis_url).namespaced(tag)
    raw = aioredis.Redis.from_url(redis_url)
    store = RedisCoordinationStore(raw, settings)
    keys = Keys()
    run = "r1"
    result, fence = keys.result(run, "a", 0), keys.fire(run, "j", 0)
    resolved, taken = keys.resolved(run, "j", 0), keys.taken(run, "j", 0)
    try:
        assert await store.set_if_not_exist(result, "{}", 60)
        assert not await store.set_if_not_exist(result, "{}", 60)
        assert await store.set_if_not_exist(fence, "skipped", 60)
        assert await store.add_to_set(resolved, "a", 60) == 1
        assert await store.add_to_set(resolved, "b", 60) == 2
        assert await store.add_to_set(resolved, "a", 60) == 2
        assert await store.add_to_set(taken, "a|0", 60) == 1
        assert await store.remove_from_set(taken, "a|0") == 0
        assert await store.increment(keys.resumed(run, "w", 0), 60) == 1
        assert await store.read([result, fence], [resolved, taken]) == (
            ["{}", "skipped"],
            [{"a", "b"}, set()],
        )
        assert await store.members(resolved) == {"a", "b"}
        stored = [k.decode() async for k in raw.scan_iter(match=f"*{tag}*")]
        assert stored == [settings.coordination_key(keys.bookkeeping(run))]
        assert 0 < await raw.pttl(stored[0]) <= 60_000
        await store.delete(result)
        assert await store.get(result) is None
        assert await store.set_if_not_exist(result, "{}", 60)
        await store.delete_many([keys.bookkeeping(run), fence])
        assert [k async for k in raw.scan_iter(match=f"*{tag}*")] == []
    finally:
        await raw.aclose()
