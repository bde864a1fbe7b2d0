"""Kafka + Cassandra benchmark: flowcraft-kafka against the bare confluent-kafka loop, the
TypeScript Kafka adapter's own worker and Redis Streams, interleaved in one run.

Usage: python benchmarks/bench_kafka.py [--runs 50] [--reps 3] [--workers 1,2]
       [--concurrency 32] [--single 5] [--no-ts] [--out FILE]

For 1 and 2 worker processes and the shapes ``chain20`` and ``fan20`` (1 → 20 → 1): ``--runs``
concurrent runs, each repetition followed by one of each baseline on the same servers:

* the bare loop (confluent-kafka, no Flowcraft: receive a batch → produce each message's
  successor → commit, ``--runs`` chains of as many messages as the shape has nodes), with the
  sync client on one thread (as the queue uses it) and with confluent-kafka's ``aio``
  ``AIOConsumer``/``AIOProducer`` (the issue asks which to use);
* the TypeScript ``@flowcraft/kafka-adapter`` 1.4.4: the pinned anchor's ``dist-bench.mjs``
  (``ts-kafka-anchor/``, installed from npm into ``.anchor/kafka``), one repetition with fresh
  TS workers, keyspace ``flowcraft_anchor`` and a private Redis (it FLUSHDBs);

and the Redis Streams backend (``redis-streams``) on the same Redis after the cell. Then
single ``chain20`` runs: per-hop latency and completion seen by the client (and the anchor's
single run). Servers come from ``flowcraft_services``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
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
    private_redis,
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
"""As the anchor's dist-bench uses: runs are keyed, so W workers need W partitions or more."""
ANCHOR = HERE / "ts-kafka-anchor"
ANCHOR_WORK = HERE / ".anchor" / "kafka"


SERVER_PIDS: dict[str, int] = {}
"""The servers' processes, where this machine runs them: their CPU per node is measured."""


def servers() -> dict[str, str]:
    from flowcraft_services.cli import start_many

    env: dict[str, str] = {}
    for name, service in start_many(["kafka", "cassandra", "redis"]).items():
        if isinstance(service, Exception):
            raise RuntimeError(f"{name} did not start: {service}") from service
        env.update(service.env)
        state = getattr(service, "state", None)
        if state is not None and state.processes:
            SERVER_PIDS[name] = state.processes[0].pid
    return env


async def measured(client: Client, shape: str, runs: int, pids: list[int]) -> dict[str, Any]:
    """``batch``, with the CPU each server used per node execution meanwhile."""
    before = {name: cpu_seconds(pid) for name, pid in SERVER_PIDS.items()}
    result = await batch(client, shape, runs, pids, None)
    nodes = runs * NODE_COUNT[shape]
    result["server_cpu_us_per_node"] = {
        name: (cpu_seconds(pid) - before[name]) / nodes * 1e6 for name, pid in SERVER_PIDS.items()
    }
    return result


def _cpu(per_server: dict[str, float]) -> str:
    return " ".join(f"{name} {value:.0f}" for name, value in per_server.items())


def server_cpu(reps: list[dict[str, Any]]) -> dict[str, float]:
    names = reps[0].get("server_cpu_us_per_node", {}) if reps else {}
    return {n: statistics.median(r["server_cpu_us_per_node"][n] for r in reps) for n in names}


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


async def bare_aio_worker(bootstrap: str, topic: str, done_topic: str) -> None:
    """The same loop on confluent-kafka's ``aio`` clients: ``AIOConsumer.consume`` (a batch
    per executor call, as its docs advise) and ``AIOProducer`` (which batches produces until
    ``flush``; it cannot send headers, which the queue's dead letters and origin mark need)."""
    from confluent_kafka.aio import AIOConsumer, AIOProducer

    consumer = AIOConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}-bare",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": 6000,
        },
        max_workers=2,
    )
    producer = AIOProducer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 1}
    )
    await consumer.subscribe([topic])
    print("worker started", flush=True)
    while True:
        # As the sync loop: wait for one, then take what is there (a consume of 500 with a
        # timeout would wait out the timeout whenever fewer are in flight).
        first = await consumer.poll(0.1)
        if first is None:
            continue
        messages = [first, *await consumer.consume(499, 0)]
        sent = []
        for message in messages:
            if message.error() is not None:
                continue
            job = json.loads(message.value() or b"{}")
            if job["left"] > 0:
                job["left"] -= 1
                sent.append(await producer.produce(topic, json.dumps(job).encode(), message.key()))
            else:
                sent.append(await producer.produce(done_topic, b"1", message.key()))
        await producer.flush()
        await asyncio.gather(*sent)  # acks=all before the commit, as in the sync loop
        await consumer.commit(asynchronous=True)


async def bare_rep(
    base: KafkaSettings, workers: int, shape: str, runs: int, mode: str = "--bare-worker"
) -> dict[str, Any]:
    """One repetition of the bare loop: ``runs`` chains of the shape's node count."""
    tag = uuid.uuid4().hex[:10]
    topic, done = f"bare-{tag}", f"bare-{tag}-done"
    admin = AdminClient({"bootstrap.servers": base.bootstrap_servers})
    for future in admin.create_topics(
        [NewTopic(topic, PARTITIONS), NewTopic(done, 1)], operation_timeout=30
    ).values():
        future.result()
    command = [sys.executable, str(Path(__file__)), mode, base.bootstrap_servers, topic, done]
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
            seen += len(await asyncio.to_thread(watcher.consume, 1, 1.0))
        before = [cpu_seconds(p.pid) for p in procs]
        began = time.perf_counter()
        for i in range(runs):
            body = json.dumps({"left": NODE_COUNT[shape] - 1}).encode()
            producer.produce(topic, body, f"run-{i}".encode())
        producer.flush()
        seen = 0
        while seen < runs:
            # Asked for exactly what is missing, consume returns as the last one arrives (a
            # larger count would wait out its timeout, and the wall would be that timeout).
            seen += len(await asyncio.to_thread(watcher.consume, runs - seen, 1.0))
        wall = time.perf_counter() - began
        used = sum(cpu_seconds(p.pid) - b for p, b in zip(procs, before, strict=True))
        messages = runs * NODE_COUNT[shape]
        return {"msgs_per_s": messages / wall, "cpu_us_per_msg": used / messages * 1e6}
    finally:
        watcher.close()
        stop_workers(procs)
        for future in admin.delete_topics([topic, done]).values():
            future.result()


# ------------------------------------------------------------------------------- the TS anchor


class Anchor:
    """The TypeScript Kafka adapter's ``dist-bench.mjs``, one repetition at a time (this
    VM's speed drifts within minutes: a baseline is only comparable measured beside ours)."""

    def __init__(self, node: str, env: dict[str, str]) -> None:
        self._node = node
        self._env = env
        self.reps: dict[str, list[dict[str, Any]]] = {}

    def rep(self, workers: int, shape: str, runs: int, poll_ms: int = 25) -> dict[str, Any]:
        """One repetition: ``runs`` runs of ``shape`` on ``workers`` fresh TS workers."""
        command = [self._node, "bench/dist-bench.mjs", "--workers", str(workers)]
        command += ["--shape", shape, "--runs", str(runs), "--reps", "1"]
        command += ["--partitions", str(PARTITIONS), "--poll-ms", str(poll_ms)]
        proc = subprocess.run(
            command,
            cwd=ANCHOR_WORK,
            env=self._env,
            check=False,
            capture_output=True,
            text=True,
            timeout=600,
        )
        line = next((x for x in proc.stdout.splitlines() if x.startswith("JSON ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"TS anchor failed:\n{proc.stdout}\n{proc.stderr}")
        (rep,) = json.loads(line[5:])["results"]
        if rep["completed_ok"] != runs:
            raise RuntimeError(f"TS anchor runs failed:\n{proc.stdout}")
        key = f"{shape}-w{workers}" if runs > 1 else "single"
        self.reps.setdefault(key, []).append(rep)
        return dict(rep)


@contextlib.contextmanager
def ts_anchor(enabled: bool, env: dict[str, str]) -> Iterator[Anchor | None]:
    """The anchor installed (npm, pinned versions) and pointed at these Kafka and Cassandra
    servers and a private Redis; None if disabled or Node.js is missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not enabled or node is None or npm is None:
        print("TS anchor skipped" + ("" if enabled else " (--no-ts)"), flush=True)
        yield None
        return
    ANCHOR_WORK.mkdir(parents=True, exist_ok=True)
    shutil.copy(ANCHOR / "package.json", ANCHOR_WORK / "package.json")
    shutil.copytree(ANCHOR / "bench", ANCHOR_WORK / "bench", dirs_exist_ok=True)
    if not (ANCHOR_WORK / "node_modules" / "@flowcraft" / "kafka-adapter").exists():
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent"], cwd=ANCHOR_WORK, check=True
        )
    with private_redis(ANCHOR_WORK / "redis.pid") as port:
        anchor_env = {
            **os.environ,
            "KAFKA_BROKERS": env["KAFKA_BOOTSTRAP_SERVERS"],
            "CASSANDRA_CONTACT": f"{env['CASSANDRA_CONTACT_POINTS']}:{env['CASSANDRA_PORT']}",
            "CASSANDRA_DC": env.get("CASSANDRA_LOCAL_DC", "datacenter1"),
            "REDIS_URL": f"redis://127.0.0.1:{port}/0",
        }
        yield Anchor(node, anchor_env)


# ---------------------------------------------------------------------------------- the cases


async def bench(
    args: argparse.Namespace, env: dict[str, str], anchor: Anchor | None
) -> dict[str, Any]:
    base = base_settings(env)
    streams = load_transport("redis-streams")
    report: dict[str, Any] = {"throughput": {}, "single": {}}
    if anchor is not None:
        # A freshly started Cassandra is slower on its first thousand nodes (the anchor's
        # README): one discarded repetition.
        await asyncio.to_thread(anchor.rep, 1, CHAIN, args.runs)
        anchor.reps.clear()
    for workers in args.workers:
        for shape in SHAPES:
            ours: list[dict[str, Any]] = []
            bare: list[dict[str, Any]] = []
            aio: list[dict[str, Any]] = []
            ts: list[dict[str, Any]] = []
            redis: list[dict[str, Any]] = []

            async def reps(
                client: Client,
                pids: list[int],
                shape: str = shape,
                ours: list[dict[str, Any]] = ours,
                bare: list[dict[str, Any]] = bare,
                aio: list[dict[str, Any]] = aio,
                ts: list[dict[str, Any]] = ts,
            ) -> None:
                await batch(client, shape, min(args.runs, 10), pids, None)
                for _ in range(args.reps):
                    ours.append(await measured(client, shape, args.runs, pids))
                    bare.append(await bare_rep(base, len(pids), shape, args.runs))
                    aio.append(
                        await bare_rep(base, len(pids), shape, args.runs, "--bare-aio-worker")
                    )
                    if anchor is not None:
                        ts.append(await asyncio.to_thread(anchor.rep, len(pids), shape, args.runs))

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
            stats["aio_bare_msgs_per_s"] = statistics.median(a["msgs_per_s"] for a in aio)
            stats["aio_bare_cpu_us_per_msg"] = statistics.median(a["cpu_us_per_msg"] for a in aio)
            stats["aio_to_thread"] = statistics.median(
                a["msgs_per_s"] / b["msgs_per_s"] for a, b in zip(aio, bare, strict=True)
            )
            stats["server_cpu_us_per_node"] = server_cpu(ours)
            if ts:
                stats["ts_server_cpu_us_per_node"] = {
                    name: statistics.median(t["server_cpu_s"][name] / t["execs"] * 1e6 for t in ts)
                    for name in ts[0]["server_cpu_s"]
                }
                stats["ts_node_execs_per_s"] = statistics.median(t["node_execs_per_s"] for t in ts)
                stats["ts_p50_ms"] = statistics.median(t["p50_ms"] for t in ts)
                stats["ratio_to_ts"] = statistics.median(
                    o["node_execs_per_s"] / t["node_execs_per_s"]
                    for o, t in zip(ours, ts, strict=True)
                )
                stats["ts_reps"] = ts
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
            line = "      server CPU µs/node: " + _cpu(stats["server_cpu_us_per_node"])
            if "ts_server_cpu_us_per_node" in stats:
                line += " | TS adapter: " + _cpu(stats["ts_server_cpu_us_per_node"])
            print(line, flush=True)
            print(
                f"      aio bare msg/s {stats['aio_bare_msgs_per_s']:6.0f}"
                f" (aio/thread {stats['aio_to_thread']:4.2f},"
                f" CPU µs/msg {stats['aio_bare_cpu_us_per_msg']:4.0f})"
                + (
                    f"  TS adapter node-exec/s {stats['ts_node_execs_per_s']:5.0f}"
                    f" (ours/TS {stats['ratio_to_ts']:5.1f},"
                    f" TS run p50 {stats['ts_p50_ms']:6.0f} ms)"
                    if ts
                    else ""
                ),
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
    if anchor is not None:
        # The anchor's client polls the status table every 5 ms here, as its README measured.
        for _ in range(3):
            await asyncio.to_thread(anchor.rep, 1, CHAIN, 1, 5)
        ts_single = statistics.median(r["p50_ms"] for r in anchor.reps["single"])
        report["ts_single"] = {"run_ms": ts_single, "reps": anchor.reps["single"]}
        print(
            f"TS adapter single chain20: run {ts_single:6.1f} ms"
            f" ({ts_single / CHAIN_HOPS:5.2f} ms per hop, client polling every 5 ms)",
            flush=True,
        )
    return report


def main() -> None:
    if sys.argv[1:2] == ["--bare-worker"]:
        bare_worker(*sys.argv[2:5])
        return
    if sys.argv[1:2] == ["--bare-aio-worker"]:
        asyncio.run(bare_aio_worker(*sys.argv[2:5]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--single", type=int, default=5)
    parser.add_argument("--no-ts", dest="ts", action="store_false", help="skip the TS adapter")
    parser.add_argument("--out", default=str(HERE / "results" / "kafka.json"))
    args = parser.parse_args()
    args.workers = [int(w) for w in args.workers.split(",")]
    env = servers()
    with ts_anchor(args.ts, env) as anchor:
        report = asyncio.run(bench(args, env, anchor))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
