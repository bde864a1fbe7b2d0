"""Wait/resume, sleep and the scheduler, subflows, batches, loops and dynamic nodes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flowcraft import FlowRuntime, NodeContext, NodeResult, ResumeError, create_flow


async def ask(ctx: NodeContext) -> str:
    return "draft"


def approval_flow() -> Any:
    return (
        create_flow("approval")
        .node("prepare", ask)
        .wait("review")
        .node("publish", lambda ctx: f"published {ctx.input}")
        .node("discard", lambda ctx: "discarded")
        .edge("prepare", "review")
        .edge("review", "publish", action="approve")
        .edge("review", "discard", action="reject")
    )


async def test_wait_pauses_and_resume_routes_by_action() -> None:
    flow = approval_flow()
    runtime = FlowRuntime()
    paused = await flow.run(runtime)
    assert paused.status == "awaiting"
    assert paused.context["_awaitingNodeIds"] == ["review"]
    assert paused.context["_awaitingDetails"]["review"]["reason"] == "external_event"

    done = await flow.resume(
        runtime, paused.serialized_context, {"output": "final", "action": "approve"}
    )
    assert done.status == "completed", done.errors
    assert done.run_id == paused.run_id
    assert done.context["_outputs.publish"] == "published final"
    assert "_outputs.discard" not in done.context
    assert "_awaitingNodeIds" not in done.context
    assert "_runState" not in done.context

    rejected = await flow.resume(runtime, paused.serialized_context, {"action": "reject"})
    assert rejected.context["_outputs.discard"] == "discarded"
    assert "_outputs.publish" not in rejected.context


async def test_resume_errors_are_typed() -> None:
    flow = approval_flow()
    runtime = FlowRuntime()
    paused = await flow.run(runtime)
    with pytest.raises(ResumeError, match="not awaiting"):
        await flow.resume(runtime, paused.serialized_context, {}, "publish")
    with pytest.raises(ResumeError, match="unknown keys"):
        await flow.resume(runtime, paused.serialized_context, {"outptu": 1})
    with pytest.raises(ResumeError, match="no awaiting node"):
        await flow.resume(runtime, {}, {})


async def test_two_waits_resume_independently() -> None:
    flow = (
        create_flow("two")
        .node("s", ask)
        .wait("w1")
        .wait("w2")
        .node("j", lambda ctx: sorted(ctx.input))
        .edge("s", "w1")
        .edge("s", "w2")
        .edge("w1", "j")
        .edge("w2", "j")
    )
    runtime = FlowRuntime()
    paused = await flow.run(runtime)
    assert sorted(paused.context["_awaitingNodeIds"]) == ["w1", "w2"]
    half = await flow.resume(runtime, paused.serialized_context, {"output": 1}, "w1")
    assert half.status == "awaiting" and half.context["_awaitingNodeIds"] == ["w2"]
    done = await flow.resume(runtime, half.serialized_context, {"output": 2}, "w2")
    assert done.status == "completed"
    assert done.context["_outputs.j"] == ["w1", "w2"]


async def test_sleep_pauses_with_a_wake_up_time_and_the_scheduler_resumes() -> None:
    flow = (
        create_flow("nap")
        .node("a", lambda ctx: 5)
        .sleep("nap", duration="1s")
        .node("b", lambda ctx: ctx.input + 1)
        .edge("a", "nap")
        .edge("nap", "b")
    )
    runtime = FlowRuntime()
    paused = await flow.run(runtime)
    assert paused.status == "awaiting"
    wake = datetime.fromisoformat(paused.context["_awaitingDetails"]["nap"]["wakeUpAt"])
    assert wake > datetime.now(UTC)
    assert await runtime.scheduler.tick() == 0
    assert paused.run_id in runtime.scheduler.pending
    assert await runtime.scheduler.tick(wake + timedelta(milliseconds=1)) == 1
    assert runtime.scheduler.pending == {}


async def test_scheduler_runs_two_sleeps_in_sequence_without_repeating_work() -> None:
    calls: list[str] = []

    def middle(ctx: NodeContext) -> int:
        calls.append("middle")
        return 1

    flow = (
        create_flow("naps")
        .sleep("s1", duration=0)
        .node("middle", middle)
        .sleep("s2", duration=0)
        .node("end", lambda ctx: "end")
        .edge("s1", "middle")
        .edge("middle", "s2")
        .edge("s2", "end")
    )
    runtime = FlowRuntime()
    paused = await flow.run(runtime)
    waiter = runtime.scheduler.wait(paused.run_id, timeout=5)
    runtime.scheduler.start(interval=0.01)
    try:
        result = await waiter
    finally:
        await runtime.scheduler.stop()
    assert result.status == "completed"
    assert result.context["_outputs.end"] == "end"
    assert calls == ["middle"]


async def test_subflow_maps_inputs_and_outputs() -> None:
    child = (
        create_flow("child")
        .node("double", lambda ctx: ctx.input * 2, inputs="n")
        .node("label", lambda ctx: f"n={ctx.input}")
        .edge("double", "label")
    )
    parent = (
        create_flow("parent")
        .node("seed", lambda ctx: 21)
        .subflow("sub", "child", inputs={"n": "seed"}, outputs={"label": "label"})
        .node("after", lambda ctx: ctx.input)
        .edge("seed", "sub")
        .edge("sub", "after")
    )
    runtime = FlowRuntime(blueprints={"child": child.to_blueprint()})
    registry = {**child.function_registry, **parent.function_registry}
    result = await runtime.run(parent.to_blueprint(), function_registry=registry)
    assert result.status == "completed", result.errors
    assert result.context["label"] == "n=42"
    assert result.context["_outputs.after"] == {"label": "n=42"}


async def test_subflow_without_mapping_passes_input_and_returns_terminal_output() -> None:
    child = create_flow("child2").node("inc", lambda ctx: ctx.input + 1)
    parent = create_flow("p2").node("seed", lambda ctx: 1).subflow("sub", "child2")
    parent.edge("seed", "sub")
    runtime = FlowRuntime(blueprints={"child2": child.to_blueprint()})
    registry = {**child.function_registry, **parent.function_registry}
    result = await runtime.run(parent.to_blueprint(), function_registry=registry)
    assert result.context["_outputs.sub"] == 2


async def test_awaiting_subflow_resumes_the_child_and_routes_by_action() -> None:
    child = approval_flow()
    parent = (
        create_flow("outer")
        .subflow("approve", "approval")
        .node("after", lambda ctx: f"after {ctx.input}")
        .edge("approve", "after")
    )
    runtime = FlowRuntime(blueprints={"approval": child.to_blueprint()})
    registry = {**child.function_registry, **parent.function_registry}
    paused = await runtime.run(parent.to_blueprint(), function_registry=registry)
    assert paused.status == "awaiting"
    assert paused.context["_awaitingNodeIds"] == ["approve"]
    done = await runtime.resume(
        parent.to_blueprint(),
        paused.serialized_context,
        {"output": "text", "action": "approve"},
        function_registry=registry,
    )
    assert done.status == "completed", done.errors
    assert done.context["_outputs.after"] == "after published text"
    assert "_subflowState.approve" not in done.context


async def test_missing_subflow_blueprint_is_a_clear_error() -> None:
    flow = create_flow("p3").subflow("sub", "nowhere")
    result = await flow.run(FlowRuntime())
    assert result.status == "failed"
    assert "nowhere" in result.errors[0].message


@pytest.mark.parametrize("chunk_size", [None, 1, 2, 3, 10])
async def test_batch_scatter_gather_with_and_without_chunks(chunk_size: int | None) -> None:
    active = 0
    peak = 0

    async def square(ctx: NodeContext) -> int:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        import asyncio

        await asyncio.sleep(0.001)
        active -= 1
        return int(ctx.input) ** 2

    flow = (
        create_flow("batch")
        .node("items", lambda ctx: [1, 2, 3, 4, 5])
        .batch("sq", square, input_key="items", output_key="squares", chunk_size=chunk_size)
        .node("total", lambda ctx: sum(ctx.input))
        .edge("items", "sq")
        .edge("sq", "total")
    )
    result = await flow.run(FlowRuntime())
    assert result.status == "completed", result.errors
    assert result.context["squares"] == [1, 4, 9, 16, 25]
    assert result.context["_outputs.total"] == 55
    assert not any(k.startswith("_batch.") for k in result.context)
    if chunk_size is not None:
        assert peak <= chunk_size


async def test_batch_keeps_alignment_when_a_worker_returns_nothing() -> None:
    async def maybe(ctx: NodeContext) -> int | None:
        return None if ctx.input == 2 else ctx.input

    flow = (
        create_flow("b2")
        .node("items", lambda ctx: [1, 2, 3])
        .batch("m", maybe, input_key="items")
        .edge("items", "m")
    )
    result = await flow.run(FlowRuntime())
    assert result.context["_outputs.m_gather"] == [1, None, 3]


async def test_batch_rejects_non_list_input() -> None:
    flow = (
        create_flow("b3")
        .node("items", lambda ctx: "nope")
        .batch("m", lambda ctx: 1, input_key="items")
        .edge("items", "m")
    )
    result = await flow.run(FlowRuntime())
    assert result.status == "failed" and "needs a list" in result.errors[0].message


async def test_loop_runs_until_condition_and_exits() -> None:
    async def count(ctx: NodeContext) -> int:
        value = (await ctx.context.get("n", 0)) + 1
        await ctx.context.set("n", value)
        return value

    flow = (
        create_flow("loop")
        .node("init", lambda ctx: 0)
        .node("body", count)
        .loop("repeat", start_node_id="body", end_node_id="body", condition="n < 5")
        .node("done", lambda ctx: f"stopped at {ctx.input}")
        .edge("init", "repeat")
        .edge("repeat", "done")
    )
    result = await flow.run(FlowRuntime(), {"n": 0})
    assert result.status == "completed", result.errors
    assert result.context["n"] == 5
    assert result.context["_outputs.done"] == "stopped at 5"


async def test_loop_without_exit_edge_terminates() -> None:
    async def count(ctx: NodeContext) -> None:
        await ctx.context.set("n", (await ctx.context.get("n", 0)) + 1)

    flow = (
        create_flow("loop2")
        .node("body", count)
        .loop("repeat", start_node_id="body", end_node_id="body", condition="n < 3")
    )
    result = await flow.run(FlowRuntime(), {"n": 0})
    assert result.status == "completed"
    assert result.context["n"] == 3


async def test_multi_node_loop_body_with_a_branch() -> None:
    async def step(ctx: NodeContext) -> NodeResult:
        n = (await ctx.context.get("i", 0)) + 1
        await ctx.context.set("i", n)
        return NodeResult(output=n, action="even" if n % 2 == 0 else "odd")

    async def tally(ctx: NodeContext) -> None:
        key = ctx.node_id
        await ctx.context.set(key, (await ctx.context.get(key, 0)) + 1)

    flow = (
        create_flow("loop3")
        .node("step", step)
        .node("evens", tally)
        .node("odds", tally)
        .node("end", lambda ctx: 0)
        .edge("step", "evens", action="even")
        .edge("step", "odds", action="odd")
        .edge("evens", "end")
        .edge("odds", "end")
        .loop("lp", start_node_id="step", end_node_id="end", condition="i < 6")
        .node("exit", lambda ctx: "bye")
        .edge("lp", "exit")
    )
    result = await flow.run(FlowRuntime(), {"i": 0})
    assert result.status == "completed", result.errors
    assert result.context["i"] == 6
    assert result.context["evens"] == 3 and result.context["odds"] == 3
    assert result.context["_outputs.exit"] == "bye"


@pytest.mark.parametrize("concurrency", [1, 2, 3, 10])
async def test_a_loop_body_side_branch_runs_once_per_iteration(concurrency: int) -> None:
    # The side branch (side -> side2) does not lead back to the controller: before, the next
    # iteration reset the body while side2 was still queued, which then ran with no input or
    # not at all.
    async def count(ctx: NodeContext) -> int:
        n = int(await ctx.context.get("k", 0)) + 1
        await ctx.context.set("k", n)
        return n

    seen: list[tuple[str, Any]] = []

    async def record(ctx: NodeContext) -> Any:
        seen.append((ctx.node_id, ctx.input))
        return ctx.input

    flow = (
        create_flow("loop-side")
        .node("s", count)
        .node("e", record)
        .node("side", record)
        .node("side2", record)
        .node("after", record)
        .edge("s", "e")
        .edge("s", "side")
        .edge("side", "side2")
        .loop("lp", start_node_id="s", end_node_id="e", condition='context["k"] < 4')
        .edge("lp", "after")
    )
    result = await flow.run(FlowRuntime(concurrency=concurrency), {"k": 0})
    assert result.status == "completed", result.errors
    assert [value for node, value in seen if node == "side"] == [1, 2, 3, 4]
    assert [value for node, value in seen if node == "side2"] == [1, 2, 3, 4]
    assert result.context["_outputs.after"] == 4


async def test_dynamic_nodes_are_spliced_after_their_emitter() -> None:
    async def spawn(ctx: NodeContext) -> NodeResult:
        return NodeResult(
            output="spawned",
            dynamic_nodes=[{"id": f"dyn{i}", "uses": "dyn", "params": {"i": i}} for i in range(3)],
        )

    async def dyn(ctx: NodeContext) -> int:
        return int(ctx.params["i"]) * 10

    flow = create_flow("dyn").node("spawn", spawn)
    result = await flow.run(FlowRuntime(registry={"dyn": dyn}))
    assert result.status == "completed"
    assert [result.context[f"_outputs.dyn{i}"] for i in range(3)] == [0, 10, 20]
