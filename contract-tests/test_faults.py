"""Fault contract: redelivery, killed and restarted workers, malformed jobs."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import Harness, outputs

from flowcraft import NodeContext, create_flow
from flowcraft.distributed import Client, Delivery, JobPayload
from flowcraft.errors import AdapterError

T = 15.0


async def test_duplicate_delivery_never_double_fires_a_join(harness: Harness) -> None:
    calls: list[str] = []

    async def count(ctx: NodeContext) -> Any:
        calls.append(ctx.node_id)
        return ctx.node_id

    flow = (
        create_flow("dup")
        .node("a", count)
        .node("b", count)
        .node("j", count)
        .edge("a", "j")
        .edge("b", "j")
    )
    harness.add(flow)
    adapter = harness.adapter()
    run_id = await harness.client.start("dup")
    # Deliver every job twice by hand, before and after its first handling.
    body_a = JobPayload(run_id=run_id, blueprint_id="dup", node_id="a").to_json()
    body_b = JobPayload(run_id=run_id, blueprint_id="dup", node_id="b").to_json()
    body_j = JobPayload(run_id=run_id, blueprint_id="dup", node_id="j").to_json()
    for body in (body_a, body_a, body_b, body_b, body_j, body_j):
        await adapter.handle(Delivery(body, handle=None))
    harness.worker()
    result = await harness.client.wait(run_id, timeout=T)
    assert result.status == "completed"
    assert sorted(calls) == ["a", "b", "j"]
    assert outputs(result.context)["j"] == "j"


async def test_worker_killed_mid_node_run_completes(harness: Harness) -> None:
    harness.deployment = harness.backend.deployment(lease=0.3)
    started = asyncio.Event()
    runs: list[int] = []

    async def slow(ctx: NodeContext) -> str:
        runs.append(1)
        started.set()
        await asyncio.sleep(0.5 if len(runs) == 1 else 0)
        return "done"

    harness.add(create_flow("kill").node("a", slow).node("b", slow).edge("a", "b"))
    victim = harness.worker()
    run_id = await harness.client.start("kill")
    await asyncio.wait_for(started.wait(), T)
    victim.kill()
    harness.worker()
    result = await harness.client.wait(run_id, timeout=T)
    assert result.status == "completed"
    assert result.context["_outputs.b"] == "done"


async def test_worker_process_killed_with_sigkill_mid_node(
    harness: Harness, tmp_path: Path
) -> None:
    spawn = getattr(harness.backend, "spawn_worker", None)
    if spawn is None:
        pytest.skip(reason="this backend lives in one process: it has no worker processes to kill")
    sys.path.insert(0, str(Path(__file__).parent))
    import sigkill_app

    marker = tmp_path / "a-started"
    os.environ["FLOWCRAFT_TEST_MARKER"] = str(marker)
    harness.deployment = harness.backend.deployment(lease=1.0)
    harness.add(sigkill_app.flow)
    env = {"FLOWCRAFT_TEST_MARKER": str(marker), "PYTHONPATH": str(Path(__file__).parent)}
    victim = spawn(harness.deployment, "sigkill_app:app", env)
    try:
        run_id = await harness.client.start("sigkill")
        for _ in range(int(T / 0.05)):
            if marker.exists():
                break
            await asyncio.sleep(0.05)
        assert marker.read_text() == str(victim.pid)  # node a is running in the victim
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=T) == -signal.SIGKILL
        harness.worker()
        result = await harness.client.wait(run_id, timeout=T)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert result.status == "completed"
    assert result.context["_outputs.b"] == "b after a done"


async def test_heartbeat_keeps_a_long_node_from_redelivery(harness: Harness) -> None:
    harness.deployment = harness.backend.deployment(lease=0.3)
    runs: list[int] = []

    async def long(ctx: NodeContext) -> str:
        runs.append(1)
        await asyncio.sleep(1.0)
        return "ok"

    harness.add(create_flow("long").node("a", long))
    harness.worker()
    harness.worker()
    result = await harness.client.run("long", timeout=T)
    assert result.status == "completed"
    assert len(runs) == 1


async def test_worker_restarted_mid_run(harness: Harness) -> None:
    gate = asyncio.Event()

    async def first(ctx: NodeContext) -> int:
        return 1

    async def second(ctx: NodeContext) -> int:
        await gate.wait()
        return 2

    harness.add(create_flow("restart").node("a", first).node("b", second).edge("a", "b"))
    worker = harness.worker()
    run_id = await harness.client.start("restart")
    await asyncio.sleep(0.2)
    stopping = asyncio.ensure_future(worker.stop(timeout=0.1))
    await stopping
    gate.set()
    harness.worker()
    result = await harness.client.wait(run_id, timeout=T)
    assert result.status == "completed"
    assert result.context["_outputs.b"] == 2


async def test_malformed_jobs_are_rejected_and_the_worker_keeps_serving(
    harness: Harness,
) -> None:
    async def one(ctx: NodeContext) -> int:
        return 1

    harness.add(create_flow("ok").node("a", one))
    harness.worker()
    client = harness.client
    started = [await client.start("ok") for _ in range(3)]
    unknown_bp = JobPayload(run_id="r-bp", blueprint_id="nope", node_id="a").to_json()
    unknown_node = JobPayload(run_id=started[1], blueprint_id="ok", node_id="zz").to_json()
    for body in ("{not json", orjson.dumps({"runId": 5}).decode(), unknown_bp, unknown_node):
        await harness.backend.inject(harness.deployment, body)
    good = await client.run("ok", timeout=T)
    assert good.status == "completed"
    for _ in range(200):
        if len(harness.dead_letters()) >= 4:
            break
        await asyncio.sleep(0.02)
    reasons = " | ".join(harness.dead_letters())
    # A queue that only carries JSON (BullMQ) delivers foreign text as a JSON string.
    if getattr(harness.backend, "carries_raw_text", True):
        assert "not JSON" in reasons
    else:
        assert "must be a JSON object" in reasons
    assert "runId" in reasons
    assert "'nope' is not registered" in reasons
    assert "node 'zz' does not exist" in reasons
    failed = await client.wait("r-bp", timeout=T)
    assert failed.status == "failed"
    assert "nope" in failed.errors[0].message


async def test_version_mismatch_dead_letters_and_fails_the_run(harness: Harness) -> None:
    async def one(ctx: NodeContext) -> int:
        return 1

    harness.add(create_flow("ver").node("a", one).version("1"))
    client = harness.client
    run_id = await client.start("ver")
    harness.add(create_flow("ver").node("a", one).version("2"))
    harness.worker()
    result = await client.wait(run_id, timeout=T)
    assert result.status == "failed"
    assert "version mismatch" in result.errors[0].message
    assert any("version mismatch" in r for r in harness.dead_letters())


async def test_reconcile_recovers_a_lost_job(harness: Harness) -> None:
    from flowcraft.distributed import Reconciler

    async def one(ctx: NodeContext) -> int:
        return 1

    harness.add(create_flow("lost").node("a", one).node("b", one).edge("a", "b"))
    adapter = harness.adapter()
    run_id = await harness.client.start("lost")
    await harness.backend.reset(harness.deployment)  # the queue and stores are wiped ...
    run_id = await harness.client.start("lost")
    # ... and this time the start job is lost from the queue only.
    adapter2 = harness.adapter()
    deliveries = await adapter2.queue.receive(10, 0.1)
    for delivery in deliveries:
        await adapter2.queue.ack(delivery)
    await adapter2.queue.stop_receiving()
    stats = await Reconciler(adapter, stalled_after=0).run(now=10**10)
    assert stats == {
        "scanned_keys": 1,
        "stalled_runs": 1,
        "reconciled_runs": 1,
        "failed_runs": 0,
    }
    harness.worker()
    result = await harness.client.wait(run_id, timeout=T)
    assert result.status == "completed"


async def test_redelivered_subflow_job_starts_one_child(harness: Harness) -> None:
    runs: list[str] = []

    async def count(ctx: NodeContext) -> int:
        runs.append(ctx.run_id)
        return 1

    harness.add(create_flow("once-child").node("c", count))
    harness.add(create_flow("once").subflow("sub", "once-child"))
    adapter = harness.adapter()
    run_id = await harness.client.start("once")
    body = JobPayload(run_id=run_id, blueprint_id="once", node_id="sub").to_json()
    for _ in range(2):
        await adapter.handle(Delivery(body, handle=None))
    harness.worker()
    result = await harness.client.wait(run_id, timeout=T)
    assert result.status == "completed", result.errors
    assert result.context["_outputs.sub"] == 1
    assert len(runs) == 1


async def test_crash_between_child_result_and_parent_resume_is_reconciled(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowcraft.distributed import Reconciler

    child_runs: list[str] = []

    async def note(ctx: NodeContext) -> str:
        child_runs.append(ctx.run_id)
        return "child done"

    async def echo(ctx: NodeContext) -> Any:
        return ctx.input

    async def crashed(run_id: str) -> None:
        """The worker dies right after writing a final result."""

    harness.add(create_flow("quick-child").node("c", note))
    harness.add(create_flow("waits").subflow("sub", "quick-child").node("b", echo).edge("sub", "b"))
    victim = harness.worker()
    monkeypatch.setattr(victim.adapter, "end_links", crashed)
    client = harness.client
    run_id = await client.start("waits")
    for _ in range(int(T / 0.02)):
        if child_runs and await client.status(child_runs[0]) == "completed":
            break
        await asyncio.sleep(0.02)
    await victim.stop()
    assert await client.status(run_id) == "running"  # the parent was never told
    harness.worker()
    stats = await Reconciler(harness.adapter(), stalled_after=0).run(now=10**10)
    assert stats["stalled_runs"] == 2  # the parent (nothing to do yet) and the finished child
    result = await client.wait(run_id, timeout=T)
    assert result.status == "completed", result.errors
    assert result.context["_outputs.b"] == "child done"


async def test_reconcile_restores_a_lost_blueprint_record_from_the_context(
    harness: Harness,
) -> None:
    async def one(ctx: NodeContext) -> int:
        return 1

    harness.add(create_flow("recorded").node("a", one))
    adapter = harness.adapter()
    run_id = await harness.client.start("recorded")
    # The record is gone (evicted); the context still names the blueprint.
    await adapter.coordination.delete(adapter.keys.meta(run_id))
    await adapter.reconcile(run_id)
    assert await adapter.meta(run_id) == ("recorded", harness.blueprints["recorded"].version)
    harness.worker()
    assert (await harness.client.wait(run_id, timeout=T)).status == "completed"


async def test_a_wake_lost_with_its_worker_is_published_by_the_redelivered_job(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness.deployment = harness.backend.deployment(lease=0.3)
    go = asyncio.Event()

    async def gated(ctx: NodeContext) -> str:
        await go.wait()
        return "done"

    harness.add(create_flow("lost-wake").node("a", gated))
    victim = harness.worker()
    wake = victim.adapter.results.publish
    died: list[str] = []

    async def dies_before_waking(run_id: str, result: Any) -> None:
        # The first wake is lost with the worker: the final record is stored, nobody is told.
        if not died:
            died.append(run_id)
            raise AdapterError("the worker died before waking the waiters")
        await wake(run_id, result)

    monkeypatch.setattr(victim.adapter.results, "publish", dies_before_waking)
    adapter = harness.adapter()
    lookup = adapter.final_result
    looked = asyncio.Event()

    async def looked_up(run_id: str) -> Any:
        result = await lookup(run_id)
        looked.set()
        return result

    # The wait must have read the stores before the run ends, so only a wake can end it.
    monkeypatch.setattr(adapter, "final_result", looked_up)
    client = Client(adapter)
    run_id = await client.start("lost-wake")
    waiting = asyncio.ensure_future(client.wait(run_id, timeout=T))
    await asyncio.wait_for(looked.wait(), T)
    go.set()
    result = await waiting
    assert died == [run_id]
    assert result.status == "completed"
    assert result.context["_outputs.a"] == "done"
