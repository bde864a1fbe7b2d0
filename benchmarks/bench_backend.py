"""What the benchmarks of the backends that pair a queue with other stores share: their cases
against the bare loop of their driver, interleaved in one run, with Redis Streams beside them.

A backend's script gives its bare loop (an async context manager per worker count whose
``rep(runs)`` pushes ``runs`` chains of messages through bare worker processes and returns
messages per second by driver), its deployments (settings, worker environment and cleanup of a
fresh namespace, for its transports) and its servers; :func:`main` does the rest: for 1 and 2
workers, ``--runs`` concurrent ``chain20`` and ``fan20`` runs per transport, each repetition
followed by one of the bare loop (node executions/s, run p50/p95, completion seen by the
client, ratio to the baseline driver), then single ``chain20`` runs (per-hop latency).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol

from bench_redis import (
    KB,
    Sample,
    client_batch,
    drop_keys,
    load_transport,
    namespace,
    one_run,
    percentile,
    with_workers,
)
from redis_app import CHAIN, FAN, NODE_COUNT

from flowcraft.distributed import Client

HERE = Path(__file__).resolve().parent
CHAIN_HOPS = NODE_COUNT[CHAIN] - 1

Deployment = tuple[Any, dict[str, str], Callable[[], None]]
"""A case's settings, its workers' environment, and the cleanup of its namespace."""


class BareLoop(Protocol):
    async def rep(self, runs: int) -> dict[str, float]:
        """``runs`` chains through the bare workers; messages per second by driver."""
        ...


def redis_streams(servers: dict[str, str]) -> Deployment:
    """A namespace of its own on the Redis of ``servers``, for the Streams transport."""
    redis = namespace(servers["REDIS_URL"])
    env = {
        "REDIS_URL": redis.url,
        "FLOWCRAFT_REDIS_QUEUE_NAME": redis.queue_name,
        "FLOWCRAFT_REDIS_STATE_PREFIX": redis.state_prefix,
        "FLOWCRAFT_REDIS_STATUS_PREFIX": redis.status_prefix,
        "FLOWCRAFT_REDIS_COORDINATION_PREFIX": redis.coordination_prefix,
    }
    return redis, env, lambda: drop_keys(redis.url, redis.coordination_prefix.rstrip(":"))


def find_servers(services: Sequence[tuple[str, Sequence[str]]]) -> dict[str, str]:
    """The variables of each ``(service, variables)``: from the environment where all are set,
    else from the server ``flowcraft_services`` starts. They are exported too, since the bare
    workers and the drivers read them from the environment."""
    from flowcraft_services import resolve

    found: dict[str, str] = {}
    for service, variables in services:
        if all(os.environ.get(v) for v in variables):
            found.update({v: os.environ[v] for v in variables})
        else:
            started = resolve(service).start()
            found.update({v: started[v] for v in variables})
    os.environ.update(found)
    return found


async def compare(
    args: argparse.Namespace,
    deployment: Callable[[str], Deployment],
    bare: Callable[[int], AbstractAsyncContextManager[BareLoop]],
    baseline: str,
) -> dict[str, Any]:
    """Every transport's cases with the bare loop interleaved, then its single runs."""
    report: dict[str, Any] = {"throughput": {}, "single": {}}
    transports = [t for t in args.transports.split(",") if t]
    width = max(len(t) for t in transports) + 2
    for workers in args.workers:
        async with bare(workers) as loop:
            for shape in (CHAIN, FAN):
                for name in transports:
                    stats = await _case(args, name, shape, workers, deployment(name), loop)
                    stats["ratio"] = stats["node_execs_per_s"] / stats[f"bare_{baseline}"]
                    report["throughput"][f"{name} {shape} W={workers}"] = stats
                    drivers = " ".join(
                        f"{key[5:]} {value:5.0f}/s"
                        for key, value in stats.items()
                        if key.startswith("bare_")
                    )
                    print(
                        f"{name:{width}s} {shape} W={workers}: node-exec/s"
                        f" {stats['node_execs_per_s']:6.0f}  p50 {stats['p50_ms']:6.1f}"
                        f" p95 {stats['p95_ms']:6.1f} ms  completion seen"
                        f" {stats['completion_p50_ms']:5.1f} ms | bare {drivers}"
                        f" | ratio {stats['ratio']:.2f}",
                        flush=True,
                    )
    for name in transports:
        single = await _singles(args, name, deployment(name))
        report["single"][name] = single
        print(
            f"{name:{width}s} single chain20: per hop {single['hop_ms']:5.2f} ms  run"
            f" {single['latency_ms']:6.1f} ms  completion seen p50"
            f" {single['completion_p50_ms']:5.1f} p95 {single['completion_p95_ms']:5.1f} ms",
            flush=True,
        )
    return report


async def _case(
    args: argparse.Namespace,
    name: str,
    shape: str,
    workers: int,
    deployment: Deployment,
    loop: BareLoop,
) -> dict[str, float]:
    factory = load_transport(name)
    if isinstance(factory, str):
        raise SystemExit(f"{name}: {factory}")
    settings, env, clean = deployment

    async def body(client: Client) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
        await client_batch(client, shape, min(args.runs, 10))  # warm-up
        reps, bares = [], []
        for _ in range(args.reps):
            reps.append(await client_batch(client, shape, args.runs))
            bares.append(await loop.rep(args.runs))
        return reps, bares

    try:
        reps, bares = await with_workers(
            name, env, workers, args.concurrency, body, factory, settings, f"{shape}-w{workers}"
        )
    finally:
        clean()
    stats = {k: statistics.median(r[k] for r in reps) for k in reps[0]}
    for driver in bares[0]:
        stats[f"bare_{driver}"] = statistics.median(b[driver] for b in bares)
    return stats


async def _singles(args: argparse.Namespace, name: str, deployment: Deployment) -> dict[str, float]:
    settings, env, clean = deployment

    async def body(client: Client) -> list[Sample]:
        for _ in range(3):
            await one_run(client, CHAIN, {"blob": "x" * KB})
        return [await one_run(client, CHAIN, {"blob": "x" * KB}) for _ in range(args.single)]

    try:
        factory = load_transport(name)
        samples = await with_workers(
            name, env, 1, args.concurrency, body, factory, settings, "single"
        )
    finally:
        clean()
    return {
        "hop_ms": statistics.median(s.span for s in samples) / CHAIN_HOPS * 1000,
        "latency_ms": statistics.median(s.latency for s in samples) * 1000,
        "completion_p50_ms": percentile([s.completion * 1000 for s in samples], 50),
        "completion_p95_ms": percentile([s.completion * 1000 for s in samples], 95),
    }


def main(
    backend: str,
    transports: str,
    bench: Callable[[argparse.Namespace], Awaitable[dict[str, Any]]],
) -> None:
    """Parse the shared options, run ``bench`` and write its report to ``--out``."""
    parser = argparse.ArgumentParser(prog=f"bench_{backend}.py")
    parser.add_argument("--transports", default=transports)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--single", type=int, default=10)
    parser.add_argument("--out", default=str(HERE / "results" / f"{backend}.json"))
    args = parser.parse_args()
    report = asyncio.run(bench(args))
    report["args"] = vars(args)
    report["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
