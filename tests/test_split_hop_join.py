"""The split hop marks a branch resolved for its join only after the branch's context writes.

Its claim, context patch and marks are separate round trips: marked first, a branch whose
writes are still in flight would let the branch completing the join fire it, and the join
would read a missing input.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import orjson

from flowcraft import NodeContext, create_flow
from flowcraft.backend import Hop
from flowcraft.distributed._payload import job_id
from flowcraft.memory import MemoryAdapter, MemoryBackend
from flowcraft.memory.hop import MemorySplitCoordination
from flowcraft.node import PatchOperation


async def _drain(adapter: MemoryAdapter, backend: MemoryBackend) -> None:
    while deliveries := backend.queue.take(10):
        for delivery in deliveries:
            await adapter.handle(delivery)


async def test_a_join_fired_by_its_last_branch_reads_a_branch_whose_writes_were_in_flight() -> None:
    async def a(ctx: NodeContext) -> str:
        return "A"

    async def b(ctx: NodeContext) -> str:
        return "B"

    async def join(ctx: NodeContext) -> Any:
        return ctx.input

    flow = (
        create_flow("fan").node("a", a).node("b", b).node("j", join).edge("a", "j").edge("b", "j")
    )
    blueprint = flow.to_blueprint()
    backend = MemoryBackend(hop_step="split")
    worker = MemoryAdapter(
        backend, registry=flow.function_registry, blueprints={blueprint.id: blueprint}
    )
    coordination = backend.coordination
    assert isinstance(coordination, MemorySplitCoordination)
    claim_hop = coordination.claim_hop
    claimed: list[str] = []

    async def counted(hop: Hop, record: str, mark: str) -> list[str] | None:
        won = await claim_hop(hop, record, mark)
        if won is not None:
            claimed.append(hop.member)
        return won

    coordination.claim_hop = counted  # type: ignore[method-assign]
    patch = backend.context.patch
    writing = asyncio.Event()
    landed = asyncio.Event()

    async def slow_for_a(run_id: str, operations: Iterable[PatchOperation]) -> None:
        ops = list(operations)
        if not landed.is_set() and any(op["key"] == "_outputs.a" for op in ops):
            writing.set()
            await landed.wait()
        await patch(run_id, ops)

    backend.context.patch = slow_for_a  # type: ignore[method-assign]
    run_id = await worker.start_run("fan")
    first = {orjson.loads(d.body)["nodeId"]: d for d in backend.queue.take(2)}
    branch_a = asyncio.ensure_future(worker.handle(first["a"]))
    await writing.wait()
    # While a's writes are in flight, b finishes and whatever that queued runs.
    await worker.handle(first["b"])
    await _drain(worker, backend)
    landed.set()
    await branch_a
    await _drain(worker, backend)

    result = await worker.final_result(run_id)
    assert result is not None
    assert result.status == "completed", result.errors
    assert result.context["_outputs.j"] == {"a": "A", "b": "B"}
    # Both branches took the split hop, not the generic path.
    assert {job_id("a", 0), job_id("b", 0)} <= set(claimed)
