"""What the core's scale and observability features cost on Redis: ``./run bench -- redis-extras``.

* **Many waits from one client.** One client process starts and awaits ``--waits`` runs of a
  one-node flow at once (two worker processes serve them): wall time, the client's connections
  at their peak (``CLIENT LIST``, by the client's name, sampled every 50 ms) and its memory
  (peak RSS, and its growth over the burst).
* **Run events.** Workers writing every event of their runs (``--run-events``) against workers
  that do not, on the same shapes, repetitions alternating so the VM's drift hits both alike:
  node executions per second and the ratio.
* **Retention.** Keys and bytes a completed run of each shape leaves on the server.

Redis as in ``bench_redis.py`` (``REDIS_URL``, else a local server). Results are printed and
written to ``benchmarks/results/redis-extras.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis as sync_redis
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
from redis_app import CHAIN, FAN, NODE_COUNT, SINGLE, app

from flowcraft.distributed import Client
from flowcraft_redis import RedisSettings, RedisStreamsAdapter

OUT = Path(__file__).parent / "results" / "redis-extras.md"
WARM_UP = 1


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker_env(settings: RedisSettings, **extra: str) -> dict[str, str]:
    return child_env(
        REDIS_URL=settings.url,
        FLOWCRAFT_REDIS_QUEUE_NAME=settings.queue_name,
        FLOWCRAFT_REDIS_STATE_PREFIX=settings.state_prefix,
        FLOWCRAFT_REDIS_STATUS_PREFIX=settings.status_prefix,
        FLOWCRAFT_REDIS_COORDINATION_PREFIX=settings.coordination_prefix,
        **extra,
    )


def _command(transport: str, concurrency: int, *flags: str) -> list[str]:
    base = [sys.executable, "-m", "flowcraft", "worker", "--backend", transport, "--app", APP]
    return [*base, "--concurrency", str(concurrency), *flags]


async def many_waits(url: str, transport: str, waits: int) -> dict[str, Any]:
    settings = replace(namespace(url), client_name=f"bench-waits-{time.time_ns()}")
    workers = await start_workers(
        _command(transport, 32), 2, _worker_env(settings), f"waits-{transport}"
    )
    adapter = _factory(transport)(settings, registry=app["registry"], blueprints=app["blueprints"])
    client = Client(adapter)
    peak = 0
    sampling = True

    async def sample() -> None:
        nonlocal peak
        with sync_redis.Redis.from_url(url, decode_responses=True) as admin:
            while sampling:
                names = [c.get("name") for c in admin.client_list()]
                peak = max(peak, names.count(settings.client_name))
                await asyncio.sleep(0.05)

    async def one(n: int) -> bool:
        run_id = await client.start(SINGLE, {"n": n})
        return (await client.wait(run_id, timeout=600)).status == "completed"

    sampler = asyncio.ensure_future(sample())
    rss_before = _rss_mb()
    began = time.perf_counter()
    try:
        done = await asyncio.gather(*(one(n) for n in range(waits)))
    finally:
        wall = time.perf_counter() - began
        sampling = False
        with contextlib.suppress(Exception):
            await sampler
        await adapter.close()
        stop_workers(workers)
        drop_keys(url, settings.coordination_prefix.rstrip(":"))
    return {
        "transport": transport,
        "waits": waits,
        "completed": sum(done),
        "wall_s": wall,
        "peak_connections": peak,
        "peak_rss_mb": _rss_mb(),
        "rss_growth_mb": _rss_mb() - rss_before,
    }


async def event_cost(url: str, transport: str, shape: str, runs: int, reps: int) -> dict[str, Any]:
    _, redis_pid = server_facts(url)
    sides: dict[str, tuple[str, ...]] = {"off": (), "on": ("--run-events",)}
    procs, clients, spaces = {}, {}, {}
    try:
        for label, flags in sides.items():
            spaces[label] = namespace(url)
            env = _worker_env(spaces[label])
            procs[label] = await start_workers(
                _command(transport, 8, *flags), 1, env, f"events-{label}"
            )
            clients[label] = Client(
                _factory(transport)(
                    spaces[label], registry=app["registry"], blueprints=app["blueprints"]
                )
            )
        rates: dict[str, list[float]] = {label: [] for label in sides}
        for rep in range(WARM_UP + reps):
            for label in sides:
                pids = [p.pid for p in procs[label]]
                stats = await batch(clients[label], shape, runs, pids, redis_pid)
                if rep >= WARM_UP:
                    rates[label].append(stats["node_execs_per_s"])
    finally:
        for client in clients.values():
            await client.adapter.close()
        for running in procs.values():
            stop_workers(running)
        for space in spaces.values():
            drop_keys(url, space.coordination_prefix.rstrip(":"))
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    return {"transport": transport, "shape": shape, "off": off, "on": on, "ratio": on / off}


async def retention(url: str, transport: str, shape: str, runs: int) -> dict[str, Any]:
    settings = namespace(url)
    tag = settings.coordination_prefix.rstrip(":")
    workers = await start_workers(
        _command(transport, 8), 1, _worker_env(settings), f"retention-{transport}"
    )
    adapter = _factory(transport)(settings, registry=app["registry"], blueprints=app["blueprints"])
    try:
        client = Client(adapter)
        await batch(client, shape, runs, [p.pid for p in workers], None)
    finally:
        await adapter.close()
        stop_workers(workers)
    queue = (":jobs", ":id", ":events", ":meta", ":stalled-check", ":marker")
    with sync_redis.Redis.from_url(url) as admin:
        keys = [
            k
            for k in admin.scan_iter(match=f"*{tag}*", count=1000)
            if not k.endswith(tuple(q.encode() for q in queue))
        ]
        size = sum(admin.memory_usage(k) or 0 for k in keys)
        lasting = [k for k in keys if (admin.pttl(k) or 0) > 120_000]
        forever = [k for k in keys if admin.ttl(k) == -1]
    drop_keys(url, tag)
    return {
        "transport": transport,
        "shape": shape,
        "keys_per_run": len(keys) / runs,
        "bytes_per_run": size / runs,
        "keys_past_a_minute": len(lasting) / runs,
        "without_ttl": len(forever),
    }


def _factory(transport: str) -> Any:
    from flowcraft_redis import RedisAdapter

    return RedisStreamsAdapter if transport == "redis-streams" else RedisAdapter


def markdown(report: dict[str, Any]) -> str:
    lines = [f"`./run bench -- redis-extras` ({report['when']}, Redis {report['redis']})", ""]
    lines += [
        "| transport | runs awaited at once | completed | wall s | peak client connections"
        " | client peak RSS MB (growth) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for w in report["waits"]:
        lines.append(
            f"| `{w['transport']}` | {w['waits']:,} | {w['completed']:,} | {w['wall_s']:.1f} |"
            f" {w['peak_connections']} | {w['peak_rss_mb']:.0f} ({w['rss_growth_mb']:+.0f}) |"
        )
    lines += ["", "| transport | shape | node exec/s events off | on | on ÷ off |"]
    lines += ["|---|---|---:|---:|---:|"]
    for e in report["events"]:
        lines.append(
            f"| `{e['transport']}` | {e['shape']} | {e['off']:,.0f} | {e['on']:,.0f} |"
            f" {e['ratio']:.2f} |"
        )
    lines += ["", "| transport | shape | keys per finished run | bytes | past a minute | no TTL |"]
    lines += ["|---|---|---:|---:|---:|---:|"]
    for r in report["retention"]:
        lines.append(
            f"| `{r['transport']}` | {r['shape']} | {r['keys_per_run']:.1f} |"
            f" {r['bytes_per_run']:,.0f} | {r['keys_past_a_minute']:.1f} | {r['without_ttl']} |"
        )
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with redis_server() as (url, _):
        version, _ = server_facts(url)
        report: dict[str, Any] = {
            "when": time.strftime("%Y-%m-%d %H:%M"),
            "redis": version,
            "waits": [],
            "events": [],
            "retention": [],
        }
        for transport in args.transports:
            report["waits"].append(await many_waits(url, transport, args.waits))
            for shape in (CHAIN, FAN):
                report["events"].append(
                    await event_cost(url, transport, shape, args.runs, args.reps)
                )
                report["retention"].append(await retention(url, transport, shape, 20))
        return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--waits", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument(
        "--transports", type=lambda t: t.split(","), default=["redis-streams", "redis"]
    )
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    text = markdown(report)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(text)
    print(f"written to {OUT.relative_to(ROOT)}; node counts: {NODE_COUNT}")


if __name__ == "__main__":
    main()
