"""Run hooks (before_run / after_run) in memory and in distributed mode."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from flowcraft import FlowRuntime, NodeContext, RunHooks, RunInfo, WorkflowResult, create_flow
from flowcraft.distributed import Client, Worker
from flowcraft.memory import MemoryAdapter, MemoryBackend

SEEN: list[str] = []


def work(ctx: NodeContext) -> str:
    SEEN.append(f"node {ctx.node_id}")
    return "done"


class Recording(RunHooks):
    def __init__(self) -> None:
        self.runs: list[RunInfo] = []
        self.finished: list[RunInfo] = []
        self.results: list[WorkflowResult] = []

    async def before_run(self, run: RunInfo) -> None:
        SEEN.append(f"before {run.blueprint_id} resumed={run.resumed}")
        self.runs.append(run)

    def after_run(self, run: RunInfo, result: WorkflowResult) -> None:
        SEEN.append(f"after {result.status}")
        self.finished.append(run)
        self.results.append(result)


@pytest.fixture(autouse=True)
def _clear() -> None:
    SEEN.clear()


async def test_hooks_wrap_every_run_and_resumption_in_memory() -> None:
    hooks = Recording()
    runtime = FlowRuntime(hooks=[hooks])
    flow = create_flow("h").node("ask", "wait").node("next", work).edge("ask", "next")
    paused = await flow.run(runtime)
    resumed = await flow.resume(runtime, paused.serialized_context, {"output": 1}, "ask")
    assert resumed.status == "completed"
    assert SEEN == [
        "before h resumed=False",
        "after awaiting",
        "before h resumed=True",
        "node next",
        "after completed",
    ]
    first, second = hooks.runs
    assert first.run_id == second.run_id == paused.run_id
    assert first.blueprint is not None and first.blueprint.id == "h"
    assert not first.distributed and "wait" in first.registry
    assert [r.status for r in hooks.results] == ["awaiting", "completed"]
    assert hooks.results[1] is resumed


async def test_after_run_errors_are_logged_and_before_run_errors_stop_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(RunHooks):
        def after_run(self, run: RunInfo, result: WorkflowResult) -> None:
            raise RuntimeError("hook broke")

    flow = create_flow("e").node("a", work)
    with caplog.at_level(logging.ERROR, logger="flowcraft.hooks"):
        result = await flow.run(FlowRuntime(hooks=[Broken()]))
    assert result.status == "completed"
    assert "after_run hook Broken failed" in caplog.text

    class Gate(RunHooks):
        def before_run(self, run: RunInfo) -> None:
            raise PermissionError(f"quota exceeded for {run.blueprint_id}")

    SEEN.clear()
    with pytest.raises(PermissionError, match="quota exceeded for e"):
        await flow.run(FlowRuntime(hooks=[Gate()]))
    assert SEEN == []


async def test_distributed_hooks_run_at_start_and_where_results_are_published() -> None:
    flow = create_flow("d").node("a", work).node("ask", "wait").edge("a", "ask")
    blueprint = flow.to_blueprint()
    backend = MemoryBackend()
    worker_hooks, client_hooks = Recording(), Recording()
    worker_adapter = MemoryAdapter(
        backend,
        registry=flow.function_registry,
        blueprints={"d": blueprint},
        hooks=[worker_hooks],
    )
    client = Client(MemoryAdapter(backend, blueprints={"d": blueprint}, hooks=[client_hooks]))

    class Tagging(RunHooks):
        def before_run(self, run: RunInfo) -> None:
            run.trace_context = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}

    client.adapter.hooks.append(Tagging())
    async with Worker(worker_adapter, receive_wait=0.02):
        run_id = await client.start("d", {"x": 1})
        paused = await client.wait(run_id, timeout=10)
        assert paused.status == "awaiting"
        assert await client.adapter.cancel(run_id)
    (started,) = client_hooks.runs
    assert started.distributed and started.run_id == run_id and started.blueprint_id == "d"
    assert [r.status for r in worker_hooks.results] == ["awaiting"]
    assert [r.status for r in client_hooks.results] == ["cancelled"]
    assert worker_hooks.runs == []
    (published,) = worker_hooks.finished
    assert published.run_id == run_id and published.blueprint is blueprint
    # What a before_run hook put in the run's trace context reaches every later hook.
    assert published.trace_context["traceparent"].startswith("00-111")
    assert worker_hooks.results[0].context["_outputs.a"] == "done"
    assert not any(k.startswith("_flowcraft.") for k in worker_hooks.results[0].context)
    assert SEEN.count("before d resumed=False") == 1


def test_runtime_without_hooks_has_an_empty_list() -> None:
    runtime: Any = FlowRuntime()
    assert runtime.hooks == []
