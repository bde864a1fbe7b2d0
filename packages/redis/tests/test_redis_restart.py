"""Workers survive dropped connections and a Redis restart in the middle of runs.

Each test has a redis-server of its own with ``appendonly yes`` and ``appendfsync always``: the
deployment assumption under which a restart, even a crash, loses no write Redis acknowledged.
Without it a restart loses queued jobs and run state, which no client can make up for.

Short outages are ridden out by the client's own retries (``RedisSettings.retries``): runs
just carry on. For a longer one the test cuts those retries to two, so the worker's back-off
has to carry the jobs it holds and its fetching through; a job that gave up half-way through
its steps is then finished by redelivery and, where a step after its result was lost (say the
final result stored but not yet published), by the reconcile pass one worker of the
deployment makes periodically (here every second, for runs idle for 2 s).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import pytest
from redis_test_support import RedisServer

from flowcraft import Flow, NodeContext, create_flow
from flowcraft.distributed import Client, Worker
from flowcraft_redis import RedisAdapter, RedisSettings, RedisStreamsAdapter

T = TypeVar("T")
CHAIN = 6
RUNS = 24
Adapter = type[RedisAdapter] | type[RedisStreamsAdapter]
KINDS = pytest.mark.parametrize(
    "kind", [RedisAdapter, RedisStreamsAdapter], ids=["bullmq", "streams"]
)


async def step(ctx: NodeContext) -> int:
    await asyncio.sleep(0.05)
    return int(ctx.input or 0) + 1


def chain() -> Flow:
    flow = create_flow("restart-chain")
    for i in range(CHAIN):
        flow.node(f"s{i}", step)
        if i:
            flow.edge(f"s{i - 1}", f"s{i}")
    return flow


FLOW = chain()
BLUEPRINT = FLOW.to_blueprint()


async def guarded(step: Awaitable[T], what: str, timeout: float) -> T:
    """``step``, or a failure that shows where every task stands after ``timeout`` s."""
    try:
        return await asyncio.wait_for(step, timeout)
    except TimeoutError:
        print(f"timed out {what}; tasks:", file=sys.stderr)
        for task in asyncio.all_tasks():
            task.print_stack(limit=12, file=sys.stderr)
        raise


@asynccontextmanager
async def deployment(
    server: RedisServer, kind: Adapter, *, retries: int = 10, reconciler: bool = False
) -> AsyncIterator[Client]:
    """Two workers and a client on ``server``; with ``reconciler``, the workers reconcile
    stalled runs themselves every second (no process beside them)."""
    settings = RedisSettings(url=server.url, lease_seconds=5.0, retries=retries)
    adapters = [
        kind(settings, registry=FLOW.function_registry, blueprints={BLUEPRINT.id: BLUEPRINT})
        for _ in range(3)
    ]
    healing = {"reconcile_every": 1.0, "stalled_after": 2.0} if reconciler else {}
    running = [Worker(a, concurrency=8, timer_interval=0.1, **healing) for a in adapters[1:]]
    for worker in running:
        worker.start()
    try:
        yield Client(adapters[0])
    finally:
        for worker in running:
            await guarded(worker.stop(timeout=5), "stopping a worker", 60)
        for adapter in adapters:
            await guarded(adapter.close(), "closing an adapter", 60)


async def start_runs(client: Client) -> list[str]:
    return [await client.start(BLUEPRINT.id, {"seed": i}) for i in range(RUNS)]


async def progressed(server: RedisServer, results: int) -> None:
    """Wait until ``results`` node results are stored: the runs are well under way."""
    with server.client() as probe:
        await until(lambda: len(probe.keys("flowcraft:result:*")) >= results, 30)


async def until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` s passed; whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def dead_letters(server: RedisServer, kind: Adapter) -> int:
    with server.client() as probe:
        if kind is RedisAdapter:
            return int(probe.zcard("bull:flowcraft-queue:failed"))
        return int(probe.xlen("flowcraft-queue:dead"))


async def assert_all_completed(
    server: RedisServer, kind: Adapter, client: Client, run_ids: list[str]
) -> None:
    """Every run completed with every node's output and published its TS status, nothing
    was dead-lettered, and no run is left listed as unfinished."""
    for run_id in run_ids:
        result = await guarded(client.wait(run_id), f"waiting for run {run_id}", 60)
        assert result.status == "completed", (run_id, result.errors)
        outputs = [result.context[f"_outputs.s{i}"] for i in range(CHAIN)]
        assert outputs == list(range(1, CHAIN + 1))
    assert dead_letters(server, kind) == 0
    with server.client() as probe:
        # A run leaves the unfinished set just after it publishes its result.
        await until(lambda: not list(probe.scan_iter(match="flowcraft:runs:*")), 10)
        statuses = probe.mget([f"workflow:status:{run_id}" for run_id in run_ids])
        assert all(s is not None and '"status":"completed"' in s for s in statuses)


@KINDS
async def test_connections_killed_mid_run(
    redis_server: Callable[..., RedisServer], kind: Adapter
) -> None:
    server = redis_server()
    async with deployment(server, kind) as client:
        run_ids = await start_runs(client)
        await progressed(server, RUNS)
        with server.client() as admin:
            for _ in range(3):
                assert admin.client_kill_filter(_type="normal") > 0
                await asyncio.sleep(0.3)
        run_ids += await start_runs(client)
        await assert_all_completed(server, kind, client, run_ids)


@KINDS
@pytest.mark.parametrize(
    ("how", "down_for", "retries"),
    [(signal.SIGTERM, 1.0, 10), (signal.SIGKILL, 1.0, 10), (signal.SIGKILL, 3.0, 2)],
    ids=["shutdown", "crash", "long-outage"],
)
async def test_server_restarted_mid_run(
    redis_server: Callable[..., RedisServer],
    kind: Adapter,
    how: signal.Signals,
    down_for: float,
    retries: int,
) -> None:
    server = redis_server()
    async with deployment(server, kind, retries=retries, reconciler=retries < 10) as client:
        run_ids = await start_runs(client)
        await progressed(server, RUNS)
        await asyncio.to_thread(server.restart, how, down_for)
        run_ids += await start_runs(client)
        await assert_all_completed(server, kind, client, run_ids)
