"""Streams transport: a hop step hands the worker that ran its node the job it runs next.

It reserves one successor: the reserved job waits in the delayed set, due when its lease runs
out, instead of in the stream: the worker handles it next without fetching it, renews it while
it runs and removes it when done. A hop that reserves nothing (a branch whose join is not
complete) takes the stream's next entry instead, as a receive would. These tests look at the
keys while a reserved job runs, count receives, then kill and stop workers holding such jobs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from flowcraft import Flow, NodeContext, create_flow
from flowcraft.distributed import Client, Worker
from flowcraft_redis import RedisSettings, RedisStreamsAdapter, streams

T = 15.0


def gated(flow_id: str, gate: asyncio.Event, calls: list[str]) -> Flow:
    """``a`` → ``b`` → ``c``; ``b`` waits for ``gate`` the first time it runs."""

    async def step(ctx: NodeContext) -> str:
        calls.append(ctx.node_id)
        if ctx.node_id == "b" and calls.count("b") == 1:
            await gate.wait()
        return str(ctx.input or "") + ctx.node_id

    return (
        create_flow(flow_id)
        .node("a", step)
        .node("b", step)
        .node("c", step)
        .edge("a", "b")
        .edge("b", "c")
    )


def fan(flow_id: str, gate: asyncio.Event, calls: list[str]) -> Flow:
    """``a`` → ``b``, ``c``, ``d`` → ``j``; ``c`` waits for ``gate`` the first time it runs."""

    async def step(ctx: NodeContext) -> Any:
        calls.append(ctx.node_id)
        if ctx.node_id == "c" and calls.count("c") == 1:
            await gate.wait()
        return ctx.input if ctx.node_id == "j" else ctx.node_id

    flow = create_flow(flow_id)
    for node in "abcdj":
        flow.node(node, step)
    for branch in "bcd":
        flow.edge("a", branch).edge(branch, "j")
    return flow


class Deployment:
    def __init__(self, url: str, flow: Flow, lease: float) -> None:
        tag = f"t{uuid.uuid4().hex[:8]}"
        self.settings = RedisSettings(url=url, lease_seconds=lease).namespaced(tag)
        self.flow = flow
        self.adapters: list[RedisStreamsAdapter] = []
        self.workers: list[Worker] = []
        self.redis = aioredis.Redis.from_url(url)

    def adapter(self) -> RedisStreamsAdapter:
        blueprint = self.flow.to_blueprint()
        adapter = RedisStreamsAdapter(
            self.settings,
            registry=self.flow.function_registry,
            blueprints={blueprint.id: blueprint},
        )
        self.adapters.append(adapter)
        return adapter

    def worker(self, concurrency: int = 4) -> Worker:
        worker = Worker(self.adapter(), concurrency=concurrency, receive_wait=0.05)
        worker.start()
        self.workers.append(worker)
        return worker

    async def delayed(self) -> list[dict[str, Any]]:
        """The jobs waiting in the delayed set (reservations among them)."""
        entries = await self.redis.zrange(f"{self.settings.queue_name}:delayed", 0, -1)
        return [orjson.loads(entry.decode()[33:]) for entry in entries]

    async def queued(self) -> int:
        return int(await self.redis.xlen(f"{self.settings.queue_name}:jobs"))


async def settled(d: Deployment) -> None:
    """Wait until no job is left in the delayed set or the stream (the last job is acked
    just after its run's result is published)."""
    for _ in range(int(T / 0.01)):
        if not (await d.delayed() or await d.queued()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"jobs left: {await d.delayed()}, {await d.queued()} in the stream")


@asynccontextmanager
async def deployed(url: str, flow: Flow, lease: float = 5.0) -> AsyncIterator[Deployment]:
    deployment = Deployment(url, flow, lease)
    try:
        yield deployment
    finally:
        for worker in deployment.workers:
            if not worker.stopping:
                await worker.stop(timeout=2)
        for adapter in deployment.adapters:
            await adapter.close()
        await deployment.redis.aclose()


async def running(calls: list[str], node_id: str) -> None:
    """Wait until ``node_id`` has started."""
    for _ in range(int(T / 0.01)):
        if node_id in calls:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{node_id} never started: {calls}")


async def test_a_chain_successor_is_reserved_not_queued(redis_url: str) -> None:
    gate, calls = asyncio.Event(), []
    async with deployed(redis_url, gated("reserve", gate, calls)) as d:
        client = Client(d.adapter())
        d.worker()
        run_id = await client.start("reserve", {})
        await running(calls, "b")
        reserved = await d.delayed()
        assert [(j["runId"], j["nodeId"]) for j in reserved] == [(run_id, "b")]
        assert await d.queued() == 0  # a's entry acked, b never entered the stream
        gate.set()
        result = await client.wait(run_id, timeout=T)
        assert result.status == "completed"
        assert result.context["_outputs.c"] == "abc"
        assert calls == ["a", "b", "c"]
        await settled(d)  # each reservation removed once its job was done


async def test_a_killed_workers_reservation_comes_due_for_another(redis_url: str) -> None:
    gate, calls = asyncio.Event(), []
    async with deployed(redis_url, gated("killed", gate, calls), lease=0.5) as d:
        client = Client(d.adapter())
        victim = d.worker()
        run_id = await client.start("killed", {})
        await running(calls, "b")
        victim.kill()  # dies holding the reserved b: no renewal, no removal
        d.worker()
        result = await client.wait(run_id, timeout=T)
        assert result.status == "completed"
        assert result.context["_outputs.c"] == "abc"
        assert calls == ["a", "b", "b", "c"]
        await settled(d)


async def test_a_long_reserved_job_is_renewed_not_redelivered(redis_url: str) -> None:
    gate, calls = asyncio.Event(), []
    async with deployed(redis_url, gated("renewed", gate, calls), lease=0.3) as d:
        client = Client(d.adapter())
        d.worker()
        d.worker()
        run_id = await client.start("renewed", {})
        await running(calls, "b")
        await asyncio.sleep(1.2)  # four leases: the heartbeat keeps the reservation
        gate.set()
        result = await client.wait(run_id, timeout=T)
        assert result.status == "completed"
        assert calls == ["a", "b", "c"]


async def test_a_stopping_worker_hands_its_reservation_back(redis_url: str) -> None:
    gate, calls = asyncio.Event(), []
    async with deployed(redis_url, gated("stopped", gate, calls)) as d:
        client = Client(d.adapter())
        first = d.worker()
        run_id = await client.start("stopped", {})
        await running(calls, "b")
        await first.stop(timeout=0.2)  # b outlives the grace: released to the stream at once
        assert await d.delayed() == []
        assert await d.queued() == 1
        gate.set()
        d.worker()
        result = await client.wait(run_id, timeout=T)
        assert result.status == "completed"
        assert result.context["_outputs.c"] == "abc"


async def test_a_branch_hop_takes_the_next_queued_branch(redis_url: str) -> None:
    gate, calls = asyncio.Event(), []
    gate.set()
    async with deployed(redis_url, fan("takes", gate, calls)) as d:
        client = Client(d.adapter())
        worker = d.worker(concurrency=1)
        received: list[int] = []
        receive = worker.adapter.queue.receive

        async def counting(max_jobs: int, wait: float) -> Any:
            deliveries = await receive(max_jobs, wait)
            received.append(len(deliveries))
            return deliveries

        worker.adapter.queue.receive = counting  # type: ignore[method-assign]
        result = await client.run("takes", {}, timeout=T)
        assert result.status == "completed", result.errors
        assert result.context["_outputs.j"] == {"b": "b", "c": "c", "d": "d"}
        # a's hop reserves b and queues c and d; b's hop takes c, c's takes d, d's reserves j:
        # the only job received is the client's start job (without takes: a, c and d). A hop
        # does not take while promoting delayed jobs is due (every 0.1 s), which a slow
        # machine may hit once here.
        assert sum(received) <= 2
        assert calls == ["a", "b", "c", "d", "j"]
        await settled(d)


async def test_a_killed_workers_taken_job_is_taken_over(redis_url: str) -> None:
    gate, calls = asyncio.Event(), []
    async with deployed(redis_url, fan("taken-killed", gate, calls), lease=0.5) as d:
        client = Client(d.adapter())
        victim = d.worker(concurrency=1)
        run_id = await client.start("taken-killed", {})
        await running(calls, "c")  # taken by b's hop
        victim.kill()  # dies holding c: it stays pending in the group until its lease ends
        assert await d.queued() == 2  # c (pending) and d
        d.worker()
        result = await client.wait(run_id, timeout=T)
        assert result.status == "completed", result.errors
        assert result.context["_outputs.j"] == {"b": "b", "c": "c", "d": "d"}
        assert sorted(calls) == ["a", "b", "c", "c", "d", "j"]
        await settled(d)


async def test_hop_steps_stop_taking_while_a_receive_is_due(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slot that keeps taking entries in its hop steps never receives, and only a receive
    # promotes due delayed jobs and takes over the entries of dead workers.
    clock = [1000.0]
    monkeypatch.setattr(streams, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    gate, calls = asyncio.Event(), []
    async with deployed(redis_url, fan("due", gate, calls), lease=60.0) as d:
        queue = d.adapter().queue
        assert not queue.taking  # nothing promoted or claimed yet
        await queue.receive(1, 0.01)
        assert queue.taking
        clock[0] += 0.15  # delayed jobs are promoted every 0.1 s
        assert not queue.taking
        await queue.receive(1, 0.01)
        assert queue.taking
        clock[0] += 15.0  # and stale entries taken over every quarter lease
        await queue.receive(1, 0.01)
        assert queue.taking
