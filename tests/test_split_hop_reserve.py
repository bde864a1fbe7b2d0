"""The split hop hands a worker that follows the successor it fired, when the queue can lease
it (``ReservingQueue``): a chain then runs on one worker without going back to the queue."""

from __future__ import annotations

from typing import Any

import pytest
from fixtures.deliveries import record_receives

from flowcraft import NodeContext, create_flow
from flowcraft.backend import AdapterError, Delivery
from flowcraft.distributed import Client, Worker
from flowcraft.memory import MemoryAdapter, MemoryBackend


def _chain(length: int) -> Any:
    async def step(ctx: NodeContext) -> int:
        await ctx.context.set(f"seen.{ctx.node_id}", True)
        return int(ctx.input or 0) + 1

    flow = create_flow("chain")
    for i in range(length):
        flow.node(f"n{i}", step)
        if i:
            flow.edge(f"n{i - 1}", f"n{i}")
    return flow


async def test_a_chain_runs_on_reserved_successors_and_completes() -> None:
    flow = _chain(6)
    blueprint = flow.to_blueprint()
    options: dict[str, Any] = {
        "registry": flow.function_registry,
        "blueprints": {blueprint.id: blueprint},
    }
    backend = MemoryBackend(hop_step="split")
    received = record_receives(backend)
    worker = Worker(MemoryAdapter(backend, **options), concurrency=1, receive_wait=0.02)
    worker.start()
    try:
        result = await Client(MemoryAdapter(backend, **options)).run("chain", {}, timeout=10)
    finally:
        await worker.stop(timeout=3)
    assert result.status == "completed"
    assert result.context["_outputs.n5"] == 6
    assert all(result.context[f"seen.n{i}"] for i in range(6))
    # Only the first job came from the queue; n1..n5 were reserved by the hop before them.
    assert len(received) == 1
    # Nothing left behind: every reserved job was acked.
    assert backend.queue.take(10) == []


async def test_a_failed_enqueue_beside_a_reservation_leaves_no_reserved_job_behind() -> None:
    async def a(ctx: NodeContext) -> str:
        return "a"

    async def b(ctx: NodeContext) -> str:
        return "b"

    flow = create_flow("two").node("a", a).node("b", b).node("c", b).edge("a", "b").edge("a", "c")
    blueprint = flow.to_blueprint()
    backend = MemoryBackend(hop_step="split")
    options: dict[str, Any] = {
        "registry": flow.function_registry,
        "blueprints": {blueprint.id: blueprint},
    }
    adapter = MemoryAdapter(backend, **options)
    client = Client(MemoryAdapter(backend, **options))
    run_id = await client.start("two", {})
    (first,) = backend.queue.take(1)
    enqueue = backend.queue.enqueue
    failing = True

    async def refused(body: str) -> None:
        if failing:
            raise AdapterError("queue unreachable")
        await enqueue(body)

    backend.queue.enqueue = refused  # type: ignore[method-assign]
    reserve = backend.queue.reserve
    reserved: list[str] = []

    async def recorded(delivery: Delivery, body: str) -> Delivery | None:
        reserved.append(body)
        return await reserve(delivery, body)

    backend.queue.reserve = recorded  # type: ignore[method-assign]
    with pytest.raises(AdapterError):
        await adapter.handle(first, follow=True)
    assert len(reserved) == 1
    assert first.next is None
    # The reserved successor went with the failure: only the failed job is left, leased.
    assert len(backend.queue) == 1
    failing = False
    await backend.queue.release(first)
    while deliveries := backend.queue.take(10):
        for delivery in deliveries:
            await adapter.handle(delivery)
    result = await client.wait(run_id, timeout=5)
    assert result.status == "completed"
