"""Streams transport: a queued successor's arrival read comes with the stream read.

The hop that queues a job stores the keys it will read beside it (the entry's ``read`` field);
the batched stream read reads them in the same script, so the job starts without a read of its
own. A field that cannot be read (a foreign producer's, or damaged) leaves the read to the job.
"""

from __future__ import annotations

import uuid
from typing import Any

import redis.asyncio as aioredis

from flowcraft import NodeContext, create_flow
from flowcraft.distributed import Client, Worker
from flowcraft_redis import RedisSettings, RedisStreamsAdapter

T = 15.0


async def step(ctx: NodeContext) -> Any:
    return ctx.input if ctx.node_id == "j" else ctx.node_id


FAN = (
    create_flow("reads-ahead")
    .node("a", step)
    .node("b", step)
    .node("c", step)
    .node("d", step)
    .node("j", step)
    .edge("a", "b")
    .edge("a", "c")
    .edge("a", "d")
    .edge("b", "j")
    .edge("c", "j")
    .edge("d", "j")
)


def adapter(url: str, tag: str) -> RedisStreamsAdapter:
    blueprint = FAN.to_blueprint()
    return RedisStreamsAdapter(
        RedisSettings(url=url).namespaced(tag),
        registry=FAN.function_registry,
        blueprints={blueprint.id: blueprint},
    )


async def test_queued_branches_arrive_with_their_read(redis_url: str) -> None:
    tag = f"r{uuid.uuid4().hex[:8]}"
    worker_adapter, client_adapter = adapter(redis_url, tag), adapter(redis_url, tag)
    read_for: list[str] = []
    arrivals = worker_adapter.arrivals
    assert arrivals is not None
    read_job = arrivals.read_arrival

    async def counting(run_id: str, keys: list[str], *rest: Any) -> Any:
        read_for.append(keys[2].rsplit(":", 1)[1])  # the result key ends with the node id
        return await read_job(run_id, keys, *rest)

    arrivals.read_arrival = counting  # type: ignore[method-assign]
    # One slot: a's hop reserves b and queues c and d (with their reads); the slot takes them
    # from the stream once b is done, and j is reserved by the last branch to finish.
    worker = Worker(worker_adapter, concurrency=1, receive_wait=0.05)
    worker.start()
    try:
        result = await Client(client_adapter).run("reads-ahead", {}, timeout=T)
    finally:
        await worker.stop(timeout=2)
        await worker_adapter.close()
        await client_adapter.close()
    assert result.status == "completed", result.errors
    assert result.context["_outputs.j"] == {"b": "b", "c": "c", "d": "d"}
    assert read_for == ["a"]  # only the client's start job read for itself


async def test_an_entry_whose_read_cannot_be_made_arrives_without_one(redis_url: str) -> None:
    tag = f"r{uuid.uuid4().hex[:8]}"
    queue_adapter = adapter(redis_url, tag)
    queue = queue_adapter.queue
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await queue.receive(1, 0.01)  # creates the group
        body = '{"runId":"r1","blueprintId":"reads-ahead","nodeId":"c"}'
        await raw.xadd(queue.stream, {"body": body, "read": "not json"})
        await raw.xadd(queue.stream, {"body": body, "read": '{"k": 1}'})
        deliveries = await queue.receive(5, 0.01)
        assert [d.body for d in deliveries] == [body, body]
        assert [d.arrival for d in deliveries] == [None, None]
    finally:
        await raw.aclose()
        await queue_adapter.close()
