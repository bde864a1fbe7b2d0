"""Kafka crash recovery and join time: the classic group protocol against KIP-848's, interleaved.

Usage: python benchmarks/bench_kafka_recovery.py [--reps 5] [--session-ms 6000]
       [--heartbeat-ms 1000] [--protocols classic,auto] [--out FILE]
       (or ``./run bench -- kafka-recovery [...]``)

Each repetition, for each protocol in turn (``FLOWCRAFT_KAFKA_GROUP_PROTOCOL``; ``auto`` takes
KIP-848's where the broker allows the group the session and heartbeat asked for), on a fresh
topic of 4 partitions and a fresh group:

* **first join**: worker A starts alone; seconds from its "worker started" line to the first
  one-node probe run it executes (probes are started every 20 ms meanwhile);
* **second join**: worker B starts beside A; seconds from its line to the first probe it
  executes (A must hand over partitions: two rebalances with the classic protocol's
  cooperative-sticky assignment, a heartbeat with KIP-848's);
* **recovery**: 16 runs of one node that records its start and then sleeps, so both workers
  hold jobs; A is SIGKILLed; seconds from the kill to the first of A's jobs starting on B.

Every node records ``(pid, run id, time)`` in a Redis list, so the times are the nodes' own.
The workers are ``flowcraft worker --backend kafka`` processes on the ``flowcraft_services``
servers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from flowcraft import NodeContext, load_blueprint

HERE = Path(__file__).resolve().parent
MARKS = "FLOWCRAFT_BENCH_MARKS"
"""The Redis list the nodes record their starts in (the worker's environment)."""
HOLD_SECONDS = 120.0
PARTITIONS = 4
HELD_RUNS = 16


async def _mark(ctx: NodeContext) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        entry = {"pid": os.getpid(), "run": ctx.run_id, "t": time.time()}
        await client.rpush(os.environ[MARKS], json.dumps(entry))
    finally:
        await client.aclose()


async def probe(ctx: NodeContext) -> int:
    await _mark(ctx)
    return 1


async def hold(ctx: NodeContext) -> int:
    await _mark(ctx)
    await asyncio.sleep(HOLD_SECONDS)
    return 1


app: dict[str, Any] = {
    "registry": {"probe": probe, "hold": hold},
    "blueprints": {
        name: load_blueprint({"id": name, "nodes": [{"id": "only", "uses": name}]})
        for name in ("probe", "hold")
    },
}


class Marks:
    """The nodes' start records, read as they come."""

    def __init__(self, url: str, key: str) -> None:
        import redis.asyncio as aioredis

        self._client = aioredis.Redis.from_url(url)
        self.key = key
        self.seen: list[dict[str, Any]] = []

    async def until(self, found: Any, timeout: float) -> dict[str, Any]:
        """The first record (new or seen) for which ``found(record)`` holds."""
        for entry in self.seen:
            if found(entry):
                return entry
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = await self._client.blpop([self.key], timeout=0.05)
            if reply is None:
                continue
            record: dict[str, Any] = json.loads(reply[1])
            self.seen.append(record)
            if found(record):
                return record
        raise TimeoutError(f"no such record in {timeout} s")

    async def close(self) -> None:
        await self._client.delete(self.key)
        await self._client.aclose()


async def _probing(client: Any, marks: Marks, pid: int, timeout: float = 60.0) -> float:
    """Start probe runs every 20 ms until worker ``pid`` runs one; its start time."""

    async def feed() -> None:
        while True:
            await client.start("probe", {})
            await asyncio.sleep(0.02)

    feeder = asyncio.create_task(feed())
    try:
        entry = await marks.until(lambda e: e["pid"] == pid, timeout)
    finally:
        feeder.cancel()
    return float(entry["t"])


async def rep(base: Any, protocol: str, args: argparse.Namespace) -> dict[str, Any]:
    """One repetition for ``protocol``: first join, second join, recovery (seconds)."""
    from bench_redis import child_env, start_workers, stop_workers

    from flowcraft.distributed import Client
    from flowcraft_kafka import KafkaAdapter

    s = base.namespaced(f"r{uuid.uuid4().hex[:10]}")
    key = f"bench-recovery:{uuid.uuid4().hex}"
    env = child_env(
        PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]),
        KAFKA_BOOTSTRAP_SERVERS=s.bootstrap_servers,
        CASSANDRA_CONTACT_POINTS=s.contact_points,
        CASSANDRA_PORT=str(s.cassandra_port),
        CASSANDRA_LOCAL_DC=s.local_dc,
        FLOWCRAFT_KAFKA_TOPIC=s.topic,
        FLOWCRAFT_KAFKA_DEAD_LETTER_TOPIC=s.dead_letters,
        FLOWCRAFT_KAFKA_GROUP_ID=s.group_id,
        FLOWCRAFT_KAFKA_PARTITIONS=str(PARTITIONS),
        FLOWCRAFT_KAFKA_GROUP_PROTOCOL=protocol,
        FLOWCRAFT_KAFKA_SESSION_TIMEOUT_MS=str(args.session_ms),
        FLOWCRAFT_KAFKA_HEARTBEAT_INTERVAL_MS=str(args.heartbeat_ms),
        REDIS_URL=s.redis.url,
        FLOWCRAFT_REDIS_STATE_PREFIX=s.redis.state_prefix,
        FLOWCRAFT_REDIS_STATUS_PREFIX=s.redis.status_prefix,
        FLOWCRAFT_REDIS_COORDINATION_PREFIX=s.redis.coordination_prefix,
        **{MARKS: key},
    )
    command = [sys.executable, "-m", "flowcraft", "worker", "--backend", "kafka"]
    command += ["--app", "bench_kafka_recovery:app", "--concurrency", "64", "--grace", "1"]
    adapter = KafkaAdapter(s, registry=app["registry"], blueprints=app["blueprints"])
    client = Client(adapter)
    marks = Marks(s.redis.url, key)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        (a,) = await start_workers(command, 1, env, f"recovery-{protocol}-a")
        procs.append(a)
        started = time.time()
        first_join = await _probing(client, marks, a.pid) - started
        (b,) = await start_workers(command, 1, env, f"recovery-{protocol}-b")
        procs.append(b)
        started = time.time()
        second_join = await _probing(client, marks, b.pid) - started
        runs = [await client.start("hold", {}) for _ in range(HELD_RUNS)]
        for run in runs:
            await marks.until(lambda e, run=run: e["run"] == run, 60)
        held = {e["run"] for e in marks.seen if e["run"] in runs and e["pid"] == a.pid}
        if not held or len(held) == len(runs):
            raise RuntimeError(f"A holds {len(held)} of {len(runs)} jobs: no partition split")
        a.send_signal(signal.SIGKILL)
        killed = time.time()
        entry = await marks.until(lambda e: e["pid"] == b.pid and e["run"] in held, 120)
        return {
            "first_join_s": first_join,
            "second_join_s": second_join,
            "recovery_s": float(entry["t"]) - killed,
            "held_by_victim": len(held),
        }
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        stop_workers(procs)
        await marks.close()
        await adapter.close()
        await _drop(s)


async def _drop(s: Any) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": s.bootstrap_servers})
    futures = [
        *admin.delete_topics([s.topic, s.dead_letters], operation_timeout=10).values(),
        # Refused while the killed worker's session lasts: the group then stays, empty.
        *admin.delete_consumer_groups([s.group_id], request_timeout=10).values(),
    ]
    for future in futures:
        with contextlib.suppress(KafkaException):
            await asyncio.wrap_future(future)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    from bench_kafka import base_settings, servers

    base = base_settings(servers())
    samples: dict[str, list[dict[str, Any]]] = {p: [] for p in args.protocols}
    for i in range(args.reps):
        # Alternate which protocol goes first: the machine's load drifts within minutes.
        order = args.protocols if i % 2 == 0 else list(reversed(args.protocols))
        for protocol in order:
            load = os.getloadavg()[0]
            sample = await rep(base, protocol, args)
            sample["load"] = load
            samples[protocol].append(sample)
            print(
                f"{protocol:8} rep {i + 1}: first join {sample['first_join_s']:5.2f} s,"
                f" second join {sample['second_join_s']:5.2f} s,"
                f" recovery {sample['recovery_s']:5.2f} s"
                f" ({sample['held_by_victim']} jobs held by the victim; load {load:.1f})",
                flush=True,
            )
    summary = {
        protocol: {
            name: statistics.median(s[name] for s in reps)
            for name in ("first_join_s", "second_join_s", "recovery_s")
        }
        | {"max_recovery_s": max(s["recovery_s"] for s in reps)}
        for protocol, reps in samples.items()
    }
    for protocol, medians in summary.items():
        print(
            f"{protocol:8} median: first join {medians['first_join_s']:5.2f} s,"
            f" second join {medians['second_join_s']:5.2f} s,"
            f" recovery {medians['recovery_s']:5.2f} s (max {medians['max_recovery_s']:5.2f} s)",
            flush=True,
        )
    return {
        "session_ms": args.session_ms,
        "heartbeat_ms": args.heartbeat_ms,
        "summary": summary,
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--session-ms", type=int, default=6000)
    parser.add_argument("--heartbeat-ms", type=int, default=1000)
    parser.add_argument("--protocols", default="classic,auto")
    parser.add_argument("--out", default=str(HERE / "results" / "kafka_recovery.json"))
    args = parser.parse_args()
    args.protocols = args.protocols.split(",")
    report = asyncio.run(bench(args))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
