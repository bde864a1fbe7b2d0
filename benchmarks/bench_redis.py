"""Redis distributed benchmark: Flowcraft's Redis transports against raw BullMQ and the TS anchor.

Usage: python benchmarks/bench_redis.py [--transports redis,redis-streams] [--runs 50]
       [--reps 3] [--workers 1,2] [--concurrency 8] [--single 10] [--no-raw] [--no-ts]
       [--out FILE]

For each transport (an entry point of ``flowcraft.adapters``; one that cannot be loaded is
reported as missing): ``--runs`` concurrent runs of ``chain20`` and of ``fan20`` (1 → 20 → 1),
served by 1 and 2 worker processes (``python -m flowcraft worker``), each case in a fresh queue
and key namespace: node executions/s and run latency p50/p95. Then single runs of ``chain20``
with one worker: per-hop latency, the completion latency the client sees (last node finished →
``client.wait`` returned), with a 1 KB and with a 1 MB context. In the same session: raw BullMQ
(bullmq's Python worker, no-op jobs, no Flowcraft) and, where Node.js is present, the TypeScript
anchor's ``dist-bench.mjs``: a repetition of each baseline right after each of ours of the
same configuration (the VM's speed drifts within minutes). Figures are medians over ``--reps``;
ratios are taken only against baselines measured in this run, against TS only against its
interleaved repetitions. Writes JSON to ``--out`` and a markdown summary beside it.

Redis: ``REDIS_URL`` if set, else the server of ``flowcraft_services`` (stopped at the end if
this run started it). The anchor gets a private redis-server: it FLUSHALLs before every rep.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import redis as sync_redis
import redis.asyncio as aioredis

# Siblings of this script, importable because its directory leads sys.path.
from bench_inmem import ANCHOR_WORK, prepare_anchor
from redis_app import CHAIN, FAN, FIRST, NODE_COUNT, RAW_JOB, RAW_JOB_OPTS, TERMINAL, app

from flowcraft.distributed import Client
from flowcraft_redis import RedisSettings

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
APP = "benchmarks.redis_app:app"
LOGS = HERE / "results" / "logs"
SHAPES = (CHAIN, FAN)
CHAIN_HOPS = NODE_COUNT[CHAIN] - 1
"""Hops between the first and the last node's finish stamps in a chain."""
KB = 1024
MB = 1024 * KB
RUN_TIMEOUT = 120.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile, as the anchor's dist-bench.mjs computes it."""
    ranked = sorted(values)
    return ranked[min(len(ranked) - 1, max(0, math.ceil(p / 100 * len(ranked)) - 1))]


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds a process has used, from /proc (NaN if unknown)."""
    if pid is None:
        return math.nan
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ------------------------------------------------------------------------------------ servers


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, str]]:
    """``(url, how it was provided)``; stops only a server it started."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url, "REDIS_URL"
        return
    from flowcraft_services import resolve

    service = resolve("redis")
    started = not service.running()
    url = service.start()["REDIS_URL"]
    try:
        yield url, "started by this run" if started else "shared with other users"
    finally:
        if started:
            service.stop()


def server_facts(url: str) -> tuple[str, int | None]:
    """The server's version and, when it runs on this machine, its PID (for CPU figures)."""
    with sync_redis.Redis.from_url(url) as client:
        info = client.info("server")
    pid = int(info["process_id"])
    local = urlparse(url).hostname in ("127.0.0.1", "localhost", "::1")
    return str(info["redis_version"]), pid if local and Path(f"/proc/{pid}").exists() else None


def command_calls(url: str) -> Counter[str]:
    """Commands the server has executed, by name (commands run inside Lua included)."""
    with sync_redis.Redis.from_url(url) as client:
        stats = client.info("commandstats")
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})


@contextlib.contextmanager
def private_redis(pidfile: Path) -> Iterator[int]:
    """A redis-server of our own on a free port, configured as flowcraft_services does."""
    port = free_port()
    server = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--protected-mode", "yes"),
        ],
        stdout=subprocess.DEVNULL,
    )
    pidfile.write_text(str(server.pid))
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with sync_redis.Redis(port=port, socket_timeout=1) as probe:
                    probe.ping()
                break
            except sync_redis.ConnectionError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)


# ------------------------------------------------------------------------------------ workers


async def start_workers(
    command: list[str], count: int, env: Mapping[str, str], case: str
) -> list[subprocess.Popen[bytes]]:
    """``count`` processes running ``command``, once each has logged that it started."""
    LOGS.mkdir(parents=True, exist_ok=True)
    logs = [LOGS / f"{case}-{i}.log" for i in range(count)]
    procs = [spawn(command, env, log) for log in logs]
    deadline = time.monotonic() + 60
    for proc, log in zip(procs, logs, strict=True):
        while b"worker started" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_workers(procs)
                raise RuntimeError(f"a worker did not start; see {log}")
            await asyncio.sleep(0.05)
    return procs


def spawn(command: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def child_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def namespace(url: str) -> RedisSettings:
    """Settings for one case: a queue and key prefixes no other case shares."""
    return RedisSettings(url=url).namespaced(f"b{uuid.uuid4().hex[:10]}")


def drop_keys(url: str, tag: str) -> None:
    # The server may be shared: delete this case's keys rather than leave 1 MB contexts behind.
    with sync_redis.Redis.from_url(url) as client:
        keys = list(client.scan_iter(match=f"*{tag}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])


# ------------------------------------------------------------------------------- flowcraft runs


@dataclass(frozen=True)
class Sample:
    latency: float
    """Seconds from ``client.start`` to ``client.wait`` returning."""
    completion: float
    """Seconds from the last node finishing to ``client.wait`` returning."""
    span: float
    """Seconds between the first and the last node finishing."""


async def one_run(client: Client, shape: str, context: Mapping[str, Any]) -> Sample:
    began = time.perf_counter()
    run_id = await client.start(shape, context)
    result = await client.wait(run_id, timeout=RUN_TIMEOUT)
    seen = time.time()
    latency = time.perf_counter() - began
    if result.status != "completed":
        raise RuntimeError(f"{shape} run {run_id}: {result.status} {result.errors}")
    first = float(result.context[f"_outputs.{FIRST[shape]}"])
    last = float(result.context[f"_outputs.{TERMINAL[shape]}"])
    return Sample(latency=latency, completion=seen - last, span=last - first)


async def batch(
    client: Client, shape: str, runs: int, workers: list[int], redis_pid: int | None
) -> dict[str, Any]:
    """``runs`` runs started at once; throughput, latencies and the CPU each process used."""
    before = [cpu_seconds(pid) for pid in [*workers, redis_pid]]
    client_cpu = time.process_time()
    began = time.perf_counter()
    samples = await asyncio.gather(*(one_run(client, shape, {"seed": 0}) for _ in range(runs)))
    wall = time.perf_counter() - began
    client_cpu = time.process_time() - client_cpu
    used = [cpu_seconds(pid) - b for pid, b in zip([*workers, redis_pid], before, strict=True)]
    latencies = [s.latency * 1000 for s in samples]
    completions = [s.completion * 1000 for s in samples]
    return {
        "wall_s": wall,
        "node_execs_per_s": runs * NODE_COUNT[shape] / wall,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "completion_p50_ms": percentile(completions, 50),
        "completion_p95_ms": percentile(completions, 95),
        "worker_cpu_s": used[:-1],
        "redis_cpu_s": used[-1],
        "client_cpu_s": client_cpu,
    }


async def client_batch(client: Client, shape: str, runs: int) -> dict[str, float]:
    """``runs`` runs started at once: throughput and latencies, no CPU figures (for servers
    this machine cannot attribute CPU to, such as emulators)."""
    began = time.perf_counter()
    samples = await asyncio.gather(*(one_run(client, shape, {"seed": 0}) for _ in range(runs)))
    wall = time.perf_counter() - began
    latencies = [s.latency * 1000 for s in samples]
    completions = [s.completion * 1000 for s in samples]
    return {
        "node_execs_per_s": runs * NODE_COUNT[shape] / wall,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "completion_p50_ms": percentile(completions, 50),
    }


Body = Callable[[Client], Awaitable[Any]]


async def with_workers(
    name: str,
    env: dict[str, str],
    workers: int,
    concurrency: int,
    body: Body,
    factory: Any,
    settings: Any,
    case: str,
) -> Any:
    """``body`` run against a client of backend ``name`` while ``workers`` ``flowcraft
    worker`` processes serve it (their environment: ``env``)."""
    command = [sys.executable, "-m", "flowcraft", "worker", "--backend", name, "--app", APP]
    command += ["--concurrency", str(concurrency), "--grace", "5"]
    procs = await start_workers(command, workers, child_env(**env), f"{name}-{case}")
    adapter = factory(settings, registry=app["registry"], blueprints=app["blueprints"])
    try:
        return await body(Client(adapter))
    finally:
        await adapter.close()
        stop_workers(procs)


def summarise(reps: list[dict[str, Any]], calls: Counter[str], executions: int) -> dict[str, Any]:
    """Medians over repetitions, plus CPU and Redis commands per node execution."""
    out: dict[str, Any] = {"reps": reps}
    for key in ("node_execs_per_s", "p50_ms", "p95_ms", "completion_p50_ms", "wall_s"):
        out[key] = statistics.median(r[key] for r in reps)
    for key in ("worker_cpu_s", "redis_cpu_s", "client_cpu_s"):
        total = sum(sum(r[key]) if isinstance(r[key], list) else r[key] for r in reps)
        out[key[:-2] + "_us_per_node"] = total / executions * 1e6
    calls.pop("info", None)  # our own measurement
    out["redis_commands_per_node"] = calls.total() / executions
    out["redis_commands_per_node_top"] = {n: c / executions for n, c in calls.most_common(12)}
    return out


Factory = Callable[..., Any]


def load_transport(name: str) -> Factory | str:
    """The adapter class registered as ``name``, or why it cannot be used."""
    for entry in entry_points(group="flowcraft.adapters"):
        if entry.name == name:
            try:
                factory: Factory = entry.load()
            except (ImportError, AttributeError) as exc:
                return f"not importable: {exc}"
            return factory
    return "no flowcraft.adapters entry point of that name"


async def flowcraft_case(
    name: str,
    factory: Factory,
    url: str,
    workers: int,
    concurrency: int,
    case: str,
    body: Callable[[Client, list[int]], Awaitable[Any]],
) -> Any:
    """Run ``body`` against ``workers`` fresh worker processes in a fresh namespace."""
    settings = namespace(url)
    env = child_env(
        REDIS_URL=settings.url,
        FLOWCRAFT_REDIS_QUEUE_NAME=settings.queue_name,
        FLOWCRAFT_REDIS_STATE_PREFIX=settings.state_prefix,
        FLOWCRAFT_REDIS_STATUS_PREFIX=settings.status_prefix,
        FLOWCRAFT_REDIS_COORDINATION_PREFIX=settings.coordination_prefix,
    )
    command = [sys.executable, "-m", "flowcraft", "worker", "--backend", name, "--app", APP]
    command += ["--concurrency", str(concurrency), "--grace", "5"]
    procs = await start_workers(command, workers, env, f"{name}-{case}")
    adapter = factory(settings, registry=app["registry"], blueprints=app["blueprints"])
    try:
        return await body(Client(adapter), [p.pid for p in procs])
    finally:
        await adapter.close()
        stop_workers(procs)
        drop_keys(url, settings.coordination_prefix.rstrip(":"))


@dataclass
class Baselines:
    """The baselines whose repetitions follow each of ours (each None when not measured)."""

    anchor: Anchor | None
    raw: RawBullmq | None


RawRep = Callable[[], Awaitable[Any]]


async def throughput(
    client: Client,
    pids: list[int],
    *,
    shape: str,
    workers: int,
    url: str,
    redis_pid: int | None,
    args: argparse.Namespace,
    raw_rep: RawRep | None,
    anchor: Anchor | None,
) -> dict[str, Any]:
    """``--reps`` repetitions of ``--runs`` runs, each followed by one of every baseline."""
    # Warm-up: imports, graph caches and connection pools of every worker.
    await batch(client, shape, min(args.runs, 10), pids, redis_pid)
    reps, ts_reps, raw_reps, calls = [], [], [], Counter[str]()
    for _ in range(args.reps):
        before = command_calls(url)
        reps.append(await batch(client, shape, args.runs, pids, redis_pid))
        calls += command_calls(url) - before
        # Our workers idle meanwhile, blocked in their queue reads.
        if raw_rep is not None:
            raw_reps.append(await raw_rep())
        if anchor is not None:
            ts_reps.append(await asyncio.to_thread(anchor.rep, workers, shape, args.runs))
    stats = summarise(reps, calls, args.runs * NODE_COUNT[shape] * args.reps)
    if ts_reps:
        stats["ts_node_execs_per_s"] = statistics.median(r["node_execs_per_s"] for r in ts_reps)
    if raw_reps:
        stats["raw_jobs_per_s"] = {
            case: {
                mode: statistics.median(r[case][mode]["jobs_per_s"] for r in raw_reps)
                for mode in modes
            }
            for case, modes in raw_reps[0].items()
        }
    return stats


async def bench_transport(
    name: str,
    factory: Factory,
    url: str,
    redis_pid: int | None,
    args: argparse.Namespace,
    baselines: Baselines,
) -> dict[str, Any]:
    out: dict[str, Any] = {"throughput": {}, "single": {}}
    for workers in args.workers:
        async with contextlib.AsyncExitStack() as stack:
            raw_rep = None
            if baselines.raw is not None:
                raw_rep = await stack.enter_async_context(baselines.raw.serving(workers))
            for shape in SHAPES:
                body = functools.partial(
                    throughput,
                    shape=shape,
                    workers=workers,
                    url=url,
                    redis_pid=redis_pid,
                    args=args,
                    raw_rep=raw_rep,
                    anchor=baselines.anchor,
                )
                stats = await flowcraft_case(
                    name, factory, url, workers, args.concurrency, f"{shape}-w{workers}", body
                )
                out["throughput"][f"{shape}-w{workers}"] = stats
                print(
                    f"{name:14s} {shape} W={workers}: node-exec/s {stats['node_execs_per_s']:6.0f}"
                    f"  run p50 {stats['p50_ms']:6.1f} p95 {stats['p95_ms']:6.1f} ms"
                    f"  completion seen p50 {stats['completion_p50_ms']:5.1f} ms"
                    f"  CPU µs/node: workers {stats['worker_cpu_us_per_node']:5.0f}"
                    f" redis {stats['redis_cpu_us_per_node']:4.0f}"
                    f" client {stats['client_cpu_us_per_node']:4.0f}"
                    f"  redis commands/node {stats['redis_commands_per_node']:4.0f}",
                    flush=True,
                )

    async def singles(client: Client, pids: list[int]) -> Any:
        for _ in range(3):
            await one_run(client, CHAIN, {"blob": "x" * KB})
        samples: dict[str, list[Sample]] = {"1KB": [], "1MB": []}
        # Interleaved, so drift in machine load hits both sizes alike.
        for _ in range(args.single):
            for label, size in (("1KB", KB), ("1MB", MB)):
                samples[label].append(await one_run(client, CHAIN, {"blob": "x" * size}))
        return {
            label: {
                "hop_ms": statistics.median(s.span for s in runs) / CHAIN_HOPS * 1000,
                "latency_ms": statistics.median(s.latency for s in runs) * 1000,
                "latency_per_node_ms": statistics.median(s.latency for s in runs)
                / NODE_COUNT[CHAIN]
                * 1000,
                "completion_p50_ms": percentile([s.completion * 1000 for s in runs], 50),
                "completion_p95_ms": percentile([s.completion * 1000 for s in runs], 95),
            }
            for label, runs in samples.items()
        }

    out["single"] = single = await flowcraft_case(
        name, factory, url, 1, args.concurrency, "single", singles
    )
    for label, stats in single.items():
        print(
            f"{name:14s} single chain20 {label} context: per hop {stats['hop_ms']:5.2f} ms"
            f"  run {stats['latency_ms']:6.1f} ms ({stats['latency_per_node_ms']:5.2f}/node)"
            f"  completion seen p50 {stats['completion_p50_ms']:5.1f}"
            f" p95 {stats['completion_p95_ms']:5.1f} ms",
            flush=True,
        )
    return out


# ------------------------------------------------------------------------------ raw BullMQ


async def raw_rate(
    url: str,
    queue: Any,
    counter: aioredis.Redis,
    done_key: str,
    pids: list[int | None],
    jobs: int,
    left: int,
) -> dict[str, float]:
    """Add ``jobs`` jobs that re-add themselves ``left`` times; jobs/s until all completed."""
    cpu = [cpu_seconds(pid) for pid in pids]
    calls = command_calls(url)
    polls = 1
    before = await counter.zcard(done_key)
    total = jobs * (left + 1)
    began = time.perf_counter()
    job = {"name": RAW_JOB, "data": {"left": left}, "opts": RAW_JOB_OPTS}
    await queue.addBulk([job] * jobs)
    while await counter.zcard(done_key) - before < total:
        if time.perf_counter() - began > RUN_TIMEOUT:
            raise RuntimeError(f"raw bullmq: jobs still pending after {RUN_TIMEOUT} s")
        await asyncio.sleep(0.002)
        polls += 1
    wall = time.perf_counter() - began
    used = [cpu_seconds(pid) - c for pid, c in zip(pids, cpu, strict=True)]
    calls = command_calls(url) - calls
    calls["zcard"] -= polls  # our own polling, not the workers'
    calls.pop("info", None)
    return {
        "jobs_per_s": total / wall,
        "worker_cpu_us_per_job": sum(used[:-1]) / total * 1e6,
        "redis_cpu_us_per_job": used[-1] / total * 1e6,
        "redis_commands_per_job": calls.total() / total,
    }


RAW_CLIENTS = {"stock": "", "scripts": "-scripts"}
"""bullmq's own client, and the transport's (``ScriptsClient``); the suffix of their cases."""


class RawBullmq:
    """bullmq's Python worker on no-op jobs, on bullmq's own client and on the one the BullMQ
    transport gives it, one repetition at a time (interleaved with ours, as the anchor's)."""

    def __init__(self, url: str, redis_pid: int | None, args: argparse.Namespace) -> None:
        self._url = url
        self._redis_pid = redis_pid
        self._args = args
        self.reps: dict[str, dict[str, list[dict[str, float]]]] = {}
        """Every repetition, by case (``w1``, ``w1-scripts`` …) and mode (drain, chain)."""

    @contextlib.asynccontextmanager
    async def serving(self, workers: int) -> AsyncIterator[Callable[[], Awaitable[Any]]]:
        """Worker processes of both clients; yields a function running one repetition of each
        (a drained queue, then chains), which returns ``{case: {mode: figures}}``."""
        from bullmq import Queue

        args, url = self._args, self._url
        tag = f"b{uuid.uuid4().hex[:10]}"
        procs: list[subprocess.Popen[bytes]] = []
        cases: list[tuple[str, Any, list[int | None], str]] = []
        counter = aioredis.Redis.from_url(url)
        try:
            for client, suffix in RAW_CLIENTS.items():
                queue_name = f"bench-raw-{tag}{suffix}"
                command = [sys.executable, "-m", "benchmarks.redis_app", queue_name]
                command += [str(args.concurrency), client]
                case = f"w{workers}{suffix}"
                mine = await start_workers(command, workers, child_env(REDIS_URL=url), case)
                procs += mine
                queue = Queue(queue_name, {"connection": url})
                pids: list[int | None] = [*(p.pid for p in mine), self._redis_pid]
                cases.append((case, queue, pids, f"bull:{queue_name}:completed"))
                await raw_rate(url, queue, counter, cases[-1][3], pids, 50, 0)  # warm-up

            async def rep() -> Any:
                out: dict[str, Any] = {}
                for case, queue, pids, done_key in cases:
                    figures = {
                        "drain": await raw_rate(
                            url, queue, counter, done_key, pids, args.runs * 20, 0
                        ),
                        "chain": await raw_rate(url, queue, counter, done_key, pids, args.runs, 19),
                    }
                    for mode, value in figures.items():
                        self.reps.setdefault(case, {}).setdefault(mode, []).append(value)
                    out[case] = figures
                return out

            yield rep
        finally:
            for _, queue, _, _ in cases:
                await queue.close()
            await counter.aclose()
            stop_workers(procs)
            drop_keys(url, tag)

    def summary(self) -> dict[str, Any]:
        """Medians over every repetition of each case, printed."""
        out: dict[str, Any] = {}
        for case, modes in self.reps.items():
            stats: dict[str, Any] = {f"{mode}_reps": reps for mode, reps in modes.items()}
            for mode, reps in modes.items():
                for key in reps[0]:
                    stats[f"{mode}_{key}"] = statistics.median(r[key] for r in reps)
            out[case] = stats
            workers, _, client = case[1:].partition("-")
            print(
                f"raw bullmq{'-' + client if client else '':8s} W={workers}: no-op jobs/s drained"
                f" {stats['drain_jobs_per_s']:6.0f}"
                f" (CPU µs/job workers {stats['drain_worker_cpu_us_per_job']:4.0f}"
                f" redis {stats['drain_redis_cpu_us_per_job']:3.0f};"
                f" {stats['drain_redis_commands_per_job']:.0f} Redis commands/job)"
                f" | as {self._args.runs} chains of 20"
                f" re-added jobs {stats['chain_jobs_per_s']:6.0f}"
                f" (CPU µs/job workers {stats['chain_worker_cpu_us_per_job']:4.0f}"
                f" redis {stats['chain_redis_cpu_us_per_job']:3.0f})",
                flush=True,
            )
        return out


# ---------------------------------------------------------------------------- the TS anchor


class Anchor:
    """The anchor's dist-bench.mjs, one repetition at a time, against a private Redis.

    Its repetitions are interleaved with ours (see ``bench_transport``): this VM's speed drifts
    by up to ±50 % within minutes, so a baseline measured minutes apart from the figure it
    divides could make either look better than it is.
    """

    def __init__(self, node: str, work: Path) -> None:
        self._node = node
        self._work = work
        self.reps: dict[str, list[dict[str, Any]]] = {}
        """Every repetition run, by configuration (``chain20-w1`` …, ``single``)."""

    def rep(self, workers: int, shape: str, runs: int) -> dict[str, Any]:
        """One repetition: ``runs`` runs of ``shape`` on ``workers`` fresh TS workers."""
        command = [self._node, "bench/dist-bench.mjs", "--workers", str(workers)]
        command += ["--shape", shape, "--runs", str(runs), "--reps", "1"]
        proc = subprocess.run(command, cwd=self._work, check=True, capture_output=True, text=True)
        line = next(x for x in proc.stdout.splitlines() if x.startswith("JSON "))
        (rep,) = json.loads(line[5:])["results"]
        if rep["finished"] != runs or rep["bad"]:
            raise RuntimeError(f"TS anchor runs failed:\n{proc.stdout}")
        key = f"{shape}-w{workers}" if runs > 1 else "single"
        self.reps.setdefault(key, []).append(rep)
        return dict(rep)

    def summary(self) -> dict[str, Any]:
        """Medians over every repetition of each configuration."""
        out: dict[str, Any] = {}
        for key, reps in self.reps.items():
            out[key] = stats = {
                "node_execs_per_s": statistics.median(r["node_execs_per_s"] for r in reps),
                "p50_ms": statistics.median(r["p50_ms"] for r in reps),
                "p95_ms": statistics.median(r["p95_ms"] for r in reps),
                "reps": reps,
            }
            if key == "single":
                stats["latency_per_node_ms"] = stats["p50_ms"] / NODE_COUNT[CHAIN]
        return out


@contextlib.contextmanager
def ts_anchor(enabled: bool) -> Iterator[Anchor | None]:
    """The anchor, installed and pointed at a private Redis; None if disabled or no Node.js."""
    node = prepare_anchor() if enabled else None
    if node is None:
        yield None
        return
    # dist-bench.mjs runs bench/worker.mjs from its working directory and reads ../redis.pid;
    # node_modules is found in ANCHOR_WORK, a parent directory.
    work = ANCHOR_WORK / "dist"
    shutil.copytree(ANCHOR_WORK / "bench", work / "bench", dirs_exist_ok=True)
    with private_redis(work / "redis.pid") as port:
        # The anchor hard-codes 127.0.0.1:6390, which another process may hold; point the copy
        # at our server instead.
        shared = (ANCHOR_WORK / "bench" / "shared.mjs").read_text()
        if shared.count("port: 6390") != 1:
            raise RuntimeError("anchor shared.mjs no longer pins port 6390; update bench_redis")
        target = work / "bench" / "shared.mjs"
        target.unlink()  # copied read-only from the anchor
        target.write_text(shared.replace("port: 6390", f"port: {port}"))
        yield Anchor(node, work)


def bench_ts_single(anchor: Anchor) -> None:
    for _ in range(3):
        anchor.rep(1, CHAIN, 1)
    p50 = statistics.median(r["p50_ms"] for r in anchor.reps["single"])
    print(
        f"TS anchor      single chain20: run {p50:6.1f} ms"
        f" ({p50 / NODE_COUNT[CHAIN]:5.2f}/node; client polls every 5 ms)",
        flush=True,
    )


# ------------------------------------------------------------------------- ratios and report


def ratios(report: dict[str, Any]) -> dict[str, Any]:
    """Each transport's throughput over the baselines, configuration by configuration."""
    ts = report.get("ts") or {}
    out: dict[str, Any] = {}
    for name, data in report["transports"].items():
        if "throughput" not in data:
            continue
        mine: dict[str, Any] = {}
        for key, stats in data["throughput"].items():
            workers = key.rsplit("-w", 1)[1]
            r: dict[str, float] = {}
            interleaved = stats.get("raw_jobs_per_s", {})
            for suffix, label in (("", "vs_raw"), ("-scripts", "vs_raw_scripts")):
                if f"w{workers}{suffix}" in interleaved:
                    base = interleaved[f"w{workers}{suffix}"]
                    r[f"{label}_drain"] = stats["node_execs_per_s"] / base["drain"]
                    r[f"{label}_chain"] = stats["node_execs_per_s"] / base["chain"]
            if "ts_node_execs_per_s" in stats:
                r["vs_ts"] = stats["node_execs_per_s"] / stats["ts_node_execs_per_s"]
            mine[key] = r
        single = data["single"]["1KB"]
        if "single" in ts:
            mine["single_latency_vs_ts"] = single["latency_ms"] / ts["single"]["p50_ms"]
        mine["hop_1MB_over_1KB"] = data["single"]["1MB"]["hop_ms"] / single["hop_ms"]
        out[name] = mine
    return out


TARGETS: dict[str, list[tuple[str, str, float, str]]] = {
    # (what, measured key, bound, direction)
    "redis": [
        (
            "node exec/s ≥ 0.8 \N{MULTIPLICATION SIGN} raw BullMQ (drained no-op jobs)",
            "vs_raw_drain",
            0.8,
            ">=",
        ),
        (
            "the same, raw BullMQ on the transport's client (ScriptsClient): orchestration alone",
            "vs_raw_scripts_drain",
            0.8,
            ">=",
        ),
        ("node exec/s ≥ 1.5 \N{MULTIPLICATION SIGN} TS", "vs_ts", 1.5, ">="),
    ],
    "redis-streams": [
        ("node exec/s ≥ 4 \N{MULTIPLICATION SIGN} TS at equal workers", "vs_ts", 4.0, ">="),
        ("single-run per hop ≤ 1 ms", "hop_ms", 1.0, "<="),
    ],
}
COMMON_TARGETS = [
    ("completion seen by the client ≤ 10 ms after the last node", "completion_p50_ms", 10.0, "<="),
    ("per hop at 1 MB ≤ 1.2 \N{MULTIPLICATION SIGN} at 1 KB", "hop_1MB_over_1KB", 1.2, "<="),
]


def target_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, data in report["transports"].items():
        if "throughput" not in data:
            continue
        mine = report["ratios"][name]
        for what, key, bound, direction in TARGETS.get(name, []) + COMMON_TARGETS:
            if key == "hop_ms":
                values = {"single run": data["single"]["1KB"]["hop_ms"]}
                unit = " ms"
            elif key == "completion_p50_ms":
                # Judged on an idle system; under load the wait is the workers' backlog.
                values = {"single run": data["single"]["1KB"]["completion_p50_ms"]}
                unit = " ms"
            elif key == "hop_1MB_over_1KB":
                values = {"single run": mine[key]}
                unit = "\N{MULTIPLICATION SIGN}"
            else:
                values = {k: v[key] for k, v in mine.items() if isinstance(v, dict) and key in v}
                unit = "\N{MULTIPLICATION SIGN}"
            if not values:
                rows.append((name, what, "baseline not measured", "-"))
                continue
            worst = (min if direction == ">=" else max)(values.values())
            met = worst >= bound if direction == ">=" else worst <= bound
            shown = ", ".join(f"{k} {v:.2f}{unit}" for k, v in values.items())
            rows.append((name, what, shown, "met" if met else "**missed**"))
    return rows


def markdown(report: dict[str, Any], args: argparse.Namespace) -> str:
    ts, raw = report.get("ts") or {}, report.get("raw_bullmq") or {}
    lines = [
        f"- Command: `{' '.join(['python benchmarks/bench_redis.py', *report['argv']])}`"
        f" ({report['elapsed_s']:.0f} s)",
        f"- Machine: {report['machine']}; Redis {report['redis_version']} ({report['redis']})",
        f"- Date: {report['date']}, load average {report['load_average']} at start.",
        f"- {args.runs} concurrent runs per repetition, median of {args.reps} repetitions;"
        f" worker concurrency {args.concurrency} (the TS worker's is 5); CPU is user + system"
        " per node execution, summed over worker processes.",
        "- ÷ raw BullMQ and ÷ TS: over their repetitions run right after each of ours (of the"
        " same worker count, and for TS the same shape); their rows give the medians of all.",
        "",
        "| transport | shape | workers | node exec/s | run p50 / p95 ms | completion seen p50 ms"
        " | CPU µs/node workers / redis | Redis cmds/node | ÷ raw BullMQ drained / chained"
        " (stock client; on ScriptsClient)"
        " | ÷ TS |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, data in report["transports"].items():
        if "throughput" not in data:
            lines.append(f"| `{name}` | {data['missing']} | | | | | | | | |")
            continue
        for key, s in data["throughput"].items():
            shape, workers = key.rsplit("-w", 1)
            r = report["ratios"][name][key]
            raw_cell = "-"
            if "vs_raw_drain" in r:
                raw_cell = f"{r['vs_raw_drain']:.2f} / {r['vs_raw_chain']:.2f}"
            if "vs_raw_scripts_drain" in r:
                raw_cell += f"; {r['vs_raw_scripts_drain']:.2f} / {r['vs_raw_scripts_chain']:.2f}"
            ts_cell = f"**{r['vs_ts']:.2f}**" if "vs_ts" in r else "-"
            lines.append(
                f"| `{name}` | {shape} | {workers} | {s['node_execs_per_s']:,.0f}"
                f" | {s['p50_ms']:.0f} / {s['p95_ms']:.0f} | {s['completion_p50_ms']:.1f}"
                f" | {s['worker_cpu_us_per_node']:.0f} / {s['redis_cpu_us_per_node']:.0f}"
                f" | {s['redis_commands_per_node']:.0f} | {raw_cell} | {ts_cell} |"
            )
    for key, s in raw.items():
        workers, _, client = key[1:].partition("-")
        label = "on ScriptsClient" if client else "stock client"
        lines.append(
            f"| raw BullMQ (Python worker, {label}) | drained / chains of 20 | {workers}"
            f" | {s['drain_jobs_per_s']:,.0f} / {s['chain_jobs_per_s']:,.0f} | | |"
            f" {s['drain_worker_cpu_us_per_job']:.0f} / {s['drain_redis_cpu_us_per_job']:.0f}"
            f" (drained) | {s['drain_redis_commands_per_job']:.0f}"
            f" / {s['chain_redis_commands_per_job']:.0f} | | |"
        )
    for key, s in ts.items():
        if key == "single":
            continue
        shape, workers = key.rsplit("-w", 1)
        lines.append(
            f"| TS anchor | {shape} | {workers} | {s['node_execs_per_s']:,.0f}"
            f" | {s['p50_ms']:.0f} / {s['p95_ms']:.0f} | (polls) | | | | |"
        )
    lines += [
        "",
        f"Single runs of chain20, one worker ({args.single} runs per context size,"
        " interleaved; medians). Per hop = (last node's finish - first node's) / 19;"
        " completion seen = `client.wait` returned - last node's finish.",
        "",
        "| transport | context | per hop ms | run ms (÷ 20 nodes) | completion seen p50 / p95 ms"
        " | hop 1 MB ÷ 1 KB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, data in report["transports"].items():
        if "single" not in data:
            continue
        for label, s in data["single"].items():
            ratio = report["ratios"][name]["hop_1MB_over_1KB"] if label == "1MB" else None
            lines.append(
                f"| `{name}` | {label} | {s['hop_ms']:.2f} | {s['latency_ms']:.1f}"
                f" ({s['latency_per_node_ms']:.2f}) | {s['completion_p50_ms']:.1f}"
                f" / {s['completion_p95_ms']:.1f} | {'' if ratio is None else f'{ratio:.2f}'} |"
            )
    if "single" in ts:
        s = ts["single"]
        lines.append(
            f"| TS anchor | `{{seed: 0}}` | | {s['p50_ms']:.1f} ({s['latency_per_node_ms']:.2f})"
            " | its client polls (5 ms here, 500 ms in its docs) | |"
        )
    lines += ["", "| transport | target | measured | |", "|---|---|---|---|"]
    lines += [f"| `{n}` | {w} | {m} | {v} |" for n, w, m, v in target_rows(report)]
    return "\n".join(lines) + "\n"


def csv_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


async def bench_all(
    url: str,
    redis_pid: int | None,
    args: argparse.Namespace,
    report: dict[str, Any],
    anchor: Anchor | None,
) -> None:
    baselines = Baselines(anchor, RawBullmq(url, redis_pid, args) if args.raw else None)
    for name in args.transports:
        factory = load_transport(name)
        if isinstance(factory, str):
            print(f"{name:14s} missing: {factory}", flush=True)
            report["transports"][name] = {"missing": f"missing ({factory})"}
            continue
        report["transports"][name] = await bench_transport(
            name, factory, url, redis_pid, args, baselines
        )
    if baselines.raw is not None:
        report["raw_bullmq"] = baselines.raw.summary()
    if anchor is not None:
        bench_ts_single(anchor)
        report["ts"] = anchor.summary()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--transports",
        default="redis,redis-streams",
        type=lambda s: [x for x in s.split(",") if x],
        help="flowcraft.adapters entry points, comma-separated",
    )
    parser.add_argument("--runs", type=int, default=50, help="concurrent runs per repetition")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=csv_ints, default=[1, 2], help="e.g. 1,2")
    parser.add_argument("--concurrency", type=int, default=8, help="jobs per worker at once")
    parser.add_argument("--single", type=int, default=10, help="single runs per context size")
    parser.add_argument("--no-raw", dest="raw", action="store_false", help="skip raw BullMQ")
    parser.add_argument("--no-ts", dest="ts", action="store_false", help="skip the TS anchor")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "redis.json")
    args = parser.parse_args()

    began = time.monotonic()
    report: dict[str, Any] = {
        "argv": sys.argv[1:],
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average": f"{os.getloadavg()[0]:.1f}",
        "machine": f"{os.cpu_count()} cores, {platform.platform()}, CPython"
        f" {platform.python_version()}",
        "transports": {},
    }
    print(f"{report['machine']}; load average {report['load_average']}", flush=True)
    with redis_server() as (url, provided), ts_anchor(args.ts) as anchor:
        report["redis_version"], redis_pid = server_facts(url)
        report["redis"] = provided
        asyncio.run(bench_all(url, redis_pid, args, report, anchor))
    report["elapsed_s"] = time.monotonic() - began
    report["ratios"] = ratios(report)
    text = markdown(report, args)
    print()
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(text)
    print(f"results written to {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
