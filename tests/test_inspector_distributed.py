"""The run inspector records a distributed run from its event log, as it happens."""

from __future__ import annotations

import asyncio

from flowcraft import NodeContext, create_flow
from flowcraft.distributed import Client, Worker
from flowcraft.inspector import RunRecorder, render_run_svg
from flowcraft.memory import MemoryAdapter, MemoryBackend


async def step(ctx: NodeContext) -> str:
    if ctx.node_id == "bad":
        raise RuntimeError("no")
    return ctx.node_id


async def test_a_recorder_follows_a_distributed_run_from_another_process() -> None:
    flow = create_flow("seen").node("a", step).node("b", step).edge("a", "b")
    blueprint = flow.to_blueprint()
    options = {"registry": flow.function_registry, "blueprints": {"seen": blueprint}}
    backend = MemoryBackend()
    worker = Worker(MemoryAdapter(backend, run_events=True, **options))
    worker.start()
    client = Client(MemoryAdapter(backend, run_events=True, **options))
    recorder = RunRecorder(blueprints={"seen": blueprint})
    try:
        run_id = await client.start("seen")
        record = await asyncio.wait_for(recorder.follow(Client(MemoryAdapter(backend)), run_id), 10)
    finally:
        await worker.stop()
    assert record is not None
    assert record.status == "completed"
    assert {n: record.node(n).state for n in ("a", "b")} == {"a": "completed", "b": "completed"}
    assert "<svg" in render_run_svg(record)
