"""A server restarted in the middle of runs: once it is back, every run completes.

The backend's fixture provides servers of the test's own (``restartable``), with the
persistence a production deployment would configure; the test kills them hard mid-run and
starts them again. Workers ride out the outage (their back-off, the queue's redelivery, their
own reconcile passes) without anything beside them.
"""

from __future__ import annotations

import asyncio

import pytest
from conftest import Harness

from backends._fixture import BackendFixture
from flowcraft import NodeContext, create_flow
from flowcraft.distributed import Worker

RUNS = 20
T = 120.0


async def step(ctx: NodeContext) -> int:
    await asyncio.sleep(0.05)
    return int(ctx.input or 0) + 1


async def test_runs_complete_across_a_server_restart(backend: BackendFixture) -> None:
    restartable = getattr(backend, "restartable", None)
    if restartable is None:
        pytest.skip(reason="the fixture cannot restart this backend's servers with their data")
    flow = create_flow("restarted")
    for i in range(4):
        flow.node(f"n{i}", step)
    for i in range(3):
        flow.edge(f"n{i}", f"n{i + 1}")
    async with restartable(lease=2.0) as (deployment, restart):
        harness = Harness(backend)
        harness.deployment = deployment
        harness.add(flow)
        for _ in range(2):
            worker = Worker(
                harness.adapter(), timer_interval=0.05, reconcile_every=1.0, stalled_after=5.0
            )
            worker.start()
            harness.workers.append(worker)
        client = harness.client
        try:
            run_ids = [await client.start("restarted") for _ in range(RUNS)]
            await asyncio.sleep(0.3)  # some runs are mid-chain now
            await restart(1.0)
            run_ids += [await client.start("restarted") for _ in range(RUNS // 2)]
            results = await asyncio.gather(*(client.wait(r, timeout=T) for r in run_ids))
        finally:
            for worker in harness.workers:
                await worker.stop(timeout=5)
    wrong = [(r.run_id, r.status) for r in results if r.status != "completed"]
    assert not wrong, wrong
    assert {r.context["_outputs.n3"] for r in results} == {4}
