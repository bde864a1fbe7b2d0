"""A job whose lease lapses while its worker still runs it is not run a second time beside it.

Queues with a lease per delivery (SQS, Pub/Sub, Storage Queues, the memory queue) redeliver a
job whose lease ran out; a worker starved of CPU or cut off from the queue keeps running it.
The redelivered copy waits for the first one (its heartbeat mark), then routes from its result.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fixtures.deliveries import record_receives

from flowcraft import NodeContext, create_flow
from flowcraft.distributed import Client, Delivery, Worker
from flowcraft.memory import MemoryAdapter, MemoryBackend


class _LapsingLeases(MemoryAdapter):
    """Its heartbeat cannot renew the queue's lease (as when the renewal calls are lost)."""

    def __init__(self, backend: MemoryBackend, **options: Any) -> None:
        super().__init__(backend, **options)

        async def extend_lease(delivery: Delivery, seconds: float) -> None:
            return None

        self.queue.extend_lease = extend_lease  # type: ignore[method-assign]


async def test_a_copy_of_a_running_job_waits_for_it_and_the_node_runs_once() -> None:
    runs: list[str] = []

    async def slow(ctx: NodeContext) -> str:
        runs.append(ctx.node_id)
        await asyncio.sleep(2.0)
        return "slow"

    async def after(ctx: NodeContext) -> str:
        runs.append(ctx.node_id)
        return f"after {ctx.input}"

    flow = create_flow("lapse").node("slow", slow).node("after", after).edge("slow", "after")
    blueprint = flow.to_blueprint()
    options: dict[str, Any] = {
        "registry": flow.function_registry,
        "blueprints": {blueprint.id: blueprint},
    }
    backend = MemoryBackend(visibility=0.6, max_deliveries=20)
    received = record_receives(backend)
    workers = [
        Worker(_LapsingLeases(backend, **options), concurrency=1, receive_wait=0.02)
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        result = await Client(MemoryAdapter(backend, **options)).run("lapse", {}, timeout=20)
    finally:
        for worker in workers:
            await worker.stop(timeout=3)
    assert result.status == "completed"
    assert result.context["_outputs.after"] == "after slow"
    # Redelivered at least once while it ran (the lease is a third of the node's time)...
    assert max(d.delivery_count for d in received) > 1
    # ...and still run once.
    assert runs == ["slow", "after"]


async def test_a_slow_coordination_store_does_not_hold_back_the_lease_renewals() -> None:
    runs: list[str] = []

    async def slow(ctx: NodeContext) -> str:
        runs.append(ctx.node_id)
        await asyncio.sleep(2.0)
        return "slow"

    flow = create_flow("stuck-marks").node("slow", slow)
    blueprint = flow.to_blueprint()
    options: dict[str, Any] = {
        "registry": flow.function_registry,
        "blueprints": {blueprint.id: blueprint},
    }
    backend = MemoryBackend(visibility=0.6, max_deliveries=20)
    add_to_set = backend.coordination.add_to_set

    async def stuck(key: str, member: str, ttl: float) -> int:
        if ":held:" in key:
            # The heartbeat's run-alive mark never gets an answer (a store under load).
            await asyncio.Event().wait()
        return await add_to_set(key, member, ttl)

    backend.coordination.add_to_set = stuck  # type: ignore[method-assign]
    received = record_receives(backend)
    worker = Worker(MemoryAdapter(backend, **options), concurrency=2, receive_wait=0.02)
    worker.start()
    try:
        result = await Client(MemoryAdapter(backend, **options)).run("stuck-marks", {}, timeout=20)
    finally:
        await worker.stop(timeout=3)
    assert result.status == "completed"
    # The lease kept being renewed while the marks hung: the job was never redelivered.
    assert [d.delivery_count for d in received] == [1]
    assert runs == ["slow"]
