"""SQS + DynamoDB benchmark: Flowcraft's SQS backend against the bare driver loop.

Usage: python benchmarks/bench_sqs.py [--runs 50] [--reps 3] [--workers 1,2]
       [--concurrency 16] [--single 10] [--no-redis] [--out FILE]

For 1 and 2 worker processes (``python -m flowcraft worker --backend sqs``): ``--runs``
concurrent runs of ``chain20`` and of ``fan20`` (the shapes of ``redis_app``), each case in a
fresh queue and key prefix: node executions/s, run latency p50/p95 and the completion the
client sees (last node finished → ``client.wait`` returned). After each repetition, with the
same number of processes, the bare loop of both drivers on the same servers — receive (long
poll, up to 10) → delete → send the next message, no Flowcraft — once with aiobotocore on the
event loop and once with boto3 in threads, as many chains as runs, as many messages as node
executions. Then single ``chain20`` runs: per-hop latency and completion seen. Last, the same
throughput cases on Redis Streams (``redis-streams``), for the figure beside ours.

Servers: ElasticMQ (SQS) and DynamoDB Local from ``flowcraft_services`` (each provider exports
variables of its own, so an env file from ``services up all`` names these two); Redis likewise.
Writes JSON to ``--out`` and a markdown summary beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

# Siblings of this script, importable because its directory leads sys.path.
import bench_redis
from bench_redis import (
    Sample,
    batch,
    child_env,
    cpu_seconds,
    load_transport,
    one_run,
    percentile,
    start_workers,
    stop_workers,
)
from redis_app import CHAIN, FAN, NODE_COUNT, app

from flowcraft.distributed import Client
from flowcraft_sqs import SqsAdapter, SqsSettings

HERE = Path(__file__).resolve().parent
# Fifty concurrent chain20 runs on one worker against two JVM emulators sharing a loaded
# two-core machine can take longer than the Redis harness's two minutes: a run that is slow
# is measured, not failed.
bench_redis.RUN_TIMEOUT = 900.0
ROOT = HERE.parent
APP = "benchmarks.redis_app:app"
SHAPES = (CHAIN, FAN)
CHAIN_HOPS = NODE_COUNT[CHAIN] - 1
TABLE = "flowcraft-bench"
KB = 1024


def start_service(name: str) -> dict[str, str]:
    from flowcraft_services import resolve

    return dict(resolve(name).start())


class Servers:
    """The endpoints of this run and the environment handed to every child process."""

    def __init__(self) -> None:
        sqs = start_service("elasticmq")
        dynamodb = start_service("dynamodb-local")
        self.env = {
            "AWS_ACCESS_KEY_ID": sqs["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": sqs["AWS_SECRET_ACCESS_KEY"],
            "AWS_DEFAULT_REGION": sqs["AWS_DEFAULT_REGION"],
            "AWS_ENDPOINT_URL_SQS": sqs["AWS_ENDPOINT_URL_SQS"],
            "AWS_ENDPOINT_URL_DYNAMODB": dynamodb["AWS_ENDPOINT_URL_DYNAMODB"],
        }
        os.environ.update(self.env)
        self.settings = SqsSettings(table=TABLE)

    def fresh(self) -> SqsSettings:
        tag = f"b{uuid.uuid4().hex[:10]}"
        return replace(self.settings, queue=tag, key_prefix=f"{tag}/")

    def worker_env(self, settings: SqsSettings) -> dict[str, str]:
        return child_env(
            **self.env,
            FLOWCRAFT_SQS_QUEUE=settings.queue,
            FLOWCRAFT_SQS_TABLE=settings.table,
            FLOWCRAFT_SQS_KEY_PREFIX=settings.key_prefix,
        )


def server_pids() -> list[int]:
    """PIDs of the emulators this checkout runs (for their CPU), where recorded."""
    from flowcraft_services.state import RunState

    pids: list[int] = []
    for name in ("elasticmq", "dynamodb-local"):
        state = RunState.load(name)
        if state is not None:
            pids += [p.pid for p in state.processes]
    return pids


# ---------------------------------------------------------------------------- bare loop


async def bare_aiobotocore(url: str, done_url: str, concurrency: int, stop: asyncio.Event) -> None:
    """receive → delete → send the next message of the chain, on aiobotocore."""
    from aiobotocore.session import get_session
    from botocore.config import Config

    config = Config(max_pool_connections=64, read_timeout=30)
    async with get_session().create_client("sqs", config=config) as sqs:
        slots = asyncio.Semaphore(concurrency)

        async def one(message: Mapping[str, Any]) -> None:
            try:
                await sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                left = int(message["Body"]) - 1
                target = url if left > 0 else done_url
                await sqs.send_message(QueueUrl=target, MessageBody=str(left))
            finally:
                slots.release()

        tasks: set[asyncio.Task[None]] = set()
        while not stop.is_set():
            await slots.acquire()
            free = 1
            while not slots.locked() and free < 10:
                await slots.acquire()
                free += 1
            reply = await sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=free, WaitTimeSeconds=1
            )
            messages = reply.get("Messages", [])
            for _ in range(free - len(messages)):
                slots.release()
            for message in messages:
                task = asyncio.ensure_future(one(message))
                tasks.add(task)
                task.add_done_callback(tasks.discard)


def bare_boto3(url: str, done_url: str, concurrency: int, stop: Callable[[], bool]) -> None:
    """The same loop with boto3, blocking calls in ``concurrency`` threads."""
    import boto3
    from botocore.config import Config

    sqs = boto3.client("sqs", config=Config(max_pool_connections=64, read_timeout=30))

    def slot() -> None:
        while not stop():
            reply = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=1)
            for message in reply.get("Messages", []):
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                left = int(message["Body"]) - 1
                sqs.send_message(QueueUrl=url if left > 0 else done_url, MessageBody=str(left))

    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(slot)


def bare_worker(driver: str, url: str, done_url: str, concurrency: int) -> None:
    """Entry of a bare-loop process: serve until SIGTERM."""
    import signal

    if driver == "boto3":
        stopping = False

        def on_term(*_: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, on_term)
        print("worker started", flush=True)
        bare_boto3(url, done_url, concurrency, lambda: stopping)
        return

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print("worker started", flush=True)
        serve = asyncio.ensure_future(bare_aiobotocore(url, done_url, concurrency, stop))
        await stop.wait()
        serve.cancel()
        with contextlib.suppress(BaseException):
            await serve

    asyncio.run(main())


class Bare:
    """Bare-loop processes of one driver, serving a queue of their own."""

    def __init__(self, servers: Servers, driver: str, workers: int, concurrency: int) -> None:
        self.servers = servers
        self.driver = driver
        self.workers = workers
        self.concurrency = concurrency
        self.procs: list[Any] = []

    async def __aenter__(self) -> Bare:
        import boto3

        self.sqs = boto3.client("sqs")
        tag = f"bare{uuid.uuid4().hex[:8]}"
        self.url = self.sqs.create_queue(QueueName=tag)["QueueUrl"]
        self.done_url = self.sqs.create_queue(QueueName=tag + "-done")["QueueUrl"]
        command = [sys.executable, str(HERE / "bench_sqs.py"), "--bare-worker", self.driver]
        command += [self.url, self.done_url, str(self.concurrency)]
        env = child_env(**self.servers.env)
        self.procs = await start_workers(
            command, self.workers, env, f"sqs-bare-{self.driver}-w{self.workers}"
        )
        return self

    async def __aexit__(self, *_: Any) -> None:
        stop_workers(self.procs)
        for url in (self.url, self.done_url):
            self.sqs.delete_queue(QueueUrl=url)

    async def rep(self, chains: int, length: int) -> dict[str, float]:
        """``chains`` chains of ``length`` messages; messages/s and worker CPU per message."""
        pids = [p.pid for p in self.procs]
        before = [cpu_seconds(pid) for pid in pids]
        began = time.perf_counter()
        for start in range(0, chains, 10):
            entries = [
                {"Id": str(i), "MessageBody": str(length)}
                for i in range(start, min(chains, start + 10))
            ]
            self.sqs.send_message_batch(QueueUrl=self.url, Entries=entries)
        finished = 0
        while finished < chains:
            reply = await asyncio.to_thread(
                self.sqs.receive_message,
                QueueUrl=self.done_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
            )
            for message in reply.get("Messages", []):
                finished += 1
                self.sqs.delete_message(
                    QueueUrl=self.done_url, ReceiptHandle=message["ReceiptHandle"]
                )
        wall = time.perf_counter() - began
        cpu = sum(cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True))
        return {
            "msgs_per_s": chains * length / wall,
            "cpu_us_per_msg": cpu / (chains * length) * 1e6,
        }


# ------------------------------------------------------------------------------ Flowcraft


async def with_workers(
    name: str,
    factory: Callable[..., Any],
    settings: Any,
    env: Mapping[str, str],
    workers: int,
    concurrency: int,
    case: str,
    body: Callable[[Client, list[int]], Awaitable[Any]],
) -> Any:
    command = [sys.executable, "-m", "flowcraft", "worker", "--backend", name, "--app", APP]
    command += ["--concurrency", str(concurrency), "--grace", "5"]
    procs = await start_workers(command, workers, env, f"{name}-{case}")
    adapter = factory(settings, registry=app["registry"], blueprints=app["blueprints"])
    try:
        return await body(Client(adapter), [p.pid for p in procs])
    finally:
        await adapter.close()
        stop_workers(procs)


def median(reps: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in reps)


async def throughput(servers: Servers, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    emulators = server_pids()
    for workers in args.workers:
        async with (
            Bare(servers, "aiobotocore", workers, args.concurrency) as aio,
            Bare(servers, "boto3", workers, args.concurrency) as threads,
        ):
            for shape in SHAPES:
                settings = servers.fresh()

                async def body(client: Client, pids: list[int], shape: str = shape) -> Any:
                    await batch(client, shape, min(args.runs, 10), pids, None)
                    reps: list[dict[str, Any]] = []
                    bare: dict[str, list[dict[str, float]]] = {"aiobotocore": [], "boto3": []}
                    for _ in range(args.reps):
                        before = sum(cpu_seconds(p) for p in emulators)
                        rep = await batch(client, shape, args.runs, pids, None)
                        rep["server_cpu_us_per_node"] = (
                            (sum(cpu_seconds(p) for p in emulators) - before)
                            / (args.runs * NODE_COUNT[shape])
                            * 1e6
                        )
                        reps.append(rep)
                        for loop in (aio, threads):
                            bare[loop.driver].append(await loop.rep(args.runs, NODE_COUNT[shape]))
                    return reps, bare

                reps, bare = await with_workers(
                    "sqs",
                    SqsAdapter,
                    settings,
                    servers.worker_env(settings),
                    workers,
                    args.concurrency,
                    f"{shape}-w{workers}",
                    body,
                )
                executions = args.runs * NODE_COUNT[shape] * args.reps
                stats = {
                    "reps": reps,
                    "node_execs_per_s": median(reps, "node_execs_per_s"),
                    "p50_ms": median(reps, "p50_ms"),
                    "p95_ms": median(reps, "p95_ms"),
                    "completion_p50_ms": median(reps, "completion_p50_ms"),
                    "completion_p95_ms": median(reps, "completion_p95_ms"),
                    "worker_cpu_us_per_node": sum(sum(r["worker_cpu_s"]) for r in reps)
                    / executions
                    * 1e6,
                    "server_cpu_us_per_node": median(reps, "server_cpu_us_per_node"),
                    "bare": {
                        driver: {
                            "msgs_per_s": median(runs, "msgs_per_s"),
                            "cpu_us_per_msg": median(runs, "cpu_us_per_msg"),
                        }
                        for driver, runs in bare.items()
                    },
                }
                stats["ratio"] = (
                    stats["node_execs_per_s"] / stats["bare"]["aiobotocore"]["msgs_per_s"]
                )
                out[f"{shape}-w{workers}"] = stats
                print(
                    f"sqs {shape} W={workers}: node-exec/s {stats['node_execs_per_s']:6.0f}"
                    f"  run p50 {stats['p50_ms']:6.0f} p95 {stats['p95_ms']:6.0f} ms"
                    f"  completion seen p50 {stats['completion_p50_ms']:5.1f} ms"
                    f"  worker CPU µs/node {stats['worker_cpu_us_per_node']:5.0f}"
                    f"  | bare aiobotocore {stats['bare']['aiobotocore']['msgs_per_s']:6.0f}/s"
                    f" ({stats['bare']['aiobotocore']['cpu_us_per_msg']:4.0f} µs CPU/msg)"
                    f"  boto3 threads {stats['bare']['boto3']['msgs_per_s']:6.0f}/s"
                    f" ({stats['bare']['boto3']['cpu_us_per_msg']:4.0f} µs CPU/msg)"
                    f"  ratio {stats['ratio']:.2f}",
                    flush=True,
                )
    return out


async def singles(servers: Servers, args: argparse.Namespace) -> dict[str, Any]:
    settings = servers.fresh()

    async def body(client: Client, pids: list[int]) -> Any:
        for _ in range(3):
            await one_run(client, CHAIN, {"blob": "x" * KB})
        runs: list[Sample] = [
            await one_run(client, CHAIN, {"blob": "x" * KB}) for _ in range(args.single)
        ]
        return {
            "hop_ms": statistics.median(s.span for s in runs) / CHAIN_HOPS * 1000,
            "latency_ms": statistics.median(s.latency for s in runs) * 1000,
            "completion_p50_ms": percentile([s.completion * 1000 for s in runs], 50),
            "completion_p95_ms": percentile([s.completion * 1000 for s in runs], 95),
        }

    stats: dict[str, Any] = await with_workers(
        "sqs",
        SqsAdapter,
        settings,
        servers.worker_env(settings),
        1,
        args.concurrency,
        "single",
        body,
    )
    print(
        f"sqs single chain20 1KB: per hop {stats['hop_ms']:5.2f} ms  run {stats['latency_ms']:6.1f}"
        f" ms  completion seen p50 {stats['completion_p50_ms']:5.1f}"
        f" p95 {stats['completion_p95_ms']:5.1f} ms",
        flush=True,
    )
    return stats


async def redis_streams(args: argparse.Namespace) -> dict[str, Any]:
    """The same throughput cases on Redis Streams, for the figure beside ours."""
    from flowcraft_redis import RedisSettings

    factory = load_transport("redis-streams")
    if isinstance(factory, str):
        return {"error": factory}
    url = start_service("redis")["REDIS_URL"]
    out: dict[str, Any] = {}
    for workers in args.workers:
        for shape in SHAPES:
            settings = RedisSettings(url=url).namespaced(f"b{uuid.uuid4().hex[:10]}")
            env = child_env(
                REDIS_URL=settings.url,
                FLOWCRAFT_REDIS_QUEUE_NAME=settings.queue_name,
                FLOWCRAFT_REDIS_STATE_PREFIX=settings.state_prefix,
                FLOWCRAFT_REDIS_STATUS_PREFIX=settings.status_prefix,
                FLOWCRAFT_REDIS_COORDINATION_PREFIX=settings.coordination_prefix,
            )

            async def body(client: Client, pids: list[int], shape: str = shape) -> Any:
                await batch(client, shape, min(args.runs, 10), pids, None)
                return [await batch(client, shape, args.runs, pids, None) for _ in range(args.reps)]

            reps = await with_workers(
                "redis-streams",
                factory,
                settings,
                env,
                workers,
                args.concurrency,
                f"{shape}-w{workers}",
                body,
            )
            out[f"{shape}-w{workers}"] = {
                "node_execs_per_s": median(reps, "node_execs_per_s"),
                "completion_p50_ms": median(reps, "completion_p50_ms"),
            }
            print(
                f"redis-streams {shape} W={workers}: node-exec/s"
                f" {out[f'{shape}-w{workers}']['node_execs_per_s']:6.0f}",
                flush=True,
            )
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"`{report['command']}` on {report['machine']} ({report['date']})",
        "",
        "| case | Flowcraft node-exec/s | bare aiobotocore msg/s | ratio | bare boto3-threads"
        " msg/s | worker CPU µs/node | bare CPU µs/msg (aio / boto3) | run p50 / p95 ms |"
        " completion seen p50 / p95 ms | Redis Streams node-exec/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, s in report["throughput"].items():
        redis = report.get("redis_streams", {}).get(case, {}).get("node_execs_per_s")
        aio, threads = s["bare"]["aiobotocore"], s["bare"]["boto3"]
        cells = [
            case,
            f"{s['node_execs_per_s']:.0f}",
            f"{aio['msgs_per_s']:.0f}",
            f"{s['ratio']:.2f}",
            f"{threads['msgs_per_s']:.0f}",
            f"{s['worker_cpu_us_per_node']:.0f}",
            f"{aio['cpu_us_per_msg']:.0f} / {threads['cpu_us_per_msg']:.0f}",
            f"{s['p50_ms']:.0f} / {s['p95_ms']:.0f}",
            f"{s['completion_p50_ms']:.1f} / {s['completion_p95_ms']:.1f}",
            f"{redis:.0f}" if redis else "n/a",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    single = report["single"]
    lines += [
        "",
        f"Single chain20 runs (1 worker, 1 KB context): {single['hop_ms']:.2f} ms per hop,"
        f" run {single['latency_ms']:.0f} ms, completion seen p50"
        f" {single['completion_p50_ms']:.1f} ms, p95 {single['completion_p95_ms']:.1f} ms.",
    ]
    return "\n".join(lines) + "\n"


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    servers = Servers()
    report: dict[str, Any] = {
        "command": "./run bench -- sqs " + " ".join(sys.argv[1:]),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "args": vars(args),
    }
    report["throughput"] = await throughput(servers, args)
    report["single"] = await singles(servers, args)
    if not args.no_redis:
        report["redis_streams"] = await redis_streams(args)
    return report


def csv_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    if sys.argv[1:2] == ["--bare-worker"]:
        driver, url, done_url, concurrency = sys.argv[2:6]
        bare_worker(driver, url, done_url, int(concurrency))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=csv_ints, default=[1, 2])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--single", type=int, default=10)
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--out", default=str(HERE / "results" / "sqs.json"))
    args = parser.parse_args()
    report = asyncio.run(bench(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    summary = markdown(report)
    out.with_suffix(".md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
