"""Retention: a finished run leaves its result, not its bookkeeping.

Once a run is final, its join marks, fences, stored node results and in-flight sets are
deleted; its final record and meta stay (until their TTL) so that waits, status and late
redeliveries still find the run finished.
"""

from __future__ import annotations

from conftest import Harness

from flowcraft import NodeContext, create_flow

T = 15.0


async def branch(ctx: NodeContext) -> str:
    return ctx.node_id


async def test_a_finished_run_keeps_its_result_and_drops_its_bookkeeping(harness: Harness) -> None:
    nodes = ["a", "b", "c", "skipped", "j"]
    harness.add(
        create_flow("retained")
        .node("a", branch)
        .node("b", branch, config={"maxRetries": 2})
        .node("c", branch)
        .node("skipped", branch)
        .node("j", branch, config={"joinStrategy": "any"})
        .edge("a", "b")
        .edge("a", "c")
        .edge("a", "skipped", condition="false")
        .edge("b", "j")
        .edge("c", "j")
        .edge("skipped", "j")
    )
    harness.worker()
    client = harness.client
    result = await client.run("retained", {}, timeout=T)
    assert result.status == "completed", result.errors
    run_id = result.run_id
    adapter = harness.adapter()
    keys, store = adapter.keys, adapter.coordination
    assert await store.get(keys.final(run_id)) is not None
    assert await store.get(keys.meta(run_id)) is not None
    assert await client.status(run_id) == "completed"
    assert (await client.wait(run_id, timeout=T)).status == "completed"
    left = {
        key
        for node in nodes
        for key in (
            keys.result(run_id, node, 0),
            keys.fire(run_id, node, 0),
            keys.resolved(run_id, node, 0),
            keys.taken(run_id, node, 0),
        )
        if await store.get(key) is not None
    }
    if await store.get(keys.attempts(run_id, "b", 0)) is not None:
        left.add(keys.attempts(run_id, "b", 0))
    for key in (keys.enqueued(run_id), keys.done(run_id), keys.pending(run_id)):
        if await store.members(key):
            left.add(key)
    assert not left, f"bookkeeping left after the run finished: {sorted(left)}"
    assert run_id not in await store.members(keys.runs_of(run_id))
