"""A run's events, readable from any process through the backend.

Workers whose adapters have ``run_events=True`` write every event of a run to the backend's
event log; ``Client.events(run_id)`` reads it from another adapter (as a dashboard or
``flowcraft watch`` in another process would), from the first event, then live until the run
finishes.
"""

from __future__ import annotations

import asyncio

from conftest import Harness

from flowcraft import NodeContext, create_flow
from flowcraft.distributed import Client
from flowcraft.events import FlowEvent

T = 15.0


async def step(ctx: NodeContext) -> str:
    await ctx.context.set(f"seen.{ctx.node_id}", True)
    return ctx.node_id


async def _collect(client: Client, run_id: str) -> list[FlowEvent]:
    return [event async for event in client.events(run_id)]


async def test_a_run_is_followed_live_from_another_process(harness: Harness) -> None:
    harness.options["run_events"] = True
    harness.add(create_flow("watched").node("a", step).node("b", step).edge("a", "b"))
    harness.worker()
    watcher = Client(harness.adapter(run_events=False))
    run_id = await harness.client.start("watched")
    events = await asyncio.wait_for(_collect(watcher, run_id), T)
    kinds = [(e.type, e.payload.get("nodeId")) for e in events]
    assert kinds[0] == ("workflow:start", None)
    assert kinds[-1] == ("workflow:finish", None)
    assert events[-1].payload["status"] == "completed"
    for node in ("a", "b"):
        assert ("node:start", node) in kinds
        assert ("node:finish", node) in kinds
    assert kinds.index(("node:finish", "a")) < kinds.index(("node:start", "b"))
    changed = {e.payload.get("key") for e in events if e.type == "context:change"}
    assert {"seen.a", "seen.b"} <= changed
    assert {e.payload.get("executionId") or e.payload.get("runId") for e in events} == {run_id}
    # Read again without following: the same events, at once.
    again = [e.type async for e in watcher.events(run_id, follow=False)]
    assert again[: len(events)] == [e.type for e in events]


async def test_pause_and_resume_are_announced(harness: Harness) -> None:
    harness.options["run_events"] = True
    harness.add(create_flow("paused").node("a", step).wait("gate").edge("a", "gate"))
    harness.worker()
    client = harness.client
    run_id = await client.start("paused")
    assert (await client.wait(run_id, timeout=T)).status == "awaiting"
    await client.resume_with_action(run_id, None, "ok")
    assert (await client.wait(run_id, timeout=T)).status == "completed"
    watcher = Client(harness.adapter(run_events=False))
    types = [e.type for e in await asyncio.wait_for(_collect(watcher, run_id), T)]
    pause, resume = types.index("workflow:pause"), types.index("workflow:resume")
    assert pause < resume < types.index("workflow:finish")
