"""Sync nodes: worker threads, chains of them run in one thread hop, and ``inline`` nodes."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from flowcraft import EventBus, Flow, FlowRuntime, Node, NodeContext, create_flow
from flowcraft.node import inline
from flowcraft.runtime import _threads

_request = contextvars.ContextVar("request", default="none")


def inc(ctx: NodeContext) -> int:
    return (ctx.input or 0) + 1


def chain(name: str, *impls: Any) -> Flow:
    flow = create_flow(name)
    for i, impl in enumerate(impls):
        flow.node(f"n{i}", impl)
        if i:
            flow.edge(f"n{i - 1}", f"n{i}")
    return flow


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The name of every function handed to a worker thread."""
    seen: list[str] = []
    submit = _threads._Pool.submit

    def counting(pool: _threads._Pool, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        seen.append(getattr(fn, "__name__", repr(fn)))
        return submit(pool, fn, args)

    monkeypatch.setattr(_threads._Pool, "submit", counting)
    yield seen


async def test_a_chain_of_sync_nodes_takes_one_thread_hop(hops: list[str]) -> None:
    threads: set[int] = set()

    def step(ctx: NodeContext) -> int:
        threads.add(threading.get_ident())
        return (ctx.input or 0) + 1

    result = await chain("sync-chain", *[step] * 20).run(FlowRuntime())
    assert result.status == "completed"
    assert result.context["_outputs.n19"] == 20
    assert len(hops) == 1
    assert threading.get_ident() not in threads


async def test_a_chain_stops_at_nodes_that_need_the_loop(hops: list[str]) -> None:
    async def async_inc(ctx: NodeContext) -> int:
        return (ctx.input or 0) + 1

    flow = chain("mixed", inc, inc, async_inc, inc, inc)
    flow.node("retried", inc, config={"maxRetries": 2}).edge("n4", "retried")
    flow.node("last", inc).edge("retried", "last")
    result = await flow.run(FlowRuntime())
    assert result.status == "completed"
    assert result.context["_outputs.last"] == 7
    # n0-n1 in one hop, n3-n4 in one, then the retried node and the last one a hop each.
    assert len(hops) == 4


async def test_sync_nodes_under_middleware_or_live_listeners_hop_one_by_one(
    hops: list[str],
) -> None:
    finished: list[str] = []
    seen_by: dict[str, list[str]] = {}

    def record(ctx: NodeContext) -> None:
        seen_by[ctx.node_id] = list(finished)

    bus = EventBus()
    bus.subscribe(lambda e: finished.append(e.payload["nodeId"]), ["node:finish"])
    result = await chain("watched", record, record, record).run(FlowRuntime(event_bus=bus))
    assert result.status == "completed"
    # A listener sees each node finish before the next one runs.
    assert seen_by == {"n0": [], "n1": ["n0"], "n2": ["n0", "n1"]}
    assert len(hops) == 3


async def test_blocking_sync_chain_leaves_the_loop_free() -> None:
    unblocked = threading.Event()

    def waits(ctx: NodeContext) -> bool:
        # Set by an async node on the loop: deadlocks (till the guard) if the loop is blocked.
        return unblocked.wait(timeout=10)

    async def unblock(ctx: NodeContext) -> None:
        unblocked.set()

    flow = chain("blocking", inc, waits, inc).node("side", unblock)
    result = await flow.run(FlowRuntime())
    assert result.status == "completed"
    assert result.context["_outputs.n1"] is True


async def test_chained_nodes_get_the_callers_context_variables_each_in_a_copy() -> None:
    seen: list[str] = []

    def read_and_write(ctx: NodeContext) -> None:
        seen.append(_request.get())
        _request.set(ctx.node_id)

    token = _request.set("req-1")
    try:
        result = await chain("ctxvars", *[read_and_write] * 3).run(FlowRuntime())
    finally:
        _request.reset(token)
    assert result.status == "completed"
    assert seen == ["req-1", "req-1", "req-1"]


async def test_a_failure_inside_a_chain_stops_it_and_its_fallback_takes_over() -> None:
    ran: list[str] = []

    def step(ctx: NodeContext) -> int:
        ran.append(ctx.node_id)
        if ctx.node_id == "n2":
            raise ValueError("bad")
        return (ctx.input or 0) + 1

    def rescue(ctx: NodeContext) -> int:
        ran.append("rescue")
        return 100 + ctx.input

    flow = create_flow("rescued").node("n0", step).node("n1", step)
    flow.node("n2", step, config={"fallback": "rescue"}).node("n3", step).node("n4", step)
    flow.node("rescue", rescue)
    flow.edge("n0", "n1").edge("n1", "n2").edge("n2", "n3").edge("n3", "n4")
    result = await flow.run(FlowRuntime())
    assert result.status == "completed"
    assert ran == ["n0", "n1", "n2", "rescue", "n3", "n4"]
    assert result.context["_outputs.n2"] == 102
    assert result.context["_outputs.n4"] == 104

    failing = await chain("failing", inc, step, step, inc, inc).run(FlowRuntime())
    assert failing.status == "failed"
    (error,) = failing.errors
    assert error.node_id == "n2"
    assert "bad" in error.message
    assert "_outputs.n1" in failing.context
    assert "_outputs.n2" not in failing.context
    assert "_outputs.n3" not in failing.context


class _ThreadSignal:
    """A cancel signal a sync node can set from its thread."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def is_set(self) -> bool:
        return self.event.is_set()


async def test_cancelling_during_a_chain_runs_no_further_node() -> None:
    signal = _ThreadSignal()
    ran: list[str] = []

    def step(ctx: NodeContext) -> None:
        ran.append(ctx.node_id)
        if ctx.node_id == "n2":
            signal.event.set()

    result = await chain("cancelled", *[step] * 6).run(FlowRuntime(), signal=signal)
    assert result.status == "cancelled"
    assert ran == ["n0", "n1", "n2"]
    # What ran before the cancellation is kept, as when each node hops on its own.
    assert [k for k in result.context if k.startswith("_outputs.")] == [
        "_outputs.n0",
        "_outputs.n1",
        "_outputs.n2",
    ]


async def test_cancelling_a_running_chain_keeps_the_nodes_it_finished() -> None:
    started, release = threading.Event(), threading.Event()

    def step(ctx: NodeContext) -> None:
        if ctx.node_id == "n2":
            started.set()
            release.wait(timeout=10)

    runtime = FlowRuntime()
    run = asyncio.ensure_future(chain("stopped", *[step] * 5).run(runtime, run_id="r1"))
    try:
        assert await asyncio.to_thread(started.wait, 10)
        assert runtime.cancel("r1")
        result = await run
    finally:
        release.set()
    assert result.status == "cancelled"
    outputs = [k for k in result.context if k.startswith("_outputs.")]
    assert outputs == ["_outputs.n0", "_outputs.n1"]


async def test_a_sync_function_returning_an_awaitable_ends_its_chain() -> None:
    async def later(value: int) -> int:
        return value + 10

    def deferred(ctx: NodeContext) -> Any:
        return later(ctx.input)

    result = await chain("deferred", inc, deferred, inc).run(FlowRuntime())
    assert result.status == "completed"
    assert result.context["_outputs.n1"] == 11
    assert result.context["_outputs.n2"] == 12


async def test_listeners_of_other_events_leave_chains_in_one_hop(hops: list[str]) -> None:
    events: list[str] = []
    bus = EventBus()
    bus.subscribe(lambda e: events.append(e.type), ["workflow:start", "workflow:finish"])
    result = await chain("quiet", inc, inc, inc).run(FlowRuntime(event_bus=bus))
    assert result.status == "completed"
    assert events == ["workflow:start", "workflow:finish"]
    assert len(hops) == 1


async def test_inline_nodes_run_on_the_event_loop(hops: list[str]) -> None:
    threads: dict[str, int] = {}

    @inline
    def cheap(ctx: NodeContext) -> int:
        threads[ctx.node_id] = threading.get_ident()
        return (ctx.input or 0) + 1

    @inline
    class Cheap(Node):
        def exec(self, prep_result: Any, ctx: NodeContext) -> int:
            threads[ctx.node_id] = threading.get_ident()
            return int(prep_result or 0) + 1

    flow = chain("inline", cheap, Cheap, cheap)
    flow.node("retried", cheap, config={"maxRetries": 2, "timeout": 1000}).edge("n2", "retried")
    result = await flow.run(FlowRuntime())
    assert result.status == "completed"
    assert result.context["_outputs.retried"] == 4
    assert set(threads.values()) == {threading.get_ident()}
    assert hops == []


async def test_inline_marks_a_single_phase() -> None:
    threads: dict[str, int] = {}

    class Mixed(Node):
        @inline
        def prep(self, ctx: NodeContext) -> Any:
            threads["prep"] = threading.get_ident()
            return ctx.input

        def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
            threads["exec"] = threading.get_ident()
            return prep_result

    result = await create_flow("phase").node("m", Mixed).run(FlowRuntime())
    assert result.status == "completed"
    assert threads["prep"] == threading.get_ident()
    assert threads["exec"] != threading.get_ident()


def test_inline_refuses_what_cannot_be_marked() -> None:
    class Holder:
        def method(self, ctx: NodeContext) -> None:
            return None

    with pytest.raises(TypeError, match="wrap it in a def"):
        inline(Holder().method)
