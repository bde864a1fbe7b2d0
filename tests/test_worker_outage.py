"""The worker rides out a backend outage: it backs off, keeps the jobs it holds, and carries on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from flowcraft import NodeContext, create_flow
from flowcraft.distributed import Client, Delivery, DistributedAdapter, Worker
from flowcraft.errors import ConnectionFailed
from flowcraft.memory import MemoryAdapter, MemoryBackend, MemoryQueue, MemoryResultChannel


class Outage:
    """A switch that makes a store or queue raise ``ConnectionFailed`` while it is down."""

    def __init__(self) -> None:
        self.down = False
        self.refused = 0

    def check(self) -> None:
        if self.down:
            self.refused += 1
            raise ConnectionFailed("backend unreachable (test outage)")


class _FlakyStore:
    def __init__(self, store: Any, outage: Outage) -> None:
        self._store, self._outage = store, outage

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._store, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            self._outage.check()
            return await method(*args, **kwargs)

        return call


class _FlakyQueue:
    def __init__(self, queue: MemoryQueue, outage: Outage) -> None:
        self._queue, self._outage = queue, outage

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)

    async def receive(self, max_jobs: int, wait: float) -> list[Delivery]:
        self._outage.check()
        return await self._queue.receive(max_jobs, wait)


class FlakyAdapter(DistributedAdapter):
    """A memory deployment whose coordination store and queue fail during an outage (no hop
    step: it would write to the stores around the failing wrapper)."""

    def __init__(self, backend: MemoryBackend, outage: Outage, **options: Any) -> None:
        super().__init__(
            queue=_FlakyQueue(backend.queue, outage),  # type: ignore[arg-type]
            context=backend.context,
            coordination=_FlakyStore(backend.coordination, outage),  # type: ignore[arg-type]
            results=MemoryResultChannel(backend.wakes),
            lease=backend.queue.visibility,
            **options,
        )
        self.outage = outage


async def test_a_job_held_through_an_outage_finishes_once_the_backend_is_back() -> None:
    outage = Outage()
    reached = asyncio.Event()

    async def first(ctx: NodeContext) -> int:
        # The backend goes down while the node first runs: storing its result fails (the
        # node then runs again, as its result was never stored).
        if not reached.is_set():
            outage.down = True
            reached.set()
        return 1

    async def second(ctx: NodeContext) -> int:
        return int(ctx.input) + 1

    flow = create_flow("outage").node("first", first).node("second", second)
    flow.edge("first", "second")
    backend = MemoryBackend()
    options: dict[str, Any] = {
        "registry": flow.function_registry,
        "blueprints": {"outage": flow.to_blueprint()},
    }
    worker = Worker(FlakyAdapter(backend, outage, **options), receive_wait=0.02)
    client = Client(MemoryAdapter(backend, **options))
    async with worker:
        run_id = await client.start("outage")
        await asyncio.wait_for(reached.wait(), 5)
        await asyncio.sleep(0.5)
        assert outage.refused > 0
        assert worker.is_running
        outage.down = False
        result = await client.wait(run_id, timeout=10)
    assert result.status == "completed"
    assert result.context["_outputs.second"] == 2


async def test_receiving_backs_off_while_the_backend_is_down() -> None:
    outage = Outage()
    outage.down = True
    adapter = FlakyAdapter(MemoryBackend(), outage)
    async with Worker(adapter, receive_wait=0.05, timer_interval=60):
        await asyncio.sleep(1.0)
    # Pauses of 0.05, 0.1, 0.2, 0.4 and 0.8 s: a handful of attempts, not one every 0.05 s.
    assert 3 <= outage.refused <= 7


async def test_a_connection_lost_between_a_result_and_its_context_writes_loses_no_write() -> None:
    # The generic path stores a node's result, then its context writes. A batch's scatter writes
    # the items its workers read: with the connection lost in between, the redelivered job (which
    # never runs the node again) must still make them.
    async def double(ctx: NodeContext) -> int:
        return int(ctx.input) * 2

    flow = create_flow("crash-batch").batch("b", double, input_key="items", output_key="results")
    blueprint = flow.to_blueprint()
    options: dict[str, Any] = {
        "registry": flow.function_registry,
        "blueprints": {blueprint.id: blueprint},
    }
    backend = MemoryBackend()
    adapter = MemoryAdapter(backend, **options)
    store_effects = adapter._store_effects
    lost: list[str] = []

    async def losing(payload: Any, *args: Any) -> None:
        if payload.node_id.endswith("_scatter") and not lost:
            lost.append(payload.node_id)
            raise ConnectionFailed("connection lost after the result was stored (test)")
        await store_effects(payload, *args)

    adapter._store_effects = losing  # type: ignore[method-assign]
    worker = Worker(adapter, concurrency=2, receive_wait=0.02)
    worker.start()
    try:
        client = Client(MemoryAdapter(backend, **options))
        result = await client.run("crash-batch", {"items": [1, 2, 3]}, timeout=10)
    finally:
        await worker.stop(timeout=1)
    assert lost == ["b_scatter"]
    assert result.status == "completed", result.errors
    assert result.context["results"] == [2, 4, 6]
