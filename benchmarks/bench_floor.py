"""Core's floor: what a distributed hop costs in Python with stores that cost nothing.

Usage: python benchmarks/bench_floor.py [--runs 50] [--reps 3]

50 concurrent chain20 and fan20 runs go through one `Worker` (concurrency 32) over the
in-memory backend, in each of its three hop modes: ``step`` (one atomic hop step, as Redis
Streams does in Lua), ``split`` (claim, patch, enqueue, count done: the path of every backend
whose queue and stores are separate servers) and ``generic`` (a store call per bookkeeping
write). No server, no driver, no serialisation on a wire: what is left is core's own work per
node execution, the least any backend pays on top of its drivers. The same runs in the
in-process ``FlowRuntime`` are the baseline, interleaved with every repetition.

Reported: node executions/s and process CPU per node execution (worker and client share the
process), medians over the repetitions; ratio = mode ÷ in-process runtime of the same rep.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from flowcraft import Flow, FlowRuntime, NodeContext, create_flow
from flowcraft.distributed import Client, Worker
from flowcraft.memory import MemoryAdapter, MemoryBackend

Mode = bool | Literal["split"]
MODES: dict[str, Mode] = {"step": True, "split": "split", "generic": False}


async def _inc(ctx: NodeContext) -> int:
    value = ctx.input
    return (value if isinstance(value, int) else 0) + 1


def _chain(n: int) -> Flow:
    flow = create_flow(f"chain{n}")
    for i in range(n):
        flow.node(f"n{i}", _inc)
        if i:
            flow.edge(f"n{i - 1}", f"n{i}")
    return flow


def _fan(width: int) -> Flow:
    flow = create_flow(f"fan{width}").node("start", _inc)
    for i in range(width):
        flow.node(f"p{i}", _inc).edge("start", f"p{i}").edge(f"p{i}", "join")
    return flow.node("join", _inc, config={"joinStrategy": "all"})


async def _timed(runs: int, nodes: int, batch: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """(node executions/s, CPU µs per node execution) of one batch of runs."""
    wall, cpu = time.perf_counter(), time.process_time()
    await batch()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return runs * nodes / wall, cpu / (runs * nodes) * 1e6


async def _distributed(flow: Flow, nodes: int, mode: Mode, runs: int) -> tuple[float, float]:
    blueprint = flow.to_blueprint()
    options: dict[str, Any] = {
        "registry": flow.function_registry,
        "blueprints": {blueprint.id: blueprint},
    }
    backend = MemoryBackend(hop_step=mode)
    worker = Worker(MemoryAdapter(backend, **options), concurrency=32, receive_wait=0.05)
    worker.start()
    client = Client(MemoryAdapter(backend, **options))
    try:
        await client.run(blueprint.id, {}, timeout=60)

        async def batch() -> None:
            results = await asyncio.gather(
                *(client.run(blueprint.id, {}, timeout=120) for _ in range(runs))
            )
            if any(r.status != "completed" for r in results):
                raise RuntimeError(f"{blueprint.id}: a run did not complete")

        return await _timed(runs, nodes, batch)
    finally:
        await worker.stop(timeout=5)


async def _inprocess(flow: Flow, nodes: int, runs: int) -> tuple[float, float]:
    runtime = FlowRuntime()
    blueprint = flow.to_blueprint()
    registry = flow.function_registry
    await runtime.run(blueprint, function_registry=registry)

    async def batch() -> None:
        await asyncio.gather(
            *(runtime.run(blueprint, function_registry=registry) for _ in range(runs))
        )

    return await _timed(runs, nodes, batch)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    shapes = {"chain20": (_chain(20), 20), "fan20": (_fan(20), 22)}
    rows: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for _ in range(args.reps):
        for shape, (flow, nodes) in shapes.items():
            base, base_cpu = await _inprocess(flow, nodes, args.runs)
            rows.setdefault((shape, "in-process"), []).append((base, base_cpu, 1.0))
            for name, mode in MODES.items():
                rate, cpu = await _distributed(flow, nodes, mode, args.runs)
                rows.setdefault((shape, name), []).append((rate, cpu, rate / base))
    print(f"python {platform.python_version()}, {args.runs} concurrent runs, {args.reps} reps")
    print("| shape | path | node exec/s | CPU µs/node | ÷ in-process |")
    print("|---|---|---:|---:|---:|")
    for (shape, name), values in rows.items():
        rate = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        ratio = statistics.median(v[2] for v in values)
        print(f"| {shape} | {name} | {rate:,.0f} | {cpu:,.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
