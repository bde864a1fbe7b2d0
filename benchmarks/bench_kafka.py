"""Kafka + Cassandra benchmark: flowcraft-kafka against the bare confluent-kafka loop and Redis
Streams, interleaved in one run.

Usage: python benchmarks/bench_kafka.py [--runs 50] [--reps 3] [--workers 1,2]
       [--concurrency 32] [--single 5] [--out FILE]

For 1 and 2 worker processes and the shapes ``chain20`` and ``fan20`` (1 → 20 → 1): ``--runs``
concurrent runs, each repetition followed by one of the bare loop (confluent-kafka, no
Flowcraft: receive a batch → produce each message's successor → commit, ``--runs`` chains of
as many messages as the shape has nodes, on the same broker and topic layout) and one of the
Redis Streams backend (``redis-streams``) on the same Redis. Then single ``chain20`` runs:
per-hop latency and completion seen by the client. Servers come from ``flowcraft_services``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench_redis import (
    APP,
    CHAIN_HOPS,
    KB,
    NODE_COUNT,
    SHAPES,
    batch,
    child_env,
    cpu_seconds,
    flowcraft_case,
    load_transport,
    one_run,
    percentile,
    start_workers,
    stop_workers,
    summarise,
)
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from redis_app import CHAIN, app

from flowcraft.distributed import Client
from flowcraft_kafka import KafkaAdapter, KafkaSettings
from flowcraft_redis_store import RedisSettings

HERE = Path(__file__).resolve().parent
PARTITIONS = 4


def servers() -> dict[str, str]:
    from flowcraft_services import resolve

    env: dict[str, str] = {}
    for name in ("kafka", "cassandra", "redis"):
        env.update(resolve(name).start())
    return env


def base_settings(env: dict[str, str]) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
        contact_points=env["CASSANDRA_CONTACT_POINTS"],
        cassandra_port=int(env["CASSANDRA_PORT"]),
        local_dc=env.get("CASSANDRA_LOCAL_DC", "datacenter1"),
        partitions=PARTITIONS,
        redis=RedisSettings(url=env["REDIS_URL"]),
    )


async def kafka_case(
    base: KafkaSettings,
    workers: int,
    concurrency: int,
    case: str,
    body: Callable[[Client, list[int]], Awaitable[Any]],
) -> Any:
    """Run ``body`` against ``workers`` fresh worker processes on a fresh topic and group."""
    s = base.namespaced(f"b{uuid.uuid4().hex[:10]}")
    env = child_env(
        KAFKA_BOOTSTRAP_SERVERS=s.bootstrap_servers,
        CASSANDRA_CONTACT_POINTS=s.contact_points,
        CASSANDRA_PORT=str(s.cassandra_port),
        CASSANDRA_LOCAL_DC=s.local_dc,
        FLOWCRAFT_KAFKA_TOPIC=s.topic,
        FLOWCRAFT_KAFKA_DEAD_LETTER_TOPIC=s.dead_letters,
        FLOWCRAFT_KAFKA_GROUP_ID=s.group_id,
        FLOWCRAFT_KAFKA_PARTITIONS=str(s.partitions),
        REDIS_URL=s.redis.url,
        FLOWCRAFT_REDIS_STATE_PREFIX=s.redis.state_prefix,
        FLOWCRAFT_REDIS_STATUS_PREFIX=s.redis.status_prefix,
        FLOWCRAFT_REDIS_COORDINATION_PREFIX=s.redis.coordination_prefix,
    )
    command = [sys.executable, "-m", "flowcraft", "worker", "--backend", "kafka", "--app", APP]
    command += ["--concurrency", str(concurrency), "--grace", "5"]
    procs = await start_workers(command, workers, env, f"kafka-{case}")
    adapter = KafkaAdapter(s, registry=app["registry"], blueprints=app["blueprints"])
    try:
        # The group forms after the workers started: wait for one run before measuring.
        await one_run(Client(adapter), CHAIN, {"seed": 0})
        return await body(Client(adapter), [p.pid for p in procs])
    finally:
        await adapter.close()
        stop_workers(procs)


# ------------------------------------------------------------------------------ the bare loop


def bare_worker(bootstrap: str, topic: str, done_topic: str) -> None:
    """The bare loop in one process: fetch a batch, produce each message's successor (or a
    done mark), commit; confluent-kafka's sync client on one thread, as the queue uses it."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}-bare",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": 6000,
        }
    )
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 1}
    )
    consumer.subscribe([topic])
    print("worker started", flush=True)
    while True:
        first = consumer.poll(0.1)
        if first is None:
            producer.poll(0)
            continue
        messages = [first, *consumer.consume(499, 0)]
        for message in messages:
            if message.error() is not None:
                continue
            job = json.loads(message.value() or b"{}")
            if job["left"] > 0:
                job["left"] -= 1
                producer.produce(topic, json.dumps(job).encode(), message.key())
            else:
                producer.produce(done_topic, b"1", message.key())
        producer.flush()  # acks=all before the commit, as Flowcraft stores effects first
        consumer.commit(asynchronous=True)


async def bare_rep(base: KafkaSettings, workers: int, shape: str, runs: int) -> dict[str, Any]:
    """One repetition of the bare loop: ``runs`` chains of the shape's node count."""
    tag = uuid.uuid4().hex[:10]
    topic, done = f"bare-{tag}", f"bare-{tag}-done"
    admin = AdminClient({"bootstrap.servers": base.bootstrap_servers})
    for future in admin.create_topics(
        [NewTopic(topic, PARTITIONS), NewTopic(done, 1)], operation_timeout=30
    ).values():
        future.result()
    command = [sys.executable, str(Path(__file__)), "--bare-worker", base.bootstrap_servers]
    command += [topic, done]
    procs = await start_workers(command, workers, child_env(), f"bare-{shape}-w{workers}")
    watcher = Consumer(
        {"bootstrap.servers": base.bootstrap_servers, "group.id": f"{done}-watch"}
        | {"auto.offset.reset": "earliest"}
    )
    watcher.subscribe([done])
    producer = Producer({"bootstrap.servers": base.bootstrap_servers, "acks": "all"})
    try:
        # Warm up: the group forms and one chain passes.
        producer.produce(topic, json.dumps({"left": 0}).encode(), b"warm")
        producer.flush()
        seen = 0
        while seen < 1:
            seen += len(await asyncio.to_thread(watcher.consume, 100, 1.0))
        before = [cpu_seconds(p.pid) for p in procs]
        began = time.perf_counter()
        for i in range(runs):
            body = json.dumps({"left": NODE_COUNT[shape] - 1}).encode()
            producer.produce(topic, body, f"run-{i}".encode())
        producer.flush()
        seen = 0
        while seen < runs:
            seen += len(await asyncio.to_thread(watcher.consume, 100, 1.0))
        wall = time.perf_counter() - began
        used = sum(cpu_seconds(p.pid) - b for p, b in zip(procs, before, strict=True))
        messages = runs * NODE_COUNT[shape]
        return {"msgs_per_s": messages / wall, "cpu_us_per_msg": used / messages * 1e6}
    finally:
        watcher.close()
        stop_workers(procs)
        admin.delete_topics([topic, done])


# ---------------------------------------------------------------------------------- the cases


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    env = servers()
    base = base_settings(env)
    streams = load_transport("redis-streams")
    report: dict[str, Any] = {"throughput": {}, "single": {}}
    for workers in args.workers:
        for shape in SHAPES:
            ours: list[dict[str, Any]] = []
            bare: list[dict[str, Any]] = []
            redis: list[dict[str, Any]] = []

            async def reps(
                client: Client,
                pids: list[int],
                shape: str = shape,
                ours: list[dict[str, Any]] = ours,
                bare: list[dict[str, Any]] = bare,
            ) -> None:
                await batch(client, shape, min(args.runs, 10), pids, None)
                for _ in range(args.reps):
                    ours.append(await batch(client, shape, args.runs, pids, None))
                    bare.append(await bare_rep(base, len(pids), shape, args.runs))

            await kafka_case(base, workers, args.concurrency, f"{shape}-w{workers}", reps)
            if not isinstance(streams, str):

                async def streams_reps(
                    client: Client, pids: list[int], shape: str = shape
                ) -> list[dict[str, Any]]:
                    await batch(client, shape, min(args.runs, 10), pids, None)
                    return [
                        await batch(client, shape, args.runs, pids, None) for _ in range(args.reps)
                    ]

                redis = await flowcraft_case(
                    "redis-streams",
                    streams,
                    env["REDIS_URL"],
                    workers,
                    args.concurrency,
                    f"{shape}-w{workers}",
                    streams_reps,
                )
            executions = args.runs * NODE_COUNT[shape] * args.reps
            stats = summarise(ours, Counter(), executions)
            stats["bare_msgs_per_s"] = statistics.median(b["msgs_per_s"] for b in bare)
            stats["bare_cpu_us_per_msg"] = statistics.median(b["cpu_us_per_msg"] for b in bare)
            stats["ratio_to_bare"] = statistics.median(
                o["node_execs_per_s"] / b["msgs_per_s"] for o, b in zip(ours, bare, strict=True)
            )
            if redis:
                stats["redis_streams_node_execs_per_s"] = statistics.median(
                    r["node_execs_per_s"] for r in redis
                )
            report["throughput"][f"{shape}-w{workers}"] = stats
            print(
                f"kafka {shape} W={workers}: node-exec/s {stats['node_execs_per_s']:6.0f}"
                f"  bare msg/s {stats['bare_msgs_per_s']:6.0f}"
                f"  ratio {stats['ratio_to_bare']:4.2f}"
                f"  run p50 {stats['p50_ms']:7.1f} p95 {stats['p95_ms']:7.1f} ms"
                f"  completion seen p50 {stats['completion_p50_ms']:5.1f} ms"
                f"  worker CPU µs/node {stats['worker_cpu_us_per_node']:5.0f}"
                f" (bare µs/msg {stats['bare_cpu_us_per_msg']:4.0f})"
                f"  redis-streams node-exec/s {stats.get('redis_streams_node_execs_per_s', 0):.0f}",
                flush=True,
            )

    async def singles(client: Client, pids: list[int]) -> dict[str, float]:
        samples = [await one_run(client, CHAIN, {"blob": "x" * KB}) for _ in range(args.single)]
        return {
            "hop_ms": statistics.median(s.span for s in samples) / CHAIN_HOPS * 1000,
            "latency_ms": statistics.median(s.latency for s in samples) * 1000,
            "completion_p50_ms": percentile([s.completion * 1000 for s in samples], 50),
            "completion_p95_ms": percentile([s.completion * 1000 for s in samples], 95),
        }

    single = await kafka_case(replace(base), 1, args.concurrency, "single", singles)
    report["single"] = single
    print(
        f"kafka single chain20: per hop {single['hop_ms']:5.2f} ms, run {single['latency_ms']:6.1f}"
        f" ms, completion seen p50 {single['completion_p50_ms']:5.1f}"
        f" p95 {single['completion_p95_ms']:5.1f} ms",
        flush=True,
    )
    return report


def main() -> None:
    if sys.argv[1:2] == ["--bare-worker"]:
        bare_worker(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--single", type=int, default=5)
    parser.add_argument("--out", default=str(HERE / "results" / "kafka.json"))
    args = parser.parse_args()
    args.workers = [int(w) for w in args.workers.split(",")]
    report = asyncio.run(bench(args))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
