"""Regression tests for the TypeScript defects listed in reference-behaviour.md §12.1 (items 1-30).

Each ``test_defect_<n>_...`` quotes what the reference does and states what we do instead
(design.md wins where the two disagree). A few numbers have a second test for a defect of
*our* core in the same area, found while writing these tests (nested loops, a fallback shared
by several primaries, a rejected expression, a false UNSATISFIABLE_JOIN warning); each was
fixed in the core, and the test guards the fix.

Omitted numbers:

* 27 (``replay`` forces ``completed`` and invents ``node-<i>`` awaiting ids; ``replayFrom``
  re-executes ancestors): there is no replay / replayFrom API in this implementation, and no
  event-sourced state rebuild to test.

Numbers that concern something we deliberately do not have are still tested where a different
behaviour can be shown: 13 (no ``error`` result field: failure is raised), 20 (no unsafe
evaluator: the only evaluator is the AST whitelist), 30 (no ``strict`` option or
``requestPause``: unknown options are rejected instead of silently ignored, and loops always run).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest

from flowcraft import (
    Blueprint,
    ExpressionError,
    FlowcraftError,
    FlowRuntime,
    Middleware,
    Node,
    NodeContext,
    NodeExecutionError,
    NodeResult,
    NodeTimeoutError,
    SafeEvaluator,
    SerializationError,
    WorkflowResult,
    create_flow,
    lint_blueprint,
    load_blueprint,
    to_mermaid,
)
from flowcraft.events import EventBus, FlowEvent
from flowcraft.flow import uses_key_for
from flowcraft.serializer import JsonSerializer

# --------------------------------------------------------------------------- helpers


_NO_VALUE: Any = object()


def _node(
    node_id: str, uses: str = "mark", value: Any = _NO_VALUE, **fields: Any
) -> dict[str, Any]:
    """A node definition; ``value`` is shorthand for ``params.value``."""
    node = {"id": node_id, "uses": uses, **fields}
    if value is not _NO_VALUE:
        node["params"] = {**node.get("params", {}), "value": value}
    return node


def _edge(source: str, target: str, **fields: Any) -> dict[str, Any]:
    return {"source": source, "target": target, **fields}


def _blueprint(
    blueprint_id: str,
    nodes: Sequence[Mapping[str, Any]],
    edges: Sequence[Mapping[str, Any]] = (),
    **extra: Any,
) -> Blueprint:
    return load_blueprint({"id": blueprint_id, "nodes": list(nodes), "edges": list(edges), **extra})


def _outputs(result: WorkflowResult) -> set[str]:
    return {k.removeprefix("_outputs.") for k in result.context if k.startswith("_outputs.")}


class Tracker:
    """Registry of recording nodes: every call appends its node id to ``ran``.

    ``mark`` outputs ``params.value`` (default: the node id); ``echo`` outputs its input;
    ``choose`` outputs ``params.value`` with action ``params.action``; ``boom`` raises;
    ``slow`` sleeps ``params.delay`` seconds, then outputs ``params.value`` (with action
    ``params.action``); ``count``
    increments the context key ``params.key`` and outputs the new value.
    """

    def __init__(self) -> None:
        self.ran: list[str] = []

    async def mark(self, ctx: NodeContext) -> Any:
        self.ran.append(ctx.node_id)
        return ctx.params.get("value", ctx.node_id)

    async def echo(self, ctx: NodeContext) -> Any:
        self.ran.append(ctx.node_id)
        return ctx.input

    async def choose(self, ctx: NodeContext) -> NodeResult:
        self.ran.append(ctx.node_id)
        return NodeResult(output=ctx.params.get("value"), action=ctx.params.get("action"))

    async def boom(self, ctx: NodeContext) -> None:
        self.ran.append(ctx.node_id)
        raise RuntimeError(str(ctx.params.get("message", f"{ctx.node_id} failed")))

    async def slow(self, ctx: NodeContext) -> NodeResult:
        await asyncio.sleep(float(ctx.params.get("delay", 0.01)))
        self.ran.append(ctx.node_id)
        value = ctx.params.get("value", ctx.node_id)
        return NodeResult(output=value, action=ctx.params.get("action"))

    async def count(self, ctx: NodeContext) -> int:
        self.ran.append(ctx.node_id)
        key = str(ctx.params.get("key", "n"))
        value = int(await ctx.context.get(key, 0)) + 1
        await ctx.context.set(key, value)
        return value

    @property
    def registry(self) -> dict[str, Any]:
        return {
            "mark": self.mark,
            "echo": self.echo,
            "choose": self.choose,
            "boom": self.boom,
            "slow": self.slow,
            "count": self.count,
        }

    def runtime(self, **options: Any) -> FlowRuntime:
        return FlowRuntime(registry=self.registry, **options)


def _approval_blueprint() -> Blueprint:
    return _blueprint(
        "approval",
        [
            _node("draft", value="text"),
            _node("review", "wait"),
            _node("publish", "echo"),
            _node("discard"),
            _node("audit"),
        ],
        [
            _edge("draft", "review"),
            _edge("review", "publish", action="approve"),
            _edge("review", "discard", action="reject"),
            _edge("review", "audit"),
        ],
    )


def _events(bus: EventBus, kinds: Sequence[str] | None = None) -> list[FlowEvent]:
    seen: list[FlowEvent] = []
    bus.subscribe(seen.append, kinds)  # type: ignore[arg-type]
    return seen


# --------------------------------------------------------------------------- 1-5


async def test_defect_1_resume_routes_by_action() -> None:
    """Reference: "Resume drops the action — routing uses the output only; action-routed HITL
    branches never run and the run says `completed`" (§6.4 step 4).

    Ours (design.md 1, 11): "Routing uses the whole node result (output and action) everywhere,
    including resume" — the resume action selects the matching action edges; default edges are
    followed only when no action edge matches.
    """
    tracker = Tracker()
    runtime = tracker.runtime()
    blueprint = _approval_blueprint()
    paused = await runtime.run(blueprint)
    assert paused.status == "awaiting"
    assert tracker.ran == ["draft"]

    tracker.ran.clear()
    approved = await runtime.resume(
        blueprint, paused.serialized_context, {"output": "final", "action": "approve"}
    )
    assert approved.status == "completed", approved.errors
    assert tracker.ran == ["publish"]
    assert approved.context["_outputs.publish"] == "final"

    tracker.ran.clear()
    rejected = await runtime.resume(blueprint, paused.serialized_context, {"action": "reject"})
    assert rejected.status == "completed", rejected.errors
    assert tracker.ran == ["discard"]

    tracker.ran.clear()
    other = await runtime.resume(blueprint, paused.serialized_context, {"action": "later"})
    assert other.status == "completed", other.errors
    assert tracker.ran == ["audit"]


async def test_defect_2_unmatched_action_targets_never_run() -> None:
    """Reference: "Unmatched action targets run anyway via the 'no edge selected' rule" — when
    a node selects no edge, every successor without a conditional edge is scheduled (§4.6).

    Ours (design.md 2): an edge not taken marks its target's path skipped; nothing downstream
    of an untaken action edge runs, whether the node returned another action or none at all.
    """
    tracker = Tracker()
    blueprint = _blueprint(
        "actions",
        [
            _node("pick", "choose", params={"action": "left"}),
            _node("left"),
            _node("right"),
            _node("right2"),
            _node("silent", "choose"),
            _node("only_a"),
            _node("only_b"),
        ],
        [
            _edge("pick", "left", action="left"),
            _edge("pick", "right", action="right"),
            _edge("right", "right2"),
            _edge("pick", "silent", action="left"),
            _edge("silent", "only_a", action="a"),
            _edge("silent", "only_b", action="b"),
        ],
    )
    result = await tracker.runtime().run(blueprint)
    assert result.status == "completed", result.errors
    assert sorted(tracker.ran) == ["left", "pick", "silent"]
    assert _outputs(result) == {"pick", "left", "silent"}


async def test_defect_3_loop_without_exit_edge_terminates() -> None:
    """Reference: "Loops without an exit edge never terminate (same rule re-schedules the body
    after `break`) until the 10,000-tick cap raises."

    Ours (design.md 3): "Loops terminate by their condition" — a controller whose condition
    turns false with no exit edge simply ends that path; the run completes.
    """
    tracker = Tracker()
    blueprint = _blueprint(
        "exitless",
        [
            _node("body", "count", params={"key": "n"}),
            _node(
                "repeat",
                "loop-controller",
                params={"condition": "n < 3"},
                config={"joinStrategy": "any"},
            ),
        ],
        [
            _edge("body", "repeat"),
            _edge("repeat", "body", action="continue", transform='context["body"]'),
        ],
    )
    result = await asyncio.wait_for(tracker.runtime().run(blueprint, {"n": 0}), 5)
    assert result.status == "completed", result.errors
    assert result.context["n"] == 3
    assert tracker.ran == ["body", "body", "body"]


async def test_defect_3_nested_loops_run_every_outer_iteration() -> None:
    """Reference: loops misbehave in several ways (defects 3, 19). Ours (design.md 2, 3): each
    loop terminates by its own condition, also when nested, and a run never reports
    ``completed`` with work left."""
    tracker = Tracker()
    blueprint = _blueprint(
        "nested",
        [
            _node("init"),
            _node("outer", "count", params={"key": "o"}),
            _node("inner", "count", params={"key": "k"}),
            _node("after_inner"),
            _node("tally", "count", params={"key": "rounds"}),
            _node(
                "inner_loop",
                "loop-controller",
                params={"condition": "k < 2 * o"},
                config={"joinStrategy": "any"},
            ),
            _node(
                "outer_loop",
                "loop-controller",
                params={"condition": "o < 3"},
                config={"joinStrategy": "any"},
            ),
            _node("done"),
        ],
        [
            _edge("inner_loop", "after_inner", action="break"),
            _edge("outer_loop", "done", action="break"),
            _edge("init", "outer_loop"),
            _edge("outer_loop", "outer", action="continue"),
            _edge("outer", "inner_loop"),
            _edge("inner_loop", "inner", action="continue"),
            _edge("inner", "inner_loop"),
            _edge("after_inner", "tally"),
            _edge("tally", "outer_loop"),
        ],
    )
    result = await asyncio.wait_for(tracker.runtime().run(blueprint, {"o": 0, "k": 0}), 5)
    assert result.status == "completed", result.errors
    assert result.context["o"] == 3
    assert result.context["k"] == 6
    assert tracker.ran.count("after_inner") == 3
    assert "done" in tracker.ran


async def test_defect_4_join_after_exclusive_branches_fires_and_stall_is_reported() -> None:
    """Reference: "Joins after exclusive branches never fire, yet the run reports `completed`;
    `stalled` is reachable practically only through `_targetNode`."

    Ours (design.md 2): dead-path elimination — an ``all`` join fires once every predecessor
    completed or was skipped (at least one completed) and gets only the taken branches' outputs;
    a run is ``stalled`` exactly when a join got some but not all of what it needs and nothing
    can make progress.
    """
    tracker = Tracker()
    blueprint = _blueprint(
        "dpe",
        [
            _node("pick", "choose", params={"action": "a", "value": 1}),
            _node("a", value="A"),
            _node("b", value="B"),
            _node("b2", value="B2"),
            _node("join", "echo"),
        ],
        [
            _edge("pick", "a", action="a"),
            _edge("pick", "b", action="b"),
            _edge("b", "b2"),
            _edge("a", "join"),
            _edge("b2", "join"),
        ],
    )
    result = await tracker.runtime().run(blueprint)
    assert result.status == "completed", result.errors
    assert result.context["_outputs.join"] == {"a": "A"}
    assert "b" not in tracker.ran and "b2" not in tracker.ran

    # 'c' and 'd' form a cycle no start node leads into: 'join' can never get both inputs.
    stuck = _blueprint(
        "stuck",
        [_node("a"), _node("c"), _node("d"), _node("join", "echo")],
        [_edge("a", "join"), _edge("c", "join"), _edge("d", "c"), _edge("c", "d")],
    )
    tracker.ran.clear()
    result = await tracker.runtime().run(stuck)
    assert result.status == "stalled"
    assert tracker.ran == ["a"]


async def test_defect_5_rescued_failure_does_not_mask_other_failures() -> None:
    """Reference: "An executed fallback masks unrelated failures (status `completed` with
    errors)" — any executed fallback forces ``completed``.

    Ours (design.md 5): "a run whose failure was rescued by a fallback is `completed` only if
    nothing else failed"; a rescued failure is not reported as an error.
    """
    tracker = Tracker()
    nodes = [
        _node("start"),
        _node("primary", "boom", config={"fallback": "rescue"}),
        _node("rescue", value="rescued"),
        _node("other", "boom"),
    ]
    edges = [_edge("start", "primary"), _edge("start", "other")]
    result = await tracker.runtime().run(_blueprint("masked", nodes, edges))
    assert result.status == "failed"
    assert [e.node_id for e in result.errors] == ["other"]

    alone = _blueprint("rescued", nodes[:3], edges[:1])
    result = await tracker.runtime().run(alone)
    assert result.status == "completed"
    assert result.errors == []
    assert result.context["_outputs.primary"] == "rescued"


async def test_defect_5_shared_fallback_routes_only_for_its_rescued_primary() -> None:
    """Reference: a fallback inherits its primary's outgoing edges (§4.4). Ours (design.md 5):
    a fallback runs only for the node that failed for good, so it may stand in for that node's
    edges only; the other primary routes by its own result."""
    tracker = Tracker()
    blueprint = _blueprint(
        "shared-fallback",
        [
            _node("start"),
            _node("a", "boom", config={"fallback": "handler"}),
            _node(
                "b",
                "slow",
                params={"delay": 0.05, "value": "B", "action": "x"},
                config={"fallback": "handler"},
            ),
            _node("handler", value="handled"),
            _node("after_a", "echo"),
            _node("b_chosen", "echo"),
            _node("b_default", "echo"),
        ],
        [
            _edge("start", "a"),
            _edge("start", "b"),
            _edge("a", "after_a"),
            _edge("b", "b_chosen", action="x"),
            _edge("b", "b_default"),
        ],
    )
    result = await tracker.runtime().run(blueprint)
    assert result.status == "completed", result.errors
    assert result.context["_outputs.after_a"] == "handled"
    assert "b_default" not in tracker.ran
    assert result.context["_outputs.b_chosen"] == "B"


async def test_defect_5_shared_fallback_runs_once_per_failed_primary() -> None:
    """Ours (semantics.md, Resilience): when several primaries of one fallback fail, the
    fallback stands in for each separately — once per primary, with that primary's input,
    storing its output as that primary's and routing along that primary's edges only."""
    tracker = Tracker()
    blueprint = _blueprint(
        "shared-fallback-both",
        [
            _node("start"),
            _node("a", "boom", config={"fallback": "handler"}),
            _node("b", "boom", config={"fallback": "handler"}),
            _node("handler", "echo"),
            _node("after_a", "echo"),
            _node("after_b", "echo"),
            _node("join", "echo"),
        ],
        [
            _edge("start", "a", transform='"for a"'),
            _edge("start", "b", transform='"for b"'),
            _edge("a", "after_a"),
            _edge("b", "after_b"),
            _edge("after_a", "join"),
            _edge("after_b", "join"),
        ],
    )
    result = await tracker.runtime().run(blueprint)
    assert result.status == "completed", result.errors
    assert tracker.ran.count("handler") == 2
    assert result.context["_outputs.a"] == "for a"
    assert result.context["_outputs.b"] == "for b"
    assert result.context["_outputs.join"] == {"after_a": "for a", "after_b": "for b"}


# --------------------------------------------------------------------------- 6-10


async def test_defect_6_resume_does_not_resurrect_untaken_branches_or_fallbacks() -> None:
    """Reference: "Resume resurrects nodes: untaken action branches and never-used fallback
    nodes are scheduled" (§6.4 step 6: the frontier is rebuilt from `_outputs.*`).

    Ours (design.md 1, 2): the scheduler state is saved in the paused context (``_runState``),
    so resume continues exactly where the run stopped. A context without it (written by the
    TypeScript runtime) is rebuilt from ``_outputs.*`` and still never schedules untaken action
    branches or unused fallbacks.
    """
    tracker = Tracker()
    blueprint = _blueprint(
        "resurrect",
        [
            _node("pick", "choose", params={"action": "x"}),
            _node("x", config={"fallback": "spare"}),
            _node("spare"),
            _node("y"),
            _node("y2"),
            _node("gate", "wait"),
            _node("after", "echo"),
        ],
        [
            _edge("pick", "x", action="x"),
            _edge("pick", "y", action="y"),
            _edge("y", "y2"),
            _edge("x", "gate"),
            _edge("gate", "after"),
        ],
    )
    runtime = tracker.runtime()
    paused = await runtime.run(blueprint)
    assert paused.status == "awaiting"
    assert "_runState" in paused.context

    states: dict[str, Any] = {"saved": paused.serialized_context}
    from_ts = json.loads(paused.serialized_context)
    del from_ts["_runState"]
    states["derived"] = from_ts
    for name, state in states.items():
        tracker.ran.clear()
        done = await runtime.resume(blueprint, state, {"output": "go"})
        assert done.status == "completed", (name, done.errors)
        assert tracker.ran == ["after"], name
        assert _outputs(done) == {"pick", "x", "gate", "after"}, name


async def test_defect_7_resume_keeps_other_waits_awaiting() -> None:
    """Reference: "Resume forces `completed` when the resumed node selects no edge, even with
    other nodes still awaiting."

    Ours: the status is computed from the whole run — while another node awaits, the run stays
    ``awaiting`` with only that node listed.
    """
    tracker = Tracker()
    blueprint = _blueprint(
        "two-waits",
        [_node("start"), _node("w1", "wait"), _node("w2", "wait"), _node("after_w2", "echo")],
        [_edge("start", "w1"), _edge("start", "w2"), _edge("w2", "after_w2")],
    )
    runtime = tracker.runtime()
    paused = await runtime.run(blueprint)
    assert sorted(paused.context["_awaitingNodeIds"]) == ["w1", "w2"]

    half = await runtime.resume(blueprint, paused.serialized_context, {"action": "none"}, "w1")
    assert half.status == "awaiting"
    assert half.context["_awaitingNodeIds"] == ["w2"]
    assert list(half.context["_awaitingDetails"]) == ["w2"]

    done = await runtime.resume(blueprint, half.serialized_context, {"output": 2}, "w2")
    assert done.status == "completed", done.errors
    assert done.context["_outputs.after_w2"] == 2


async def test_defect_8_subflow_resume_resumes_child_and_applies_outputs() -> None:
    """Reference: "Subflow resume works only for `uses: 'SubflowNode'`; with the documented
    `subflow` key the child is abandoned and the human payload becomes the node output;
    `outputs` mapping never applied on resume."

    Ours: the built-in ``subflow`` key resumes the paused child with the resume data (its
    action routes inside the child), then applies ``outputs`` as on a normal completion.
    """
    tracker = Tracker()
    child = _blueprint(
        "child",
        [_node("prep"), _node("ok", "wait"), _node("final", "echo"), _node("refused")],
        [
            _edge("prep", "ok"),
            _edge("ok", "final", action="approve"),
            _edge("ok", "refused", action="reject"),
        ],
    )
    parent = _blueprint(
        "parent",
        [
            _node("start"),
            _node(
                "sub",
                "subflow",
                params={"blueprintId": "child", "outputs": {"childResult": "final"}},
            ),
            _node("after", "echo"),
        ],
        [_edge("start", "sub"), _edge("sub", "after")],
    )
    runtime = tracker.runtime(blueprints={"child": child})
    paused = await runtime.run(parent)
    assert paused.status == "awaiting"
    assert paused.context["_awaitingNodeIds"] == ["sub"]

    tracker.ran.clear()
    done = await runtime.resume(
        parent, paused.serialized_context, {"output": "payload", "action": "approve"}
    )
    assert done.status == "completed", done.errors
    assert tracker.ran == ["final", "after"]
    assert done.context["childResult"] == "payload"
    assert done.context["_outputs.sub"] == {"childResult": "payload"}
    assert done.context["_outputs.after"] == {"childResult": "payload"}
    assert "_subflowState.sub" not in done.context


async def test_defect_9_scheduler_resumes_from_latest_state_once() -> None:
    """Reference: "Scheduler re-runs stale state every tick for runs that pause again (side
    effects repeat); later timers never registered; unbounded maps; ... requires registry
    blueprints" (a middle node of a two-sleep flow ran 13 times in 0.4 s and never finished).

    Ours: each run is keyed by its id and always resumed from the state its last step produced;
    the next timer is registered when the run pauses again; finished runs are dropped; the
    blueprint is kept with the entry, so no ``blueprints=`` registration is needed.
    """
    tracker = Tracker()
    blueprint = _blueprint(
        "naps",
        [
            _node("first"),
            _node("nap1", "sleep", params={"duration": "1h"}),
            _node("middle"),
            _node("nap2", "sleep", params={"duration": "2h"}),
            _node("last"),
        ],
        [
            _edge("first", "nap1"),
            _edge("nap1", "middle"),
            _edge("middle", "nap2"),
            _edge("nap2", "last"),
        ],
    )
    runtime = tracker.runtime()
    paused = await runtime.run(blueprint)
    assert paused.status == "awaiting"
    scheduler = runtime.scheduler
    assert list(scheduler.pending) == [paused.run_id]
    assert await scheduler.tick() == 0  # not due yet

    later = datetime.now(UTC) + timedelta(days=1)
    waiter = asyncio.ensure_future(scheduler.wait(paused.run_id, timeout=5))
    assert await scheduler.tick(later) == 1
    assert tracker.ran == ["first", "middle"]
    assert scheduler.pending[paused.run_id] > datetime.now(UTC) + timedelta(hours=1)
    assert await scheduler.tick(later) == 1
    assert tracker.ran == ["first", "middle", "last"]
    assert scheduler.pending == {}
    assert await scheduler.tick(later + timedelta(days=1)) == 0
    result = await waiter
    assert result.status == "completed"
    assert result.context["_outputs.last"] == "last"


async def test_defect_10_chunked_batch_keeps_order_and_cleans_up() -> None:
    """Reference: "Chunked batches crash; fixed `<gather>_scatter_next` id; ... undefined
    outputs dropped (misaligned results); `_batch.*` keys never deleted."

    Ours: chunks run one after another, results stay aligned with the items (``None`` for a
    worker without output) and the ``_batch.*`` item keys are removed by the gather.
    """
    active = 0
    peak = 0

    async def worker(ctx: NodeContext) -> int | None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.002)
        active -= 1
        return None if ctx.input == 3 else int(ctx.input) * 10

    async def items(ctx: NodeContext) -> list[int]:
        return [1, 2, 3, 4, 5]

    blueprint = _blueprint(
        "chunks",
        [
            _node("items", "items"),
            _node(
                "w_scatter",
                "batch-scatter",
                inputs="items",
                params={
                    "workerUsesKey": "worker",
                    "gatherNodeId": "w_gather",
                    "outputKey": "results",
                    "chunkSize": 2,
                },
            ),
            _node(
                "w_gather",
                "batch-gather",
                params={"gatherNodeId": "w_gather", "outputKey": "results"},
                config={"joinStrategy": "all"},
            ),
        ],
        [_edge("items", "w_scatter"), _edge("w_scatter", "w_gather")],
    )
    runtime = FlowRuntime(registry={"worker": worker, "items": items})
    result = await runtime.run(blueprint)
    assert result.status == "completed", result.errors
    assert result.context["results"] == [10, 20, None, 40, 50]
    assert result.context["_outputs.w_gather"] == [10, 20, None, 40, 50]
    assert 1 <= peak <= 2
    assert not [k for k in result.context if k.startswith("_batch.")]
    assert not [k for k in result.context if "scatter_next" in k or "currentIndex" in k]


async def test_defect_10_batch_inside_loop_runs_every_iteration() -> None:
    """Reference: "index/worker-list keys never reset (batch in a loop does nothing on later
    iterations)".

    Ours: each iteration scatters its own items and gathers their results.
    """

    async def items(ctx: NodeContext) -> list[int]:
        round_ = int(await ctx.context.get("round", 0)) + 1
        await ctx.context.set("round", round_)
        return [round_ * 10 + i for i in range(3)]

    async def plus_one(ctx: NodeContext) -> int:
        return int(ctx.input) + 1

    async def keep(ctx: NodeContext) -> Any:
        history = list(await ctx.context.get("history", []))
        await ctx.context.set("history", [*history, ctx.input])
        return ctx.input

    flow = (
        create_flow("batch-loop")
        .node("start", lambda ctx: None)
        .node("items", items)
        .batch("b", plus_one, input_key="items", output_key="latest", chunk_size=2)
        .node("keep", keep)
        .edge("items", "b")
        .edge("b", "keep")
        .loop("again", start_node_id="items", end_node_id="keep", condition="round < 3")
        .edge("start", "again")
    )
    result = await flow.run(FlowRuntime(), {"round": 0})
    assert result.status == "completed", result.errors
    assert result.context["history"] == [[11, 12, 13], [21, 22, 23], [31, 32, 33]]
    assert result.context["latest"] == [31, 32, 33]


# --------------------------------------------------------------------------- 11-15


async def test_defect_11_max_retries_zero_retry_delay_and_timeout() -> None:
    """Reference: "`maxRetries: 0` never runs the node; `retryDelay` and `timeout`
    unimplemented (tight retry loop, no node or run timeout)."

    Ours (design.md 4, Keep): ``maxRetries`` is the total number of attempts "but at least one
    attempt always runs"; ``retryDelay`` is the base of an exponential back-off; ``timeout``
    bounds each attempt (``NodeTimeoutError``).
    """
    calls: dict[str, int] = {}

    async def flaky(ctx: NodeContext) -> int:
        calls[ctx.node_id] = calls.get(ctx.node_id, 0) + 1
        if calls[ctx.node_id] <= int(ctx.params.get("failures", 0)):
            raise RuntimeError(f"attempt {calls[ctx.node_id]}")
        return calls[ctx.node_id]

    async def hang(ctx: NodeContext) -> None:
        calls[ctx.node_id] = calls.get(ctx.node_id, 0) + 1
        await asyncio.sleep(10)

    runtime = FlowRuntime(registry={"flaky": flaky, "hang": hang})
    zero = _blueprint("zero", [_node("once", "flaky", config={"maxRetries": 0})])
    result = await runtime.run(zero)
    assert result.status == "completed" and calls["once"] == 1

    delayed = _blueprint(
        "delay",
        [_node("d", "flaky", params={"failures": 2}, config={"maxRetries": 3, "retryDelay": 30})],
    )
    started = time.monotonic()
    result = await runtime.run(delayed)
    assert result.status == "completed" and calls["d"] == 3
    assert time.monotonic() - started >= 0.085  # 30 ms + 60 ms

    timed = _blueprint("timeout", [_node("t", "hang", config={"timeout": 30, "maxRetries": 2})])
    started = time.monotonic()
    result = await runtime.run(timed)
    assert time.monotonic() - started < 2
    assert result.status == "failed" and calls["t"] == 2
    assert isinstance(result.errors[0], NodeTimeoutError)
    assert result.errors[0].node_id == "t"


async def test_defect_12_around_node_can_replace_and_rescue_a_result() -> None:
    """Reference: "aroundNode cannot replace or rescue a result after calling `next()`" — once
    `next()` was called the inner outcome stands whatever the hook returns.

    Ours (middleware docs): an ``around_node`` hook may return a different result than
    ``next()`` gave, or catch the error ``next()`` raised and return a result instead.
    """

    class Replace(Middleware):
        async def around_node(self, ctx: NodeContext, node_id: str, next: Any) -> Any:
            try:
                result = await next()
            except FlowcraftError as exc:
                return NodeResult(output=f"rescued {exc.node_id}", action="rescued")
            return NodeResult(output=f"<{result.output}>", action=result.action)

    tracker = Tracker()
    blueprint = _blueprint(
        "around",
        [_node("ok", value="v"), _node("bad", "boom"), _node("after_bad", "echo")],
        [_edge("bad", "after_bad", action="rescued")],
    )
    result = await tracker.runtime(middleware=[Replace()]).run(blueprint)
    assert result.status == "completed", result.errors
    assert result.context["_outputs.ok"] == "<v>"
    assert result.context["_outputs.bad"] == "rescued bad"
    assert result.context["_outputs.after_bad"] == "<rescued bad>"


async def test_defect_13_failure_is_raised_never_returned_as_success() -> None:
    """Reference: "A returned `error` field counts as success" — a node result carrying
    ``error`` is stored and routed like any success.

    Ours: there is no ``error`` field in :class:`NodeResult`; a node fails by raising, and a
    raised exception always fails it (its successors do not run, the run is ``failed``, the
    user's exception is the error's ``__cause__``).
    """
    assert "error" not in NodeResult.__dataclass_fields__
    tracker = Tracker()
    blueprint = _blueprint(
        "raise",
        [_node("bad", "boom", params={"message": "nope"}), _node("after")],
        [_edge("bad", "after")],
    )
    result = await tracker.runtime().run(blueprint)
    assert result.status == "failed"
    assert tracker.ran == ["bad"]
    error = result.errors[0]
    assert isinstance(error, NodeExecutionError) and error.node_id == "bad"
    assert isinstance(error.__cause__, RuntimeError) and str(error.__cause__) == "nope"
    assert "_outputs.bad" not in result.context


async def test_defect_14_cancellation_keeps_progress_and_finishes_once() -> None:
    """Reference: "Cancellation discards all progress, double `workflow:finish`; unrelated
    exceptions emit `workflow:finish(cancelled)` before re-raising."

    Ours (design.md 16, 9): a cancelled run returns ``cancelled`` with the progress made so far
    and emits exactly one ``workflow:finish``; an invalid blueprint raises before any workflow
    event is emitted.
    """
    signal = asyncio.Event()

    async def trigger(ctx: NodeContext) -> None:
        signal.set()
        await asyncio.sleep(10)

    tracker = Tracker()
    registry = {**tracker.registry, "trigger": trigger}
    blueprint = _blueprint(
        "cancel",
        [_node("first"), _node("long", "trigger"), _node("never")],
        [_edge("first", "long"), _edge("long", "never")],
    )
    bus = EventBus()
    events = _events(bus, ["workflow:start", "workflow:finish", "workflow:pause"])
    runtime = FlowRuntime(registry=registry, event_bus=bus)
    result = await asyncio.wait_for(runtime.run(blueprint, signal=signal), 5)
    assert result.status == "cancelled"
    assert result.context["_outputs.first"] == "first"
    assert json.loads(result.serialized_context)["_outputs.first"] == "first"
    assert "never" not in tracker.ran
    finishes = [e.payload["status"] for e in events if e.type == "workflow:finish"]
    assert finishes == ["cancelled"]

    events.clear()
    with pytest.raises(FlowcraftError):
        await runtime.run({"id": "bad", "nodes": [{"id": "x"}]})
    assert events == []


async def test_defect_15_cancelled_in_an_error_message_does_not_cancel_the_run() -> None:
    """Reference: "Control flow by substring: any framework error mentioning 'cancelled'
    cancels the run."

    Ours: only the run's signal or ``cancel(run_id)`` cancels; a node error whose message says
    "cancelled" is an ordinary failure.
    """

    async def order_cancelled(ctx: NodeContext) -> None:
        raise FlowcraftError("order was cancelled by the customer")

    async def plain(ctx: NodeContext) -> None:
        raise RuntimeError("Workflow cancelled")

    runtime = FlowRuntime(registry={"fc": order_cancelled, "plain": plain})
    for uses in ("fc", "plain"):
        result = await runtime.run(_blueprint(f"msg-{uses}", [_node("n", uses)]))
        assert result.status == "failed", uses
        assert "cancelled" in result.errors[0].message


# --------------------------------------------------------------------------- 16-20


@pytest.mark.parametrize("slow_side", ["left", "right"])
async def test_defect_16_fan_in_input_is_deterministic(slow_side: str) -> None:
    """Reference: "Fan-in input is last-writer-wins by completion order" — a node with several
    incoming edges receives whichever predecessor wrote ``_inputs.X`` last.

    Ours (design.md 17): "a node with several predecessors and no `inputs` mapping receives
    `{predecessorId: output}` for the predecessors that completed", whatever the timing.
    """
    delays = {"left": 0.0, "right": 0.0, slow_side: 0.03}
    tracker = Tracker()
    blueprint = _blueprint(
        "fan-in",
        [
            _node("start"),
            _node("left", "slow", params={"delay": delays["left"], "value": "L"}),
            _node("right", "slow", params={"delay": delays["right"], "value": "R"}),
            _node("join", "echo"),
        ],
        [
            _edge("start", "left"),
            _edge("start", "right"),
            _edge("left", "join"),
            _edge("right", "join", transform="input + '!'"),
        ],
    )
    result = await tracker.runtime().run(blueprint)
    assert result.status == "completed", result.errors
    assert tracker.ran[-2] == slow_side  # the slow side really finished last
    assert result.context["_outputs.join"] == {"left": "L", "right": "R!"}


async def test_defect_17_transforms_never_mutate_the_blueprint() -> None:
    """Reference: "Blueprint mutation of `inputs` by transforms leaks into caller/registry
    blueprints (resume, adapters) and erases explicit mappings inside loops" (§4.5: the target's
    definition is mutated to ``inputs = "_inputs.T"``).

    Ours: blueprints are immutable; a transform decides the value of the hop it is on, and a
    node's explicit ``inputs`` mapping applies whenever it is entered through an edge without
    a transform — also on later loop iterations.
    """
    tracker = Tracker()
    blueprint = _blueprint(
        "no-mutation",
        [
            _node("init"),
            _node("step", "count", params={"key": "i"}),
            _node("odd"),
            _node("even"),
            _node("target", "echo", inputs={"mapped": "seed"}),
            _node(
                "again",
                "loop-controller",
                params={"condition": "i < 4"},
                config={"joinStrategy": "any"},
            ),
        ],
        [
            _edge("init", "again"),
            _edge("step", "odd", condition="result.output % 2 == 1"),
            _edge("step", "even", condition="result.output % 2 == 0"),
            _edge("odd", "target", transform="'from-transform'"),
            _edge("even", "target"),
            _edge("target", "again"),
            _edge("again", "step", action="continue", transform='context["target"]'),
        ],
    )
    before = blueprint.to_dict()
    seen: list[Any] = []
    for _ in range(2):
        tracker.ran.clear()
        result = await tracker.runtime().run(blueprint, {"i": 0, "seed": "S"})
        assert result.status == "completed", result.errors
        assert tracker.ran.count("target") == 4
        seen.append(result.context["_outputs.target"])
    assert blueprint.to_dict() == before
    assert seen[0] == seen[1] == {"mapped": "S"}  # the 4th (even) iteration used the mapping

    # Iteration by iteration: odd iterations take the transform, even ones the mapping.
    values: list[Any] = []

    async def record(ctx: NodeContext) -> Any:
        values.append(ctx.input)
        return ctx.input

    registry = {**tracker.registry, "echo": record}
    result = await FlowRuntime(registry=registry).run(blueprint, {"i": 0, "seed": "S"})
    assert result.status == "completed", result.errors
    assert len(values) == 4
    for odd in (values[0], values[2]):
        assert odd in ("from-transform", {"odd": "from-transform"})
    assert values[1] == values[3] == {"mapped": "S"}


async def test_defect_18_node_outputs_never_overwrite_user_keys() -> None:
    """Reference: "Namespace collisions: bare node-id output keys overwrite user keys;
    distributed mode omits them, so conditions differ between modes" (§4.3: outputs are written
    to `_outputs.X` and the bare key `X`).

    Ours: outputs are stored only under ``_outputs.<id>``, so a user key named like a node
    survives, and memory and distributed runs see the same context.
    """
    tracker = Tracker()
    blueprint = _blueprint(
        "namespace",
        [_node("user", value="node output"), _node("after", "echo")],
        [_edge("user", "after")],
    )
    result = await tracker.runtime().run(blueprint, {"user": "ada"})
    assert result.status == "completed", result.errors
    assert result.context["user"] == "ada"
    assert result.context["_outputs.user"] == "node output"
    assert result.context["_outputs.after"] == "node output"
    assert "after" not in result.context


async def test_defect_19_builder_expressions_are_accepted_by_the_default_evaluator() -> None:
    """Reference: "Default evaluator rejects the builder's own expressions (`context["X"]`,
    comparisons): loops silently skip, errors go to stderr."

    Ours (design.md 7): the default safe evaluator "must accept every expression the builder
    generates (`context["X"]`)", plus comparisons, boolean operators and the JavaScript
    spellings ``===``, ``!==``, ``&&``, ``||``, ``!``.
    """

    async def bump(ctx: NodeContext) -> int:
        value = int(await ctx.context.get("n", 0)) + 1
        await ctx.context.set("n", value)
        return value

    async def label(ctx: NodeContext) -> str:
        return f"n={ctx.input}"

    flow = (
        create_flow("builder-expressions")
        .node("init", lambda ctx: "x")
        .node("body", bump)
        .loop("again", start_node_id="body", end_node_id="body", condition='context["n"] < 3')
        .node("done", label)
        .edge("init", "again")
        .edge("again", "done", condition='context["n"] === 3 && !(context["n"] !== 3)')
    )
    blueprint = flow.to_blueprint()
    assert [i for i in lint_blueprint(blueprint).issues if i.code == "INVALID_EXPRESSION"] == []
    result = await flow.run(FlowRuntime(), {"n": 0})
    assert result.status == "completed", result.errors
    assert result.context["n"] == 3
    assert result.context["_outputs.done"] == "n=3"  # the break edge's context["body"] transform


async def test_defect_20_only_a_whitelisting_evaluator_exists() -> None:
    """Reference: "Unsafe evaluator is not sandboxed (comment claims it is) and recompiles per
    call."

    Ours (design.md 7): there is no unsafe evaluator; the default parses with ``ast`` and
    allows only a whitelist — no ``eval``, no calls outside the whitelist, no dunder access.
    """
    assert isinstance(FlowRuntime().evaluator, SafeEvaluator)
    evaluator = SafeEvaluator()
    scope = {"a": {"b": 1}, "items": [1, 2]}
    for expression in (
        "__import__('os').system('true')",
        "().__class__.__bases__",
        "a.__class__",
        "open('/etc/passwd')",
        "getattr(a, 'b')",
        "[x for x in items]",
        "(lambda: 1)()",
        "a.get('b')",
    ):
        with pytest.raises(ExpressionError):
            evaluator.evaluate(expression, scope)
    assert evaluator.evaluate("len(items) == 2 && a.b === 1", scope) is True


async def test_defect_20_rejected_expression_is_a_typed_error_before_any_node_runs() -> None:
    """Ours (design.md 20): "Bad input anywhere (blueprint, job payload, resume data,
    expression) raises a typed `FlowcraftError` subclass whose message names the offending id
    or field".

    Every condition, transform and loop condition is checked by the runtime's evaluator when
    the run starts, so a blueprint with a rejected expression is refused like any invalid
    blueprint: ``run`` raises :class:`ExpressionError` naming the edge, and no node runs.
    """
    tracker = Tracker()
    runtime = tracker.runtime()
    for edge, kind in (
        (_edge("a", "b", condition="__import__('os')"), "condition"),
        (_edge("a", "b", transform="input.__class__"), "transform"),
    ):
        blueprint = _blueprint("bad-expression", [_node("a"), _node("b")], [edge])
        with pytest.raises(ExpressionError) as info:
            await runtime.run(blueprint)
        error = info.value
        assert error.node_id == "a"
        assert error.blueprint_id == "bad-expression"
        assert "(a -> b)" in error.message and kind in error.message
        assert "internal error" not in error.message
    loop = _blueprint(
        "bad-loop",
        [
            _node("lp", "loop-controller", params={"condition": "n +"}),
            _node("body"),
        ],
        [_edge("lp", "body", action="continue"), _edge("body", "lp")],
        metadata={"cycleEntryPoints": ["lp"]},
    )
    with pytest.raises(ExpressionError) as info:
        await runtime.run(loop)
    assert info.value.node_id == "lp"
    assert "loop controller 'lp'" in info.value.message
    assert tracker.ran == []


class _PickyEvaluator(SafeEvaluator):
    """Accepts every expression the safe evaluator accepts, but fails on ``missing`` at run
    time (as a custom evaluator may)."""

    def evaluate(self, expression: str, scope: Mapping[str, Any]) -> Any:
        if "missing" in expression:
            raise KeyError("missing")
        return super().evaluate(expression, scope)


@pytest.mark.parametrize("kind", ["condition", "transform"])
async def test_defect_20_expression_failing_at_run_time_fails_the_run_typed(kind: str) -> None:
    """An expression that passes the check but fails when evaluated fails the run with an
    :class:`ExpressionError` naming the edge (``node_id`` is its source) — never a generic
    internal error — and nothing after it runs."""
    tracker = Tracker()
    runtime = FlowRuntime(registry=tracker.registry, evaluator=_PickyEvaluator())
    blueprint = _blueprint(
        "late-expression",
        [_node("a"), _node("b", "echo"), _node("c")],
        [_edge("a", "b", **{kind: "missing"}), _edge("b", "c")],
    )
    result = await runtime.run(blueprint)
    assert result.status == "failed"
    assert len(result.errors) == 1
    error = result.errors[0]
    assert isinstance(error, ExpressionError)
    assert error.node_id == "a"
    assert f"(a -> b) {kind}" in error.message
    assert "internal error" not in error.message
    assert isinstance(error.__cause__, KeyError)
    assert tracker.ran == ["a"]


# --------------------------------------------------------------------------- 21-25


async def build_step_one(ctx: NodeContext) -> int:
    return 1


async def build_step_two(ctx: NodeContext) -> int:
    return 2


def test_defect_21_uses_keys_are_deterministic() -> None:
    """Reference: "Non-deterministic `uses` keys (global counter + hash): processes building
    flows in a different order disagree, breaking distributed workers; same-named classes
    overwrite each other."

    Ours (design.md 6): "Deterministic `uses` keys for builder-registered functions (module +
    qualified name)", independent of build order and process (hash seed); two different
    implementations that would share a key are refused instead of overwriting each other.
    """
    one = create_flow("f").node("a", build_step_one).node("b", build_step_two)
    two = create_flow("f").node("b", build_step_two).node("a", build_step_one)
    keys_one = {n.id: n.uses for n in one.to_blueprint().nodes}
    keys_two = {n.id: n.uses for n in two.to_blueprint().nodes}
    assert keys_one == keys_two
    assert keys_one["a"] == f"{__name__}:build_step_one"

    def first(ctx: NodeContext) -> int:
        return 1

    def second(ctx: NodeContext) -> int:
        return 2

    # Two different implementations that claim the same module-level name.
    first.__qualname__ = second.__qualname__ = "same_name"
    assert uses_key_for(first) == uses_key_for(second) == f"{__name__}:same_name"
    with pytest.raises(FlowcraftError, match="same uses key"):
        create_flow("g").node("x", first).node("y", second)

    script = (
        "from flowcraft.flow import uses_key_for\n"
        "f = lambda ctx: ctx.input + 1\n"
        "print(uses_key_for(f))\n"
    )
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
        )
        outputs.add(done.stdout.strip())
    assert len(outputs) == 1
    assert outputs.pop().startswith("__main__:<lambda>#")
    assert uses_key_for(build_step_one) == keys_one["a"]


async def test_defect_22_sliding_window_concurrency_also_on_resume() -> None:
    """Reference: "Chunk-barrier concurrency; `resume()` drops the concurrency option" — ready
    nodes run in consecutive chunks, the next chunk waiting for the whole previous one.

    Ours: a sliding window of ``concurrency`` slots (a finished node frees its slot at once),
    and ``resume`` honours ``concurrency`` like ``run``.
    """
    finished: dict[str, float] = {}
    running = 0
    peak = 0

    async def work(ctx: NodeContext) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(float(ctx.params["delay"]))
        running -= 1
        finished[ctx.node_id] = time.monotonic()

    nodes = [_node("start", "work", params={"delay": 0})]
    nodes += [_node("long", "work", params={"delay": 0.3})]
    nodes += [_node(f"short{i}", "work", params={"delay": 0.02}) for i in range(4)]
    edges = [_edge("start", n["id"]) for n in nodes[1:]]
    runtime = FlowRuntime(registry={"work": work})
    result = await runtime.run(_blueprint("window", nodes, edges), concurrency=2)
    assert result.status == "completed", result.errors
    assert peak == 2
    assert all(finished[f"short{i}"] < finished["long"] for i in range(4))

    waiting = _blueprint(
        "window-resume",
        [
            _node("gate", "wait"),
            *[_node(f"p{i}", "work", params={"delay": 0.01}) for i in range(6)],
        ],
        [_edge("gate", f"p{i}") for i in range(6)],
    )
    paused = await runtime.run(waiting)
    peak = 0
    done = await runtime.resume(waiting, paused.serialized_context, {}, concurrency=2)
    assert done.status == "completed", done.errors
    assert peak == 2


async def test_defect_23_event_quality() -> None:
    """Reference: "`edge:evaluate` lacks executionId; ... duplicate `_inputs` events; empty
    `node:retry.blueprintId`; `workflow:resume` on every fresh run; ... emission awaited inline
    so a failing bus fails nodes."

    Ours (design.md 19): every node and edge event carries ``executionId`` and ``blueprintId``;
    each output change is reported once; ``workflow:resume`` only on resume; a failing
    subscriber is logged and never fails a node.
    """
    attempts = {"n": 0}

    async def flaky(ctx: NodeContext) -> int:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise RuntimeError("first attempt")
        return 1

    def broken(event: FlowEvent) -> None:
        raise RuntimeError("subscriber bug")

    bus = EventBus()
    events = _events(bus)
    bus.subscribe(broken)
    tracker = Tracker()
    blueprint = _blueprint(
        "events",
        [_node("a", "flaky", config={"maxRetries": 2}), _node("b"), _node("gate", "wait")],
        [_edge("a", "b", condition="result.output == 1"), _edge("b", "gate")],
    )
    runtime = FlowRuntime(registry={**tracker.registry, "flaky": flaky}, event_bus=bus)
    paused = await runtime.run(blueprint)
    assert paused.status == "awaiting"
    run_id = paused.run_id
    kinds = [e.type for e in events]
    assert "workflow:resume" not in kinds
    for event in events:
        if event.type.startswith(("node:", "edge:", "context:")):
            assert event.payload["executionId"] == run_id, event.type
        if event.type.startswith(("node:", "edge:")):
            assert event.payload["blueprintId"] == "events", event.type
    assert [e.payload["attempt"] for e in events if e.type == "node:retry"] == [1]
    evaluate = [e for e in events if e.type == "edge:evaluate"]
    assert len(evaluate) == 1 and evaluate[0].payload["result"] is True
    changes = [e.payload["key"] for e in events if e.type == "context:change"]
    assert changes.count("_outputs.a") == 1 and changes.count("_outputs.b") == 1
    assert len(changes) == len(set(changes))
    assert bus.dropped > 0

    events.clear()
    done = await runtime.resume(blueprint, paused.serialized_context, {})
    assert done.status == "completed"
    assert [e.type for e in events].count("workflow:resume") == 1
    assert [e.type for e in events].count("workflow:finish") == 1


async def test_defect_24_unserialisable_context_is_an_error_not_a_placeholder() -> None:
    """Reference: "Serializer replaces a circular context with a placeholder (total silent
    loss); detects only top-level Map/Set/Date."

    Ours (design.md 18): JSON with documented extensions at any depth (sets, datetimes, ...);
    what cannot be serialised fails the run with a ``SerializationError`` and no placeholder is
    ever written.
    """

    async def circular(ctx: NodeContext) -> int:
        loop: dict[str, Any] = {}
        loop["self"] = loop
        await ctx.context.set("loop", loop)
        return 1

    result = await FlowRuntime(registry={"circular": circular}).run(
        _blueprint("circ", [_node("c", "circular")])
    )
    assert result.status == "failed"
    assert any(isinstance(e, SerializationError) for e in result.errors)
    assert "_circularReference" not in result.serialized_context

    serializer = JsonSerializer()
    moment = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    nested = {"deep": {"when": moment, "tags": {"b", "a"}}}
    assert json.loads(serializer.dumps(nested)) == {
        "deep": {"when": "2024-05-01T12:00:00+00:00", "tags": ["a", "b"]}
    }
    with pytest.raises(SerializationError):
        serializer.dumps({"deep": {"raw": object()}})


async def test_defect_25_awaiting_keys_are_cleared_synchronously_on_resume() -> None:
    """Reference: "Fire-and-forget writes in `clearAwaiting`" — the awaiting keys may still be
    present after resume returns.

    Ours: resuming a node removes it from ``_awaitingNodeIds``/``_awaitingDetails`` before the
    run continues; once nothing awaits, both keys and the saved scheduler state are gone.
    """
    tracker = Tracker()
    blueprint = _blueprint(
        "clear",
        [_node("w1", "wait"), _node("w2", "wait"), _node("after1", "echo")],
        [_edge("w1", "after1")],
    )
    runtime = tracker.runtime()
    paused = await runtime.run(blueprint)
    observed: list[Any] = []

    async def peek(ctx: NodeContext) -> None:
        observed.append(await ctx.context.get("_awaitingNodeIds"))

    half = await FlowRuntime(registry={**tracker.registry, "echo": peek}).resume(
        blueprint, paused.serialized_context, {}, "w1"
    )
    assert observed == [["w2"]]
    assert half.status == "awaiting" and half.context["_awaitingNodeIds"] == ["w2"]
    done = await runtime.resume(blueprint, half.serialized_context, {}, "w2")
    assert done.status == "completed"
    for key in ("_awaitingNodeIds", "_awaitingDetails", "_runState"):
        assert key not in done.context
        assert key not in json.loads(done.serialized_context)


# --------------------------------------------------------------------------- 26-30


class Guarded(Node):
    """A class node whose ``exec`` fails when ``params.fail``; ``fallback`` rescues it when
    ``params.rescue``; ``recover`` calls are recorded."""

    recovered: ClassVar[list[str]] = []

    async def exec(self, prep_result: Any, ctx: NodeContext) -> str:
        if self.params.get("fail"):
            raise RuntimeError("exec failed")
        return "ok"

    async def fallback(self, error: BaseException, ctx: NodeContext) -> str:
        if self.params.get("rescue"):
            return "rescued"
        raise error

    async def recover(self, error: BaseException, ctx: NodeContext) -> None:
        type(self).recovered.append(self.node_id)


async def test_defect_26_recover_does_not_run_after_a_successful_class_fallback() -> None:
    """Reference: "`recover` runs after a successful class fallback" (it runs whenever any
    error was recorded during the execution).

    Ours: a successful class ``fallback`` is success, so ``recover`` (cleanup after failure)
    does not run; it runs once when the node ends in failure.
    """
    Guarded.recovered = []
    blueprint = _blueprint(
        "recover",
        [
            _node("fine", "guarded"),
            _node("rescued", "guarded", params={"fail": True, "rescue": True}),
            _node("failing", "guarded", params={"fail": True}),
        ],
    )
    result = await FlowRuntime(registry={"guarded": Guarded}).run(blueprint, concurrency=1)
    assert result.context["_outputs.fine"] == "ok"
    assert result.context["_outputs.rescued"] == "rescued"
    assert result.status == "failed"
    assert [e.node_id for e in result.errors] == ["failing"]
    assert Guarded.recovered == ["failing"]


async def test_defect_28_webhook_node_pauses_and_resumes_with_the_request() -> None:
    """Reference: "Webhook node unusable everywhere" — it needs an adapter method no adapter
    implements, and memory mode has no adapter, so it always fails.

    Ours: a ``webhook`` node pauses the run (reason ``webhook`` with its path) and the delivery
    resumes it with the request body as the node's output.
    """
    tracker = Tracker()
    blueprint = _blueprint(
        "hook",
        [_node("hook", "webhook", params={"path": "/hooks/payment"}), _node("use", "echo")],
        [_edge("hook", "use")],
    )
    runtime = tracker.runtime()
    paused = await runtime.run(blueprint)
    assert paused.status == "awaiting"
    assert paused.context["_awaitingDetails"]["hook"] == {
        "reason": "webhook",
        "path": "/hooks/payment",
    }
    done = await runtime.resume(blueprint, paused.serialized_context, {"output": {"paid": 42}})
    assert done.status == "completed", done.errors
    assert done.context["_outputs.use"] == {"paid": 42}


def test_defect_29_linter_knows_builtins_and_reports_the_missing_checks() -> None:
    """Reference: "Linter gaps: built-in `wait/sleep/subflow/webhook` flagged; no checks for
    unsatisfiable joins, duplicate ids, dangling `fallback` ids, exit-less loops; Mermaid
    labels unescaped."

    Ours: built-in keys always count as registered; duplicate ids, dangling or self fallbacks
    and exit-less loops are reported; Mermaid labels are escaped.
    """
    builtins = {
        "id": "builtins",
        "nodes": [
            _node("w", "wait"),
            _node("s", "sleep", params={"duration": 5}),
            _node("h", "webhook"),
            _node("sub", "subflow", params={"blueprintId": "child"}),
        ],
        "edges": [_edge("w", "s"), _edge("s", "h"), _edge("h", "sub")],
    }
    result = lint_blueprint(builtins, {}, {"child": builtins})
    assert result.is_valid, result.issues

    broken = {
        "id": "broken",
        "nodes": [
            _node("a", config={"fallback": "ghost"}),
            _node("a"),
            _node("body"),
            _node(
                "again",
                "loop-controller",
                params={"condition": "n < 3"},
                config={"joinStrategy": "any"},
            ),
        ],
        "edges": [
            _edge("a", "again"),
            _edge("body", "again"),
            _edge("again", "body", action="continue"),
        ],
    }
    issues = {(i.code, i.node_id) for i in lint_blueprint(broken, {"mark": object()}).issues}
    assert ("DUPLICATE_NODE_ID", "a") in issues
    assert ("INVALID_FALLBACK", "a") in issues
    assert ("EXITLESS_LOOP", "again") in issues

    diagram = to_mermaid(
        {"id": "m", "nodes": [_node("a", params={"q": 'say "hi" <b>'})], "edges": []}
    )
    assert '"hi"' not in diagram and "<b>" not in diagram
    assert "#quot;" in diagram


async def test_defect_29_unsatisfiable_join_warning_agrees_with_the_runtime() -> None:
    """Ours (design.md 2): a join only waits for predecessors that can still complete; the
    linter must not call a join unsatisfiable that the runtime fires."""
    tracker = Tracker()
    blueprint = _blueprint(
        "same-source-join",
        [_node("pick", "choose", params={"action": "a", "value": 1}), _node("join", "echo")],
        [_edge("pick", "join", action="a"), _edge("pick", "join", action="b")],
    )
    result = await tracker.runtime().run(blueprint)
    assert result.status == "completed"
    assert result.context["_outputs.join"] == 1
    codes = [i.code for i in lint_blueprint(blueprint, tracker.registry).issues]
    assert "UNSATISFIABLE_JOIN" not in codes


async def test_defect_30_no_silently_ignored_options_and_loops_are_allowed() -> None:
    """Reference: "Pause flags never cleared; `RuntimeOptions.strict` ignored; strict forbids
    `loop()`."

    Ours: there is no ``strict`` option and no ``requestPause``; an option the runtime does not
    know is rejected (``TypeError``) instead of being silently ignored, and blueprints with
    ``loop()`` cycles always run.
    """
    with pytest.raises(TypeError):
        FlowRuntime(strict=True)  # type: ignore[call-arg]
    tracker = Tracker()
    blueprint = _blueprint(
        "loop-allowed",
        [
            _node("body", "count", params={"key": "n"}),
            _node(
                "again",
                "loop-controller",
                params={"condition": "n < 2"},
                config={"joinStrategy": "any"},
            ),
        ],
        [_edge("body", "again"), _edge("again", "body", action="continue")],
    )
    runtime = tracker.runtime()
    with pytest.raises(TypeError):
        await runtime.run(blueprint, {"n": 0}, strict=True)  # type: ignore[call-arg]
    result = await runtime.run(blueprint, {"n": 0})
    assert result.status == "completed", result.errors
    assert result.context["n"] == 2
