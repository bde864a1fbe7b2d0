"""Workflow contract: real runs through the backend's workers and client."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from conftest import Harness, outputs

from flowcraft import (
    ExpressionError,
    FlowRuntime,
    NodeContext,
    NodeResult,
    SafeEvaluator,
    create_flow,
)
from flowcraft.distributed import Client
from flowcraft.events import EventBus, FlowEvent

T = 15.0  # generous, only to avoid hangs


async def one(ctx: NodeContext) -> int:
    return 1


async def inc(ctx: NodeContext) -> Any:
    return (ctx.input or 0) + 1


async def echo(ctx: NodeContext) -> Any:
    return ctx.input


async def boom(ctx: NodeContext) -> Any:
    raise RuntimeError("kaput")


async def test_linear(harness: Harness) -> None:
    harness.add(
        create_flow("lin")
        .node("a", one)
        .node("b", inc)
        .node("c", inc)
        .edge("a", "b")
        .edge("b", "c")
    )
    harness.worker()
    result = await harness.client.run("lin", timeout=T)
    assert result.status == "completed"
    assert outputs(result.context) == {"a": 1, "b": 2, "c": 3}


@pytest.mark.parametrize("join", ["all", "any"])
async def test_fan_out_fan_in(harness: Harness, join: str) -> None:
    calls: list[str] = []

    async def gather(ctx: NodeContext) -> Any:
        calls.append(ctx.node_id)
        return ctx.input

    flow = (
        create_flow(f"fan-{join}")
        .node("a", one)
        .node("b", inc)
        .node("c", inc)
        .node("d", gather, config={"joinStrategy": join})
        .edge("a", "b")
        .edge("a", "c")
        .edge("b", "d")
        .edge("c", "d")
    )
    harness.add(flow)
    harness.worker()
    result = await harness.client.run(f"fan-{join}", timeout=T)
    assert result.status == "completed"
    assert calls == ["d"]
    if join == "all":
        assert result.context["_outputs.d"] == {"b": 2, "c": 2}


async def test_action_and_condition_routing_with_dead_paths(harness: Harness) -> None:
    async def decide(ctx: NodeContext) -> NodeResult:
        return NodeResult(output=5, action="left")

    flow = (
        create_flow("route")
        .node("a", decide)
        .node("l", echo)
        .node("r", echo)
        .node("big", echo)
        .node("small", echo)
        .node("join", echo)
        .edge("a", "l", action="left")
        .edge("a", "r", action="right")
        .edge("l", "big", condition='context["a"] > 3')
        .edge("l", "small", condition='context["a"] <= 3')
        .edge("big", "join")
        .edge("small", "join")
        .edge("r", "join")
    )
    harness.add(flow)
    harness.worker()
    result = await harness.client.run("route", timeout=T)
    assert result.status == "completed"
    assert set(outputs(result.context)) == {"a", "l", "big", "join"}
    assert result.context["_outputs.join"] == {"big": 5}


async def test_loop(harness: Harness) -> None:
    async def step(ctx: NodeContext) -> int:
        n = int(await ctx.context.get("n", 0)) + 1
        await ctx.context.set("n", n)
        return n

    flow = (
        create_flow("loop")
        .node("start", one)
        .node("body", step)
        .node("after", echo)
        .loop("lp", start_node_id="body", end_node_id="body", condition='context["n"] < 3')
        .edge("start", "lp")
        .edge("lp", "after")
    )
    harness.add(flow)
    harness.worker()
    result = await harness.client.run("loop", {"n": 0}, timeout=T)
    assert result.status == "completed"
    assert result.context["n"] == 3
    assert result.context["_outputs.after"] == 3


async def test_batch(harness: Harness) -> None:
    async def double(ctx: NodeContext) -> int:
        return int(ctx.input) * 2

    flow = create_flow("batch").batch("b", double, input_key="items", output_key="results")
    harness.add(flow)
    harness.worker()
    harness.worker()
    result = await harness.client.run("batch", {"items": [1, 2, 3, 4]}, timeout=T)
    assert result.status == "completed", result.errors
    assert result.context["results"] == [2, 4, 6, 8]


async def test_retries_with_backoff(harness: Harness) -> None:
    attempts: list[int] = []

    async def flaky(ctx: NodeContext) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise RuntimeError("not yet")
        return "ok"

    harness.add(create_flow("retry").node("a", flaky, config={"maxRetries": 3, "retryDelay": 1}))
    harness.worker()
    result = await harness.client.run("retry", timeout=T)
    assert result.status == "completed"
    assert attempts == [1, 2, 3]


async def test_timeout_fails_the_run(harness: Harness) -> None:
    async def slow(ctx: NodeContext) -> None:
        await asyncio.sleep(30)

    harness.add(create_flow("slow").node("a", slow, config={"timeout": 50}))
    harness.worker()
    result = await harness.client.run("slow", timeout=T)
    assert result.status == "failed"
    assert "timed out" in result.errors[0].message


async def test_node_and_context_events_carry_the_run(harness: Harness) -> None:
    async def writes(ctx: NodeContext) -> int:
        await ctx.context.set("note", "hi")
        return 2

    flow = (
        create_flow("evented")
        .node("a", one)
        .node("b", writes)
        .node("c", boom, config={"fallback": "fix"})
        .node("fix", echo)
        .node("d", echo)
        .edge("a", "b", condition="result.output == 1")
        .edge("b", "c", condition="result.output == 2")
        .edge("b", "d", condition="result.output == 3")
    )
    harness.add(flow)
    events: list[FlowEvent] = []
    bus = EventBus()
    bus.subscribe(events.append, inline=True)
    harness.worker(event_bus=bus)
    client = Client(harness.adapter(event_bus=bus))
    result = await client.run("evented", timeout=T)
    assert result.status == "completed", result.errors
    run_id = result.run_id
    seen = [(e.type, e.payload.get("nodeId") or e.payload.get("key")) for e in events]
    assert seen[0] == ("workflow:start", None)
    for node in ("a", "b", "fix"):
        assert ("node:start", node) in seen and ("node:finish", node) in seen, node
    assert ("node:start", "c") in seen and ("node:fallback", "c") in seen
    for key in ("note", "_outputs.a", "_outputs.b", "_inputs.b", "_outputs.c"):
        assert ("context:change", key) in seen, key
    assert not any(k and k.startswith("_flowcraft.") for _, k in seen)
    evaluated = {
        (e.payload["source"], e.payload["target"], e.payload["result"])
        for e in events
        if e.type == "edge:evaluate"
    }
    assert evaluated == {("a", "b", True), ("b", "c", True), ("b", "d", False)}
    assert ("node:skipped", "b") in seen and ("node:start", "d") not in seen
    assert {e.payload["executionId"] for e in events if not e.type.startswith("job:")} == {run_id}


async def test_fallback(harness: Harness) -> None:
    async def rescue(ctx: NodeContext) -> str:
        return f"rescued {ctx.input}"

    flow = (
        create_flow("fb")
        .node("a", one)
        .node("b", boom, config={"fallback": "fix"})
        .node("fix", rescue)
        .node("c", echo)
        .edge("a", "b")
        .edge("b", "c")
    )
    harness.add(flow)
    harness.worker()
    result = await harness.client.run("fb", timeout=T)
    assert result.status == "completed", result.errors
    assert result.context["_outputs.c"] == "rescued 1"


async def test_a_failing_fallback_fails_the_run_with_both_errors(harness: Harness) -> None:
    async def also_boom(ctx: NodeContext) -> Any:
        raise ValueError("the fallback broke too")

    flow = (
        create_flow("fb-fails")
        .node("a", one)
        .node("b", boom, config={"fallback": "fix"})
        .node("fix", also_boom)
        .edge("a", "b")
    )
    harness.add(flow)
    harness.worker()
    result = await harness.client.run("fb-fails", timeout=T)
    assert result.status == "failed"
    assert [(e.node_id, type(e).__name__) for e in result.errors] == [
        ("b", "NodeExecutionError"),
        ("fix", "NodeExecutionError"),
    ]
    assert "kaput" in result.errors[0].message
    assert "the fallback broke too" in result.errors[1].message


async def test_shared_fallback_stands_in_for_each_failed_primary(harness: Harness) -> None:
    # 'fix' rescues 'a' and 'c' separately (each with its own input, along its own edges);
    # 'b' succeeds and routes by its own result, never by the fallback's.
    async def slow_x(ctx: NodeContext) -> NodeResult:
        await asyncio.sleep(0.05)
        return NodeResult(output="B", action="x")

    async def rescue(ctx: NodeContext) -> str:
        return f"rescued {ctx.input}"

    flow = (
        create_flow("shared-fb")
        .node("start", one)
        .node("a", boom, config={"fallback": "fix"})
        .node("b", slow_x, config={"fallback": "fix"})
        .node("c", boom, config={"fallback": "fix"})
        .node("fix", rescue)
        .node("after_a", echo)
        .node("b_chosen", echo)
        .node("b_default", echo)
        .node("after_c", echo)
        .edge("start", "a", transform='"A"')
        .edge("start", "b")
        .edge("start", "c", transform='"C"')
        .edge("a", "after_a")
        .edge("b", "b_chosen", action="x")
        .edge("b", "b_default")
        .edge("c", "after_c")
    )
    harness.add(flow)
    harness.worker()
    result = await harness.client.run("shared-fb", timeout=T)
    assert result.status == "completed", result.errors
    out = outputs(result.context)
    assert out["after_a"] == "rescued A"
    assert out["after_c"] == "rescued C"
    assert out["b_chosen"] == "B"
    assert "b_default" not in out


async def test_unused_fallback_resolves_its_own_edges(harness: Harness) -> None:
    # 'b' succeeds, so 'fix' never runs; the join after both must not wait for it.
    async def rescue(ctx: NodeContext) -> str:
        return "rescued"

    flow = (
        create_flow("unused-fb")
        .node("a", one)
        .node("b", inc, config={"fallback": "fix"})
        .node("fix", rescue)
        .node("join", echo)
        .edge("a", "b")
        .edge("b", "join")
        .edge("fix", "join")
    )
    harness.add(flow)
    harness.worker()
    result = await harness.client.run("unused-fb", timeout=T)
    assert result.status == "completed", result.errors
    assert result.context["_outputs.join"] == {"b": 2}
    assert "_outputs.fix" not in result.context


async def test_rejected_expression_is_a_typed_error(harness: Harness) -> None:
    harness.add(
        create_flow("bad-expr").node("a", one).node("b", inc).edge("a", "b", condition="a.__x__")
    )
    harness.worker()
    with pytest.raises(ExpressionError) as info:
        await harness.client.start("bad-expr")
    assert info.value.node_id == "a"
    assert "(a -> b)" in info.value.message


async def test_expression_failing_on_a_worker_fails_the_run_typed(harness: Harness) -> None:
    class Picky(SafeEvaluator):
        def evaluate(self, expression: str, scope: Mapping[str, Any]) -> Any:
            if "missing" in expression:
                raise KeyError(expression)
            return super().evaluate(expression, scope)

    flow = (
        create_flow("late-expr")
        .node("a", one)
        .node("b", inc)
        .node("c", inc)
        .edge("a", "b", transform="missing")
        .edge("b", "c")
    )
    harness.add(flow)
    harness.worker(evaluator=Picky())
    result = await harness.client.run("late-expr", timeout=T)
    assert result.status == "failed"
    assert len(result.errors) == 1
    error = result.errors[0]
    assert isinstance(error, ExpressionError)
    assert error.node_id == "a"
    assert "(a -> b) transform" in error.message
    assert "_outputs.b" not in result.context
    assert harness.dead_letters() == []


async def test_failing_node_fails_the_run_once(harness: Harness) -> None:
    flow = (
        create_flow("fail")
        .node("a", one)
        .node("b", boom)
        .node("c", inc)
        .edge("a", "b")
        .edge("a", "c")
    )
    harness.add(flow)
    harness.worker()
    result = await harness.client.run("fail", timeout=T)
    assert result.status == "failed"
    assert len(result.errors) == 1
    assert result.errors[0].node_id == "b"
    assert "kaput" in result.errors[0].message


async def test_any_join_never_flips_a_completed_run(harness: Harness) -> None:
    async def late(ctx: NodeContext) -> None:
        await asyncio.sleep(0.2)
        raise RuntimeError("late failure")

    flow = (
        create_flow("anyjoin")
        .node("a", one)
        .node("fast", inc)
        .node("slowfail", late)
        .node("j", echo, config={"joinStrategy": "any"})
        .edge("a", "fast")
        .edge("a", "slowfail")
        .edge("fast", "j")
        .edge("slowfail", "j")
    )
    harness.add(flow)
    harness.worker()
    run_id = await harness.client.start("anyjoin")
    result = await harness.client.wait(run_id, timeout=T)
    assert result.status == "failed"  # the late failure is a real failure: the run waited for it
    assert await harness.client.status(run_id) == "failed"
    await harness.client.cancel(run_id)
    assert await harness.client.status(run_id) == "failed"


async def test_durable_sleep_fires(harness: Harness) -> None:
    flow = create_flow("sleepy").node("a", one).sleep("nap", duration=100).node("b", inc)
    flow.edge("a", "nap").edge("nap", "b")
    harness.add(flow)
    harness.worker()
    run_id = await harness.client.start("sleepy")
    result = await harness.client.wait(run_id, timeout=T)
    assert result.status == "completed"
    assert result.context["_outputs.b"] == 2


async def test_wait_and_resume_routes_by_action(harness: Harness) -> None:
    flow = (
        create_flow("approve")
        .node("a", one)
        .wait("gate")
        .node("yes", echo)
        .node("no", echo)
        .edge("a", "gate")
        .edge("gate", "yes", action="approve")
        .edge("gate", "no", action="reject")
    )
    harness.add(flow)
    harness.worker()
    client = harness.client
    run_id = await client.start("approve")
    paused = await client.wait(run_id, timeout=T)
    assert paused.status == "awaiting"
    assert paused.context["_awaitingNodeIds"] == ["gate"]
    assert await client.status(run_id) == "awaiting"
    assert await client.resume_with_action(run_id, "reject", {"by": "ann"}) == "gate"
    result = await client.wait(run_id, timeout=T)
    assert result.status == "completed"
    assert set(outputs(result.context)) == {"a", "gate", "no"}
    assert result.context["_outputs.no"] == {"by": "ann"}


async def test_cancel(harness: Harness) -> None:
    seen = asyncio.Event()

    async def long(ctx: NodeContext) -> None:
        seen.set()
        while not ctx.cancelled:  # noqa: ASYNC110 - nodes see cancellation as a flag
            await asyncio.sleep(0.01)

    harness.add(create_flow("cancel").node("a", long).node("b", inc).edge("a", "b"))
    harness.worker()
    client = harness.client
    run_id = await client.start("cancel")
    await asyncio.wait_for(seen.wait(), T)
    assert await client.cancel(run_id)
    result = await client.wait(run_id, timeout=T)
    assert result.status == "cancelled"
    assert "_outputs.b" not in result.context


async def test_twenty_concurrent_runs_on_two_workers(harness: Harness) -> None:
    served: set[int] = set()
    workers: dict[int, Any] = {}

    async def note(ctx: NodeContext) -> Any:
        await asyncio.sleep(0.01)
        return (ctx.input or 0) + 1

    harness.add(create_flow("many").node("a", note).node("b", note).edge("a", "b"))
    for _ in range(2):
        w = harness.worker(concurrency=4)
        workers[id(w)] = w
    client = harness.client
    run_ids = [await client.start("many", {"i": i}) for i in range(20)]
    results = await asyncio.gather(*(client.wait(r, timeout=T) for r in run_ids))
    assert [r.status for r in results] == ["completed"] * 20
    assert all(r.context["_outputs.b"] == 2 for r in results)
    del served


async def test_loop_nested_in_a_loop(harness: Harness) -> None:
    async def outer(ctx: NodeContext) -> int:
        o = int(await ctx.context.get("o", 0)) + 1
        await ctx.context.patch([{"op": "set", "key": "o", "value": o}, _set("k", 0)])
        return o

    async def inner(ctx: NodeContext) -> int:
        now = await ctx.context.get_many(["k", "total"])
        await ctx.context.patch([_set("k", now["k"] + 1), _set("total", now["total"] + 1)])
        return int(now["k"]) + 1

    flow = (
        create_flow("nested-loops")
        .node("init", one)
        .node("outer", outer)
        .node("inner", inner)
        .node("after_inner", echo)
        .node("done", echo)
        .loop("in", start_node_id="inner", end_node_id="inner", condition='context["k"] < 2')
        .loop("out", start_node_id="outer", end_node_id="after_inner", condition='context["o"] < 3')
        .edge("init", "out")
        .edge("outer", "in")
        .edge("in", "after_inner")
        .edge("out", "done")
    )
    harness.add(flow)
    harness.worker()
    result = await harness.client.run("nested-loops", {"o": 0, "k": 0, "total": 0}, timeout=T)
    assert result.status == "completed", result.errors
    assert (result.context["o"], result.context["total"]) == (3, 6)
    assert result.context["_outputs.done"] == 2


async def test_a_loop_body_side_branch_runs_once_per_iteration(harness: Harness) -> None:
    """``side -> side2`` leaves the body without leading back to the controller: every
    iteration runs it once."""

    async def count(ctx: NodeContext) -> int:
        n = int(await ctx.context.get("k", 0)) + 1
        await ctx.context.set("k", n)
        return n

    async def tally(ctx: NodeContext) -> Any:
        key = f"runs.{ctx.node_id}"
        await ctx.context.set(key, int(await ctx.context.get(key, 0)) + 1)
        return ctx.input

    flow = (
        create_flow("loop-side")
        .node("s", count)
        .node("e", echo)
        .node("side", tally)
        .node("side2", tally)
        .node("after", echo)
        .edge("s", "e")
        .edge("s", "side")
        .edge("side", "side2")
        .loop("lp", start_node_id="s", end_node_id="e", condition='context["k"] < 4')
        .edge("lp", "after")
    )
    harness.add(flow)
    harness.worker()
    result = await harness.client.run("loop-side", {"k": 0}, timeout=T)
    assert result.status == "completed", result.errors
    assert (result.context["runs.side"], result.context["runs.side2"]) == (4, 4)
    assert result.context["_outputs.after"] == 4


async def test_a_join_of_an_inner_loop_exit_and_a_side_branch(harness: Harness) -> None:
    """The join is in the outer loop's body: it sees the inner loop's exit and the side branch
    at the same iteration of the outer loop (iterations are loop paths), as in memory."""

    async def count(ctx: NodeContext) -> int:
        key = "o" if ctx.node_id == "outer" else "k"
        n = int(await ctx.context.get(key, 0)) + 1
        await ctx.context.set(key, n)
        return n

    flow = (
        create_flow("nested-join")
        .node("init", one)
        .node("outer", count)
        .node("inner", count)
        .node("side", echo)
        .node("join", echo)
        .loop("in", start_node_id="inner", end_node_id="inner", condition='context["k"] < 2')
        .loop("out", start_node_id="outer", end_node_id="join", condition='context["o"] < 1')
        .edge("init", "out")
        .edge("outer", "in")
        .edge("outer", "side")
        .edge("in", "join")
        .edge("side", "join")
    )
    harness.add(flow)
    harness.worker()
    result = await harness.client.run("nested-join", {"o": 0, "k": 0}, timeout=T)
    assert result.status == "completed", result.errors
    assert result.context["_outputs.join"] == {"in": 2, "side": 1}


async def test_three_nested_loops_with_joins_match_the_memory_runtime(harness: Harness) -> None:
    async def count(ctx: NodeContext) -> int:
        key = f"c_{ctx.node_id}"
        n = int(await ctx.context.get(key, 0)) + 1
        await ctx.context.set(key, n)
        if ctx.node_id == "mid":
            await ctx.context.set("c_inner", 0)
        if ctx.node_id == "outer":
            await ctx.context.set("c_mid", 0)
        return n

    flow = (
        create_flow("three-loops")
        .node("init", one)
        .node("outer", count)
        .node("mid", count)
        .node("inner", count)
        .node("side", count)
        .node("mj", echo)
        .node("oj", echo)
        .node("done", echo)
        .loop("li", start_node_id="inner", end_node_id="inner", condition='context["c_inner"] < 2')
        .loop("lm", start_node_id="mid", end_node_id="mj", condition='context["c_mid"] < 2')
        .loop("lo", start_node_id="outer", end_node_id="oj", condition='context["c_outer"] < 2')
        .edge("init", "lo")
        .edge("outer", "lm")
        .edge("outer", "side")
        .edge("mid", "li")
        .edge("li", "mj")
        .edge("mid", "mj")
        .edge("lm", "oj")
        .edge("side", "oj")
        .edge("lo", "done")
    )
    start = {"c_outer": 0, "c_mid": 0, "c_inner": 0, "c_side": 0}
    expected = await flow.run(FlowRuntime(), start)
    assert expected.status == "completed", expected.errors
    harness.add(flow)
    harness.worker()
    result = await harness.client.run("three-loops", start, timeout=T)
    assert result.status == "completed", result.errors
    counters = {k: v for k, v in result.context.items() if k.startswith("c_")}
    assert counters == {k: v for k, v in expected.context.items() if k.startswith("c_")}
    assert expected.context["c_inner"] == 2  # the loops did loop
    for node in ("mj", "oj", "done"):
        assert result.context[f"_outputs.{node}"] == expected.context[f"_outputs.{node}"], node


def _set(key: str, value: Any) -> Any:
    return {"op": "set", "key": key, "value": value}


async def twenty_one(ctx: NodeContext) -> int:
    return 21


async def double(ctx: NodeContext) -> int:
    return int(ctx.input) * 2


async def label(ctx: NodeContext) -> str:
    return f"n={ctx.input}"


def child_flow() -> Any:
    return (
        create_flow("child")
        .node("double", double, inputs="n")
        .node("label", label)
        .edge("double", "label")
    )


async def test_subflow_maps_inputs_and_outputs(harness: Harness) -> None:
    harness.add(child_flow())
    harness.add(
        create_flow("parent")
        .node("seed", twenty_one)
        .subflow("sub", "child", inputs={"n": "seed"}, outputs={"label": "label"})
        .node("after", echo)
        .edge("seed", "sub")
        .edge("sub", "after")
    )
    # Without mappings the node's input goes to the child's start nodes and the output of the
    # child's one terminal node comes back.
    harness.add(create_flow("inc-child").node("inc", inc))
    harness.add(create_flow("plain").node("a", one).subflow("sub", "inc-child").edge("a", "sub"))
    harness.worker()
    result = await harness.client.run("parent", timeout=T)
    assert result.status == "completed", result.errors
    assert result.context["label"] == "n=42"
    assert result.context["_outputs.sub"] == {"label": "n=42"}
    assert result.context["_outputs.after"] == {"label": "n=42"}
    plain = await harness.client.run("plain", timeout=T)
    assert plain.status == "completed", plain.errors
    assert plain.context["_outputs.sub"] == 2


async def test_subflow_in_a_loop_runs_a_child_per_iteration(harness: Harness) -> None:
    children: set[str] = set()

    async def step(ctx: NodeContext) -> int:
        children.add(ctx.run_id)
        return int(ctx.input) + 1

    harness.add(create_flow("step-child").node("step", step, inputs="n"))
    harness.add(
        create_flow("counting")
        .node("a", one)
        .subflow("sub", "step-child", inputs={"n": "n"}, outputs={"n": "step"})
        .loop("lp", start_node_id="sub", end_node_id="sub", condition='context["n"] < 3')
        .edge("a", "lp")
    )
    harness.worker()
    result = await harness.client.run("counting", {"n": 0}, timeout=T)
    assert result.status == "completed", result.errors
    assert result.context["n"] == 3
    assert len(children) == 3


async def test_failing_subflow_fails_the_parent_naming_the_child_node(harness: Harness) -> None:
    async def rescue(ctx: NodeContext) -> str:
        return "rescued"

    harness.add(create_flow("bad-child").node("ok", one).node("bad", boom).edge("ok", "bad"))
    harness.add(
        create_flow("fails").subflow("sub", "bad-child").node("after", echo).edge("sub", "after")
    )
    harness.add(
        create_flow("rescued")
        .subflow("sub", "bad-child", config={"fallback": "fix"})
        .node("fix", rescue)
        .node("after", echo)
        .edge("sub", "after")
    )
    harness.worker()
    result = await harness.client.run("fails", timeout=T)
    assert result.status == "failed"
    assert len(result.errors) == 1
    error = result.errors[0]
    assert error.node_id == "sub"
    assert "subflow 'bad-child' of node 'sub' ended failed" in error.message
    assert "node 'bad' failed" in error.message and "kaput" in error.message
    assert "_outputs.after" not in result.context
    rescued = await harness.client.run("rescued", timeout=T)
    assert rescued.status == "completed", rescued.errors
    assert rescued.context["_outputs.after"] == "rescued"


async def test_nested_subflows(harness: Harness) -> None:
    harness.add(child_flow())
    harness.add(
        create_flow("middle").subflow(
            "inner", "child", inputs={"n": "n"}, outputs={"label": "label"}
        )
    )
    harness.add(
        create_flow("top")
        .node("seed", twenty_one)
        .subflow("outer", "middle", inputs={"n": "seed"}, outputs={"result": "label"})
        .edge("seed", "outer")
    )
    harness.add(create_flow("bad-child").node("bad", boom))
    harness.add(create_flow("bad-middle").subflow("inner", "bad-child"))
    harness.add(create_flow("bad-top").subflow("outer", "bad-middle"))
    harness.worker()
    result = await harness.client.run("top", timeout=T)
    assert result.status == "completed", result.errors
    assert result.context["result"] == "n=42"
    assert result.context["_outputs.outer"] == {"result": "n=42"}
    failed = await harness.client.run("bad-top", timeout=T)
    assert failed.status == "failed"
    message = failed.errors[0].message
    assert "node 'outer'" in message and "node 'inner'" in message and "node 'bad'" in message


async def test_cancelling_the_parent_cancels_the_subflow(harness: Harness) -> None:
    started = asyncio.Event()
    child_runs: list[str] = []

    async def long(ctx: NodeContext) -> None:
        child_runs.append(ctx.run_id)
        started.set()
        while not ctx.cancelled:  # noqa: ASYNC110 - nodes see cancellation as a flag
            await asyncio.sleep(0.01)

    harness.add(create_flow("slow-child").node("long", long).node("next", inc).edge("long", "next"))
    harness.add(
        create_flow("cancel-parent")
        .subflow("sub", "slow-child")
        .node("after", echo)
        .edge("sub", "after")
    )
    harness.worker()
    client = harness.client
    run_id = await client.start("cancel-parent")
    await asyncio.wait_for(started.wait(), T)
    assert await client.status(run_id) == "running"  # a running child is not a human wait
    assert await client.cancel(run_id)
    result = await client.wait(run_id, timeout=T)
    assert result.status == "cancelled"
    child = await client.wait(child_runs[0], timeout=T)
    assert child.status == "cancelled"
    assert "_outputs.next" not in child.context
    assert "_outputs.after" not in (await client.wait(run_id, timeout=T)).context


async def test_awaiting_subflow_makes_the_parent_await_and_resumes_through_it(
    harness: Harness,
) -> None:
    harness.add(
        create_flow("approval")
        .node("prepare", one)
        .wait("review")
        .node("publish", echo)
        .node("discard", echo)
        .edge("prepare", "review")
        .edge("review", "publish", action="approve")
        .edge("review", "discard", action="reject")
    )
    harness.add(
        create_flow("outer")
        .subflow("approve", "approval")
        .node("after", echo)
        .edge("approve", "after")
    )
    harness.worker()
    client = harness.client
    run_id = await client.start("outer")
    paused = await client.wait(run_id, timeout=T)
    assert paused.status == "awaiting"
    assert paused.context["_awaitingNodeIds"] == ["approve"]
    assert await client.status(run_id) == "awaiting"
    assert await client.resume_with_action(run_id, "approve", "text") == "approve"
    result = await client.wait(run_id, timeout=T)
    assert result.status == "completed", result.errors
    assert result.context["_outputs.after"] == "text"


async def test_subflow_of_an_unregistered_blueprint_fails_clearly(harness: Harness) -> None:
    harness.add(create_flow("orphan").subflow("sub", "nowhere"))
    harness.worker()
    result = await harness.client.run("orphan", timeout=T)
    assert result.status == "failed"
    assert "blueprint 'nowhere' is not registered with this worker" in result.errors[0].message
