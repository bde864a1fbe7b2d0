"""The in-memory runtime: execution, routing, joins, inputs and results."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from flowcraft import (
    BlueprintError,
    FlowRuntime,
    ImplementationNotFound,
    NodeContext,
    NodeExecutionError,
    NodeResult,
    SerializationError,
    create_flow,
    load_blueprint,
)


async def one(ctx: NodeContext) -> int:
    return 1


async def inc(ctx: NodeContext) -> int:
    return (ctx.input or 0) + 1


async def echo(ctx: NodeContext) -> Any:
    return ctx.input


def sync_double(ctx: NodeContext) -> int:
    return (ctx.input or 1) * 2


async def test_linear_chain_passes_outputs() -> None:
    flow = create_flow("chain").node("a", one).node("b", inc).node("c", inc)
    flow.edge("a", "b").edge("b", "c")
    result = await flow.run(FlowRuntime())
    assert result.status == "completed"
    assert result.context["_outputs.c"] == 3
    assert "c" not in result.context  # outputs never overwrite user keys
    assert result.errors == []
    assert result.run_id


async def test_sync_nodes_run_in_a_worker_thread() -> None:
    seen: list[str] = []

    def where(ctx: NodeContext) -> int:
        seen.append(threading.current_thread().name)
        return 5

    flow = create_flow("sync").node("a", where).node("b", sync_double).edge("a", "b")
    result = await flow.run(FlowRuntime())
    assert result.context["_outputs.b"] == 10
    assert seen and seen[0] != threading.main_thread().name


async def test_plain_dict_and_none_results() -> None:
    async def as_dict(ctx: NodeContext) -> dict[str, Any]:
        return {"output": 7, "action": "go"}

    async def nothing(ctx: NodeContext) -> None:
        return None

    flow = create_flow("r").node("a", as_dict).node("b", nothing).node("c", echo)
    flow.edge("a", "b", action="go").edge("b", "c")
    result = await flow.run(FlowRuntime())
    assert result.context["_outputs.a"] == 7
    assert result.context["_outputs.b"] is None
    assert result.status == "completed"


async def test_initial_state_is_copied_and_serialised_state_accepted() -> None:
    async def read(ctx: NodeContext) -> Any:
        return await ctx.context.get("user")

    flow = create_flow("s").node("a", read)
    state = {"user": "ada"}
    result = await flow.run(FlowRuntime(), state)
    assert result.context["_outputs.a"] == "ada"
    assert state == {"user": "ada"}
    result = await flow.run(FlowRuntime(), '{"user": "bob"}')
    assert result.context["_outputs.a"] == "bob"
    with pytest.raises(SerializationError):
        await flow.run(FlowRuntime(), "{not json")


async def test_action_routing_takes_only_matching_edges_and_skips_the_rest() -> None:
    ran: list[str] = []

    async def decide(ctx: NodeContext) -> NodeResult:
        return NodeResult(output="x", action="approve")

    def mark(name: str) -> Any:
        async def node(ctx: NodeContext) -> str:
            ran.append(name)
            return name

        node.__qualname__ = f"mark_{name}"
        return node

    flow = (
        create_flow("route")
        .node("decide", decide)
        .node("approve", mark("approve"))
        .node("reject", mark("reject"))
        .node("after_reject", mark("after_reject"))
        .edge("decide", "approve", action="approve")
        .edge("decide", "reject", action="reject")
        .edge("reject", "after_reject")
    )
    result = await flow.run(FlowRuntime())
    assert result.status == "completed"
    assert ran == ["approve"]


async def test_unknown_action_falls_through_to_default_edges() -> None:
    async def decide(ctx: NodeContext) -> NodeResult:
        return NodeResult(output=1, action="other")

    flow = create_flow("fall").node("d", decide).node("x", inc).node("y", inc)
    flow.edge("d", "x", action="special").edge("d", "y")
    result = await flow.run(FlowRuntime())
    assert "_outputs.y" in result.context
    assert "_outputs.x" not in result.context


async def test_conditions_see_result_and_context() -> None:
    async def score(ctx: NodeContext) -> dict[str, int]:
        return {"value": 42}

    flow = (
        create_flow("cond")
        .node("s", score)
        .node("high", one)
        .node("low", one)
        .edge("s", "high", condition="result.output.value > threshold")
        .edge("s", "low", condition="result.output.value <= threshold")
    )
    result = await flow.run(FlowRuntime(), {"threshold": 10})
    assert "_outputs.high" in result.context and "_outputs.low" not in result.context


async def test_all_join_after_exclusive_branches_fires_via_dead_path_elimination() -> None:
    async def decide(ctx: NodeContext) -> NodeResult:
        return NodeResult(output=3, action="left")

    flow = (
        create_flow("dpe")
        .node("d", decide)
        .node("left", inc)
        .node("right", inc)
        .node("right2", inc)
        .node("join", echo)
        .edge("d", "left", action="left")
        .edge("d", "right", action="right")
        .edge("right", "right2")
        .edge("left", "join")
        .edge("right2", "join")
    )
    result = await flow.run(FlowRuntime())
    assert result.status == "completed"
    assert result.context["_outputs.join"] == {"left": 4}


async def test_fan_in_input_is_a_mapping_of_predecessor_outputs() -> None:
    async def slow(ctx: NodeContext) -> str:
        await asyncio.sleep(0.02)
        return "slow"

    async def fast(ctx: NodeContext) -> str:
        return "fast"

    flow = (
        create_flow("fanin")
        .node("start", one)
        .node("slow", slow)
        .node("fast", fast)
        .node("join", echo)
        .edge("start", "slow")
        .edge("start", "fast")
        .edge("slow", "join")
        .edge("fast", "join")
    )
    result = await flow.run(FlowRuntime())
    assert result.context["_outputs.join"] == {"slow": "slow", "fast": "fast"}


async def test_any_join_fires_once() -> None:
    calls: list[Any] = []

    async def record(ctx: NodeContext) -> None:
        calls.append(ctx.input)

    flow = (
        create_flow("any")
        .node("s", one)
        .node("a", inc)
        .node("b", inc)
        .node("c", inc)
        .node("j", record, config={"joinStrategy": "any"})
        .edge("s", "a")
        .edge("s", "b")
        .edge("s", "c")
        .edge("a", "j")
        .edge("b", "j")
        .edge("c", "j")
    )
    result = await flow.run(FlowRuntime())
    assert result.status == "completed"
    assert len(calls) == 1


async def test_inputs_mapping_resolves_references() -> None:
    async def user(ctx: NodeContext) -> dict[str, Any]:
        return {"name": "ada", "langs": ["py", "ts"]}

    flow = (
        create_flow("inputs")
        .node("user", user)
        .node("show", echo, inputs={"who": "user.name", "first": "user.langs.0", "k": "plain"})
        .edge("user", "show")
    )
    result = await flow.run(FlowRuntime(), {"plain": 5})
    assert result.context["_outputs.show"] == {"who": "ada", "first": "py", "k": 5}


async def test_edge_transform_shapes_the_handed_value() -> None:
    flow = (
        create_flow("t")
        .node("a", one)
        .node("b", echo)
        .edge("a", "b", transform="input * 10 + context['base']")
    )
    result = await flow.run(FlowRuntime(), {"base": 2})
    assert result.context["_outputs.b"] == 12


async def test_failure_fails_the_run_once_naming_node_and_reason() -> None:
    async def boom(ctx: NodeContext) -> None:
        raise ValueError("kaboom")

    flow = create_flow("fail").node("a", one).node("b", boom).node("c", inc)
    flow.edge("a", "b").edge("b", "c")
    result = await flow.run(FlowRuntime())
    assert result.status == "failed"
    assert len(result.errors) == 1
    error = result.errors[0]
    assert isinstance(error, NodeExecutionError)
    assert error.node_id == "b" and "kaboom" in error.message
    assert isinstance(error.__cause__, ValueError)
    assert "_outputs.c" not in result.context
    assert result.to_dict()["errors"][0]["nodeId"] == "b"


async def test_missing_implementation_is_a_typed_fatal_error() -> None:
    bp = load_blueprint({"id": "m", "nodes": [{"id": "a", "uses": "nope"}]})
    result = await FlowRuntime().run(bp)
    assert result.status == "failed"
    assert isinstance(result.errors[0], ImplementationNotFound)
    assert "nope" in result.errors[0].message


async def test_invalid_blueprint_raises_blueprint_error() -> None:
    with pytest.raises(BlueprintError, match="nodes\\[0\\]"):
        await FlowRuntime().run({"id": "x", "nodes": [{"id": "a"}]})


async def test_concurrency_limit_is_a_sliding_window() -> None:
    running = 0
    peak = 0

    async def work(ctx: NodeContext) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.005 if ctx.node_id.endswith("0") else 0.001)
        running -= 1

    flow = create_flow("conc").node("s", one).node("j", echo)
    for i in range(12):
        flow.node(f"p{i}", work).edge("s", f"p{i}").edge(f"p{i}", "j")
    result = await flow.run(FlowRuntime(), concurrency=3)
    assert result.status == "completed"
    assert peak == 3


async def test_registry_and_per_run_registry_override_builtins() -> None:
    async def my_wait(ctx: NodeContext) -> str:
        return "not waiting"

    bp = load_blueprint({"id": "o", "nodes": [{"id": "w", "uses": "wait"}]})
    result = await FlowRuntime(registry={"wait": my_wait}).run(bp)
    assert result.status == "completed" and result.context["_outputs.w"] == "not waiting"
    result = await FlowRuntime().run(bp, function_registry={"wait": my_wait})
    assert result.status == "completed"


async def test_run_sync_from_a_script() -> None:
    flow = create_flow("sync-run").node("a", one)
    result = await asyncio.to_thread(
        FlowRuntime().run_sync, flow.to_blueprint(), None, function_registry=flow.function_registry
    )
    assert result.context["_outputs.a"] == 1


async def test_dependencies_and_params_reach_nodes() -> None:
    async def use(ctx: NodeContext) -> str:
        return f"{ctx.dependencies['greeting']} {ctx.params['name']} {ctx.node_id}"

    flow = create_flow("deps").node("a", use, params={"name": "ada"})
    result = await flow.run(FlowRuntime(dependencies={"greeting": "hi"}))
    assert result.context["_outputs.a"] == "hi ada a"


async def test_context_api_inside_nodes() -> None:
    async def writer(ctx: NodeContext) -> None:
        await ctx.context.set("k", {"x": 1})
        await ctx.context.patch(
            [{"op": "set", "key": "p", "value": 2}, {"op": "delete", "key": "gone"}]
        )
        assert await ctx.context.has("k")
        assert await ctx.context.get_many(["k", "p", "missing"]) == {"k": {"x": 1}, "p": 2}
        assert (await ctx.context.to_dict())["p"] == 2
        assert await ctx.context.delete("k") is True

    flow = create_flow("ctx").node("w", writer)
    result = await flow.run(FlowRuntime(), {"gone": 1})
    assert result.status == "completed"
    assert "gone" not in result.context and result.context["p"] == 2


async def test_stalled_when_a_join_can_never_be_satisfied() -> None:
    # b waits on c, which sits in a cycle that is never entered from a start node.
    bp = load_blueprint(
        {
            "id": "stall",
            "nodes": [
                {"id": "a", "uses": "one"},
                {"id": "b", "uses": "one"},
                {"id": "c", "uses": "one"},
                {"id": "d", "uses": "one"},
            ],
            "edges": [
                {"source": "a", "target": "b"},
                {"source": "c", "target": "b"},
                {"source": "d", "target": "c"},
                {"source": "c", "target": "d"},
            ],
        }
    )
    result = await FlowRuntime(registry={"one": one}).run(bp)
    assert result.status == "stalled"
