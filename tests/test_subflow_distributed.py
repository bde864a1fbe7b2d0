"""Subflows on the distributed adapter (in-memory backend): parity with the in-memory runtime,
and the crash windows between the steps that link a child run to its parent."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from flowcraft import Blueprint, FlowRuntime, NodeContext, WorkflowResult, create_flow
from flowcraft.distributed import Delivery, JobPayload, Worker
from flowcraft.distributed import _subflow as subflow
from flowcraft.distributed._runs import Runs, child_run_id
from flowcraft.memory import MemoryAdapter

T = 5.0
CHILD_RUNS: list[str] = []


def double(ctx: NodeContext) -> int:
    CHILD_RUNS.append(ctx.run_id)
    return int(ctx.input) * 2


def label(ctx: NodeContext) -> str:
    return f"n={ctx.input}"


def fail(ctx: NodeContext) -> None:
    raise RuntimeError("kaput")


def seed(ctx: NodeContext) -> int:
    return 21


def echo(ctx: NodeContext) -> Any:
    return ctx.input


FLOWS = [
    create_flow("child").node("double", double, inputs="n").node("label", label),
    create_flow("parent")
    .node("seed", seed)
    .subflow("sub", "child", inputs={"n": "seed"}, outputs={"label": "label"})
    .node("after", echo)
    .edge("seed", "sub")
    .edge("sub", "after"),
    create_flow("terminals").node("seed", seed).subflow("sub", "child").edge("seed", "sub"),
    create_flow("bad-child").node("bad", fail),
    create_flow("bad-parent").subflow("sub", "bad-child"),
    create_flow("napping").sleep("nap", duration=50).node("double", double, inputs="n"),
    create_flow("sleeps").subflow("sub", "napping", inputs={"n": "n"}, outputs={"n": "double"}),
    create_flow("asks").wait("ask").node("double", double).edge("ask", "double"),
    create_flow("asking").subflow("sub", "asks"),
]
FLOWS[0].edge("double", "label")
BLUEPRINTS: dict[str, Blueprint] = {f.to_blueprint().id: f.to_blueprint() for f in FLOWS}
REGISTRY: dict[str, Any] = {k: v for f in FLOWS for k, v in f.function_registry.items()}


@pytest.fixture(autouse=True)
def _clear() -> None:
    CHILD_RUNS.clear()


def adapter() -> MemoryAdapter:
    return MemoryAdapter(registry=REGISTRY, blueprints=BLUEPRINTS, cancel_poll=0.01)


async def distributed(
    blueprint_id: str, initial: Mapping[str, Any] | None = None
) -> WorkflowResult:
    async with Worker(adapter(), timer_interval=0.01) as worker:
        run_id = await worker.adapter.start_run(blueprint_id, initial)
        return await worker.adapter.wait_result(run_id, T)


async def in_memory(blueprint_id: str, initial: Mapping[str, Any] | None = None) -> WorkflowResult:
    runtime = FlowRuntime(blueprints=BLUEPRINTS)
    return await runtime.run(
        BLUEPRINTS[blueprint_id], dict(initial or {}), function_registry=REGISTRY
    )


@pytest.mark.parametrize("blueprint_id", ["parent", "terminals", "bad-parent"])
async def test_distributed_subflow_matches_the_in_memory_one(blueprint_id: str) -> None:
    expected = await in_memory(blueprint_id)
    got = await distributed(blueprint_id)
    assert got.status == expected.status
    assert [e.message for e in got.errors] == [e.message for e in expected.errors]
    assert [e.node_id for e in got.errors] == [e.node_id for e in expected.errors]
    keys = [k for k in expected.context if k.startswith("_outputs.") or k == "label"]
    assert {k: got.context.get(k) for k in keys} == {k: expected.context[k] for k in keys}


async def test_a_sleeping_child_leaves_the_parent_running() -> None:
    async with Worker(adapter(), timer_interval=0.01) as worker:
        run_id = await worker.adapter.start_run("sleeps", {"n": 4})
        assert await worker.adapter.status(run_id) == "running"
        result = await worker.adapter.wait_result(run_id, T)
    assert result.status == "completed", result.errors
    assert result.context["n"] == 8


async def _handle_until(ad: MemoryAdapter, stop: Any) -> Delivery | None:
    """Handle queued jobs one at a time; the first delivery ``stop`` accepts is returned
    unhandled (None once the queue is empty)."""
    while deliveries := await ad.queue.receive(1, 0.05):
        delivery = deliveries[0]
        if stop(JobPayload.from_json(delivery.body)):
            return delivery
        await ad.handle(delivery)
    return None


async def test_subflow_job_redelivered_after_the_child_resumed_its_node() -> None:
    ad = adapter()
    run_id = await ad.start_run("parent")
    resume = await _handle_until(ad, lambda p: p.run_id == run_id and p.resume is not None)
    assert resume is not None
    # The subflow job comes again while its node's resume job waits in the queue: it must
    # neither start a second child nor leave the node parked.
    job = JobPayload(run_id=run_id, blueprint_id="parent", node_id="sub")
    await ad.handle(Delivery(job.to_json(), handle=None))
    await ad.handle(resume)
    await _handle_until(ad, lambda p: False)
    result = await ad.wait_result(run_id, T)
    assert result.status == "completed", result.errors
    assert result.context["_outputs.after"] == {"label": "n=42"}
    assert len(CHILD_RUNS) == 1
    assert not await ad.coordination.members(ad.keys.parked(run_id))


async def test_subflow_job_racing_its_own_resume_leaves_no_stale_park() -> None:
    ad = adapter()
    run_id = await ad.start_run("parent")
    after = await _handle_until(ad, lambda p: p.node_id == "after")
    assert after is not None
    # A redelivered subflow job that found no stored result just before the resume job stored
    # one gets here only now: parking again would keep the run from ever completing.
    job = JobPayload(run_id=run_id, blueprint_id="parent", node_id="sub")
    await subflow.start_child(ad, job, {"reason": "subflow"}, "child", {"n": 21})
    await ad.handle(after)
    result = await ad.wait_result(run_id, T)
    assert result.status == "completed", result.errors
    assert len(CHILD_RUNS) == 1


async def test_crash_after_the_resume_fence_is_reconciled() -> None:
    ad = adapter()

    async def dies_after_fence(
        run_id: str, node_id: str, iteration: int, data: Mapping[str, Any]
    ) -> bool:
        await ad.coordination.set_if_not_exist(
            ad.keys.resumed(run_id, node_id, iteration), "resumed", ad.ttl
        )
        return True

    run_id = await ad.start_run("parent")
    ad.resume_node = dies_after_fence  # type: ignore[method-assign]
    await _handle_until(ad, lambda p: False)
    assert await ad.status(run_id) == "running"
    del ad.resume_node
    assert await ad.reconcile(run_id) == {"sub"}
    await _handle_until(ad, lambda p: False)
    result = await ad.wait_result(run_id, T)
    assert result.status == "completed", result.errors
    assert not await ad.coordination.members(ad.keys.parked(run_id))


async def test_awaiting_child_unseen_by_its_parent_is_reconciled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def dies(self: Any, run_id: str) -> None:
        """The worker dies after the child published ``awaiting``."""

    ad = adapter()
    run_id = await ad.start_run("asking")
    with monkeypatch.context() as patch:
        patch.setattr(Runs, "_wake_parent", dies)
        await _handle_until(ad, lambda p: False)
    child = child_run_id(run_id, "sub", 0)
    assert await ad.status(child) == "awaiting"
    assert await ad.status(run_id) == "running"
    await ad.reconcile(run_id)
    assert await ad.status(run_id) == "awaiting"
    assert await ad.resume_with_action(run_id, output=5) == "sub"
    await _handle_until(ad, lambda p: False)
    result = await ad.wait_result(run_id, T)
    assert result.status == "completed", result.errors
    assert result.context["_outputs.sub"] == 10
