"""A job that keeps failing in the backend, or keeps killing its worker, is given up on.

Without a limit it would come back once per lease forever, and its run would never end.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from flowcraft import NodeContext, create_flow
from flowcraft.distributed import Client, Delivery, Worker
from flowcraft.distributed import worker as worker_module
from flowcraft.errors import AdapterError, DeliveryLimitExceeded
from flowcraft.memory import MemoryAdapter, MemoryBackend


async def step(ctx: NodeContext) -> str:
    return str(ctx.input or "") + ctx.node_id


FLOW = create_flow("poison").node("a", step).node("b", step).edge("a", "b")


class _BrokenStores(MemoryAdapter):
    """Storing node b's result always fails, as on a corrupted key (not a lost connection)."""

    def __init__(self, backend: MemoryBackend, **options: Any) -> None:
        super().__init__(backend, **options)
        self.failures = 0
        store = self.coordination.set_if_not_exist

        async def set_if_not_exist(key: str, value: str, ttl: float | None = None) -> bool:
            if key.endswith("result:0:b"):
                self.failures += 1
                raise AdapterError("WRONGTYPE Operation against a key (injected)")
            return await store(key, value, ttl)

        self.coordination.set_if_not_exist = set_if_not_exist  # type: ignore[method-assign]


def _options() -> dict[str, Any]:
    blueprint = FLOW.to_blueprint()
    return {"registry": FLOW.function_registry, "blueprints": {blueprint.id: blueprint}}


async def test_a_job_failing_in_the_backend_on_every_delivery_fails_its_run_named() -> None:
    # The generic path: the hop step would store the result around the broken store.
    backend = MemoryBackend(visibility=0.2, max_deliveries=100, hop_step=False)
    adapter = _BrokenStores(backend, **_options())
    worker = Worker(adapter, concurrency=2, receive_wait=0.02, max_deliveries=3)
    worker.start()
    try:
        result = await Client(MemoryAdapter(backend, **_options())).run("poison", {}, timeout=10)
    finally:
        await worker.stop(timeout=1)
    assert adapter.failures == 3
    assert result.status == "failed"
    (error,) = result.errors
    assert isinstance(error, DeliveryLimitExceeded)  # typed, as the worker raised it
    assert "3 deliveries" in error.message and "WRONGTYPE" in error.message
    (letter,) = backend.queue.dead_letters
    assert '"nodeId":"b"' in letter.body.replace(" ", "")
    assert "WRONGTYPE" in letter.reason


async def test_a_job_delivered_more_often_than_the_limit_is_not_run_again() -> None:
    # As when its worker died each time: it arrives with its delivery count past the limit.
    backend = MemoryBackend()
    ran: list[str] = []

    async def record(ctx: NodeContext) -> str:
        ran.append(ctx.node_id)
        return ctx.node_id

    flow = create_flow("crashy").node("a", record)
    blueprint = flow.to_blueprint()
    adapter = MemoryAdapter(
        backend, registry=flow.function_registry, blueprints={blueprint.id: blueprint}
    )
    client = Client(adapter)
    run_id = await client.start("crashy", {})
    (delivery,) = await adapter.queue.receive(1, 0.1)
    worker = Worker(adapter, max_deliveries=5)
    await worker._handle_one(
        Delivery(delivery.body, delivery.handle, delivery_count=6), follow=False
    )
    result = await client.wait(run_id, timeout=5)
    assert ran == []
    assert result.status == "failed"
    assert isinstance(result.errors[0], DeliveryLimitExceeded)
    assert "delivered 6 times" in result.errors[0].message
    assert len(backend.queue.dead_letters) == 1


class _EndlessChain(MemoryAdapter):
    """Hands every job a successor while the worker follows (as a hop step reserving one)."""

    def __init__(self, backend: MemoryBackend, **options: Any) -> None:
        super().__init__(backend, **options)
        self.follows: list[bool] = []

    async def handle(self, delivery: Delivery, *, follow: bool = False) -> None:
        self.follows.append(follow)
        await asyncio.sleep(0.01)
        await self.queue.ack(delivery)
        if follow:
            delivery.next = Delivery(body=delivery.body, handle=None)


async def test_a_slot_goes_back_to_the_queue_after_following_for_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only a receive does a queue's periodic work (delayed jobs, dead workers' jobs): a slot
    # handed successor after successor must still come back to it.
    monkeypatch.setattr(worker_module, "_FOLLOW_SECONDS", 0.1)
    backend = MemoryBackend()
    adapter = _EndlessChain(backend, **_options())
    backend.queue.put('{"runId": "r", "blueprintId": "poison", "nodeId": "a"}')
    worker = Worker(adapter, concurrency=1, receive_wait=0.02)
    worker.start()
    try:
        for _ in range(200):
            if False in adapter.follows:
                break
            await asyncio.sleep(0.01)
    finally:
        await worker.stop(timeout=1)
    first_stop = adapter.follows.index(False)
    assert 1 <= first_stop <= 12  # at most 0.1 s of 0.01 s jobs, then the slot stops following
