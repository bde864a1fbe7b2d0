"""Retries, back-off, timeouts, fallbacks, class nodes, middleware and cancellation."""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

from flowcraft import (
    FlowcraftError,
    FlowRuntime,
    Middleware,
    Node,
    NodeContext,
    NodeResult,
    NodeTimeoutError,
    create_flow,
)
from flowcraft.events import EventBus, FlowEvent


def flaky(failures: int) -> Any:
    calls = {"n": 0}

    async def node(ctx: NodeContext) -> int:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise RuntimeError(f"attempt {calls['n']}")
        return calls["n"]

    node.calls = calls  # type: ignore[attr-defined]
    return node


async def test_max_retries_is_total_attempts() -> None:
    node = flaky(2)
    result = await create_flow("r").node("a", node, config={"maxRetries": 3}).run(FlowRuntime())
    assert result.status == "completed" and node.calls["n"] == 3


async def test_max_retries_zero_still_runs_once() -> None:
    node = flaky(0)
    result = await create_flow("r0").node("a", node, config={"maxRetries": 0}).run(FlowRuntime())
    assert result.status == "completed" and node.calls["n"] == 1


async def test_retry_delay_backs_off_exponentially() -> None:
    node = flaky(2)
    bus = EventBus()
    retries: list[FlowEvent] = []
    bus.subscribe(retries.append, ["node:retry"])
    started = time.monotonic()
    flow = create_flow("rd").node("a", node, config={"maxRetries": 3, "retryDelay": 40})
    result = await flow.run(FlowRuntime(event_bus=bus))
    elapsed = time.monotonic() - started
    assert result.status == "completed"
    assert elapsed >= 0.04 + 0.08  # 40 ms, then 80 ms
    assert [e.payload["attempt"] for e in retries] == [1, 2]
    assert retries[0].payload["blueprintId"] == "rd"


async def test_timeout_applies_per_attempt() -> None:
    attempts = {"n": 0}

    async def slow_then_fast(ctx: NodeContext) -> str:
        attempts["n"] += 1
        if attempts["n"] == 1:
            await asyncio.sleep(5)
        return "ok"

    flow = create_flow("to").node("a", slow_then_fast, config={"timeout": 50, "maxRetries": 2})
    result = await flow.run(FlowRuntime())
    assert result.status == "completed" and attempts["n"] == 2

    async def always_slow(ctx: NodeContext) -> None:
        await asyncio.sleep(5)

    result = (
        await create_flow("to2").node("a", always_slow, config={"timeout": 30}).run(FlowRuntime())
    )
    assert result.status == "failed"
    assert isinstance(result.errors[0], NodeTimeoutError)
    assert "timed out after 30 ms" in result.errors[0].message


async def test_fallback_node_rescues_and_inherits_edges() -> None:
    async def boom(ctx: NodeContext) -> None:
        raise ValueError("primary down")

    async def backup(ctx: NodeContext) -> str:
        return f"backup for {ctx.input}"

    flow = (
        create_flow("fb")
        .node("start", lambda ctx: "req")
        .node("primary", boom, config={"fallback": "backup"})
        .node("backup", backup)
        .node("next", lambda ctx: f"got {ctx.input}")
        .edge("start", "primary")
        .edge("primary", "next")
    )
    result = await flow.run(FlowRuntime())
    assert result.status == "completed", result.errors
    assert result.context["_outputs.backup"] == "backup for req"
    assert result.context["_outputs.next"] == "got backup for req"
    assert result.errors == []


async def test_a_failing_fallback_fails_the_run_with_its_primary() -> None:
    async def fails(ctx: NodeContext) -> Any:
        raise RuntimeError(f"{ctx.node_id} broke")

    ran: list[str] = []

    async def ok(ctx: NodeContext) -> str:
        ran.append(ctx.node_id)
        return "ok"

    # a's fallback fb1 fails too. fb1's own fallback does not stand in for it: nothing would
    # route along a's edges (before, the run ended completed without running "after").
    flow = (
        create_flow("fb-chain")
        .node("a", fails, config={"fallback": "fb1"})
        .node("fb1", fails, config={"fallback": "fb2"})
        .node("fb2", ok)
        .node("after", ok)
        .edge("a", "after")
    )
    result = await flow.run(FlowRuntime())
    assert result.status == "failed"
    assert [e.node_id for e in result.errors] == ["a", "fb1"]
    assert [e.message.rsplit(": ", 1)[1] for e in result.errors] == ["a broke", "fb1 broke"]
    assert ran == []


async def test_unused_fallback_never_runs() -> None:
    ran: list[str] = []

    async def backup(ctx: NodeContext) -> None:
        ran.append("backup")

    flow = create_flow("fb2").node("a", lambda ctx: 1, config={"fallback": "b"}).node("b", backup)
    result = await flow.run(FlowRuntime())
    assert result.status == "completed" and ran == []


async def test_rescued_failure_does_not_mask_another_failure() -> None:
    async def boom(ctx: NodeContext) -> None:
        raise ValueError("x")

    flow = (
        create_flow("fb3")
        .node("s", lambda ctx: 1)
        .node("a", boom, config={"fallback": "rescue"})
        .node("rescue", lambda ctx: "ok")
        .node("b", boom)
        .edge("s", "a")
        .edge("s", "b")
    )
    result = await flow.run(FlowRuntime())
    assert result.status == "failed"
    assert [e.node_id for e in result.errors] == ["b"]


class Summarise(Node):
    calls: ClassVar[int] = 0
    recovered: ClassVar[list[str]] = []

    async def prep(self, ctx: NodeContext) -> str:
        return str(ctx.input).upper()

    async def exec(self, prep_result: Any, ctx: NodeContext) -> str:
        type(self).calls += 1
        if self.params.get("fail"):
            raise RuntimeError("exec failed")
        return prep_result + "!"

    def post(self, exec_result: Any, ctx: NodeContext) -> NodeResult:
        return NodeResult(output=exec_result, action="done")

    async def fallback(self, error: BaseException, ctx: NodeContext) -> str:
        if self.params.get("rescue"):
            return "rescued"
        raise error

    async def recover(self, error: BaseException, ctx: NodeContext) -> None:
        type(self).recovered.append(self.node_id)


async def test_class_node_phases_retries_fallback_and_recover() -> None:
    Summarise.calls = 0
    Summarise.recovered = []
    flow = (
        create_flow("cls")
        .node("in", lambda ctx: "hi")
        .node("ok", Summarise)
        .node("after", lambda ctx: ctx.input)
        .edge("in", "ok")
        .edge("ok", "after", action="done")
    )
    result = await flow.run(FlowRuntime())
    assert result.context["_outputs.after"] == "HI!"

    flow = create_flow("cls2").node(
        "r", Summarise, params={"fail": True, "rescue": True}, config={"maxRetries": 2}
    )
    Summarise.calls = 0
    result = await flow.run(FlowRuntime())
    assert result.context["_outputs.r"] == "rescued"
    assert Summarise.calls == 2
    assert Summarise.recovered == []  # a successful class fallback is success

    flow = create_flow("cls3").node("f", Summarise, params={"fail": True})
    result = await flow.run(FlowRuntime())
    assert result.status == "failed" and Summarise.recovered == ["f"]


class Recorder(Middleware):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def before_node(self, ctx: NodeContext, node_id: str) -> None:
        self.log.append(f"{self.name}.before")

    async def after_node(self, ctx: NodeContext, node_id: str, result: Any, error: Any) -> None:
        self.log.append(f"{self.name}.after")

    async def around_node(self, ctx: NodeContext, node_id: str, next: Any) -> Any:
        self.log.append(f"{self.name}.around-in")
        result = await next()
        self.log.append(f"{self.name}.around-out")
        return result


async def test_middleware_order() -> None:
    log: list[str] = []

    async def node(ctx: NodeContext) -> None:
        log.append("node")

    runtime = FlowRuntime(middleware=[Recorder("m1", log), Recorder("m2", log)])
    await create_flow("mw").node("a", node).run(runtime)
    assert log == [
        "m1.before",
        "m2.before",
        "m1.around-in",
        "m2.around-in",
        "node",
        "m2.around-out",
        "m1.around-out",
        "m1.after",
        "m2.after",
    ]


async def test_around_middleware_can_replace_and_rescue() -> None:
    class Rescue(Middleware):
        async def around_node(self, ctx: NodeContext, node_id: str, next: Any) -> Any:
            try:
                result = await next()
            except FlowcraftError:
                return NodeResult(output="rescued")
            return NodeResult(output=f"wrapped {result.output}")

    async def boom(ctx: NodeContext) -> None:
        raise RuntimeError("no")

    flow = create_flow("mw2").node("ok", lambda ctx: 1).node("bad", boom)
    result = await flow.run(FlowRuntime(middleware=[Rescue()]))
    assert result.status == "completed"
    assert result.context["_outputs.ok"] == "wrapped 1"
    assert result.context["_outputs.bad"] == "rescued"


async def test_cancellation_keeps_progress_and_stops_running_nodes() -> None:
    signal = asyncio.Event()
    saw_cancel = asyncio.Event()

    async def first(ctx: NodeContext) -> int:
        return 1

    async def long(ctx: NodeContext) -> None:
        signal.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            saw_cancel.set()
            raise

    flow = create_flow("cancel").node("a", first).node("b", long).node("c", first)
    flow.edge("a", "b").edge("b", "c")
    bus = EventBus()
    finishes: list[FlowEvent] = []
    bus.subscribe(finishes.append, ["workflow:finish"])
    result = await asyncio.wait_for(flow.run(FlowRuntime(event_bus=bus), signal=signal), 2)
    assert result.status == "cancelled"
    assert result.context["_outputs.a"] == 1  # progress is kept
    assert "_outputs.c" not in result.context
    assert saw_cancel.is_set()
    assert [e.payload["status"] for e in finishes] == ["cancelled"]


async def test_runtime_cancel_by_run_id() -> None:
    runtime = FlowRuntime()
    started = asyncio.Event()

    async def long(ctx: NodeContext) -> None:
        started.set()
        await asyncio.sleep(10)

    task = asyncio.ensure_future(create_flow("c2").node("a", long).run(runtime, run_id="run-1"))
    await started.wait()
    assert runtime.cancel("run-1") is True
    result = await asyncio.wait_for(task, 2)
    assert result.status == "cancelled"
    assert runtime.cancel("run-1") is False


async def test_failing_event_subscriber_never_fails_a_node() -> None:
    bus = EventBus()

    def broken(event: FlowEvent) -> None:
        raise RuntimeError("subscriber bug")

    async def broken_async(event: FlowEvent) -> None:
        raise RuntimeError("async subscriber bug")

    bus.subscribe(broken)
    bus.subscribe(broken_async)
    result = await create_flow("ev").node("a", lambda ctx: 1).run(FlowRuntime(event_bus=bus))
    await bus.drain()
    assert result.status == "completed"
    assert bus.dropped > 0


async def test_event_sequence_of_a_simple_run() -> None:
    bus = EventBus()
    events: list[FlowEvent] = []
    bus.subscribe(events.append)
    flow = create_flow("evs").node("a", lambda ctx: 1).node("b", lambda ctx: 2)
    flow.edge("a", "b", condition="result.output == 1")
    result = await flow.run(FlowRuntime(event_bus=bus))
    types = [e.type for e in events]
    assert types[0] == "workflow:start" and types[-1] == "workflow:finish"
    assert types.count("workflow:finish") == 1
    assert "workflow:resume" not in types
    assert types.count("node:start") == 2 and types.count("node:finish") == 2
    evaluate = next(e for e in events if e.type == "edge:evaluate")
    assert evaluate.payload["executionId"] == result.run_id
    assert evaluate.payload["result"] is True
    assert any(e.type == "context:change" and e.payload["key"] == "_outputs.a" for e in events)
