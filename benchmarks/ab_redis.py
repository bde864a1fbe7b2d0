"""A/B of the Redis transports' workers: a git revision against the working tree, rep by rep.

Usage: python benchmarks/ab_redis.py REV [--transport redis-streams] [--shapes chain20,fan20]
       [--reps 12] [--runs 50] [--concurrency 8]

On the VM these benchmarks were made on, every figure of ``bench_redis.py`` drifts by up to
±50 % between runs, so a run before a change and one after cannot tell a 10 % gain. Here one
worker process runs revision REV (checked out in a temporary git worktree) and another the
working tree, each on a queue and key namespace of its own, and the client alternates
``--runs``-run repetitions between them: drift hits both alike. Prints, per shape, the median
node executions/s and worker CPU per node of each side (each side's first two repetitions are
warm-up). Redis as in ``bench_redis.py``. Both clients poll for results every 2 ms, so REV may
predate the pub/sub result channel.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

# Siblings of this script, importable because its directory leads sys.path.
from bench_redis import (
    APP,
    ROOT,
    batch,
    child_env,
    drop_keys,
    namespace,
    redis_server,
    server_facts,
    start_workers,
    stop_workers,
)
from redis_app import NODE_COUNT, app

from flowcraft.backend import PollingResultChannel
from flowcraft.distributed import Client

WARM_UP = 2


async def compare(url: str, source: Path, args: argparse.Namespace) -> None:
    factory = next(e for e in entry_points(group="flowcraft.adapters") if e.name == args.transport)
    adapter_factory: Any = factory.load()
    _, redis_pid = server_facts(url)
    sides = {"base": source, "this": None}
    procs, clients, settings = {}, {}, {}
    try:
        for label, tree in sides.items():
            settings[label] = namespace(url)
            code = (
                []
                if tree is None
                else [tree / f"packages/{p}/src" for p in ("core", "redis-store", "redis")]
            )
            env = child_env(
                REDIS_URL=settings[label].url,
                FLOWCRAFT_REDIS_QUEUE_NAME=settings[label].queue_name,
                FLOWCRAFT_REDIS_STATE_PREFIX=settings[label].state_prefix,
                FLOWCRAFT_REDIS_STATUS_PREFIX=settings[label].status_prefix,
                FLOWCRAFT_REDIS_COORDINATION_PREFIX=settings[label].coordination_prefix,
                PYTHONPATH=":".join(str(p) for p in [*code, ROOT]),
            )
            command = [sys.executable, "-m", "flowcraft", "worker", "--backend", args.transport]
            command += ["--app", APP, "--concurrency", str(args.concurrency)]
            procs[label] = await start_workers(command, 1, env, f"ab-{label}")
            adapter = adapter_factory(
                settings[label], registry=app["registry"], blueprints=app["blueprints"]
            )
            # Both sides' clients poll for results: a revision from before the result channel
            # moved to pub/sub (0d50436) wakes waiters another way, and the comparison is of
            # the workers.
            adapter.results = PollingResultChannel(interval=0.002)
            clients[label] = Client(adapter)
        for shape in args.shapes:
            rates: dict[str, list[float]] = {label: [] for label in sides}
            cpu: dict[str, list[float]] = {label: [] for label in sides}
            for rep in range(WARM_UP + args.reps):
                for label in sides:
                    pids = [p.pid for p in procs[label]]
                    stats = await batch(clients[label], shape, args.runs, pids, redis_pid)
                    if rep >= WARM_UP:
                        rates[label].append(stats["node_execs_per_s"])
                        nodes = args.runs * NODE_COUNT[shape]
                        cpu[label].append(sum(stats["worker_cpu_s"]) / nodes * 1e6)
            for label in sides:
                name = args.base if label == "base" else "working tree"
                print(
                    f"{args.transport} {shape} {name:>12s}: node exec/s median"
                    f" {statistics.median(rates[label]):6.0f}, worker CPU µs/node median"
                    f" {statistics.median(cpu[label]):4.0f}",
                    flush=True,
                )
    finally:
        for client in clients.values():
            await client.adapter.close()
        for running in procs.values():
            stop_workers(running)
        for label in settings:
            drop_keys(url, settings[label].coordination_prefix.rstrip(":"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="git revision to compare the working tree with")
    parser.add_argument("--transport", default="redis-streams")
    parser.add_argument(
        "--shapes", default="chain20,fan20", type=lambda s: [x for x in s.split(",") if x]
    )
    parser.add_argument("--reps", type=int, default=12)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        tree = Path(scratch) / "base"
        subprocess.run(
            ["git", "worktree", "add", "--quiet", "--detach", str(tree), args.base],
            cwd=ROOT,
            check=True,
        )
        try:
            with redis_server() as (url, _):
                asyncio.run(compare(url, tree, args))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT)


if __name__ == "__main__":
    main()
