"""What the worker processes of ``bench_redis.py`` run.

``app`` is served by ``python -m flowcraft worker --app benchmarks.redis_app:app``: the shapes of
the TypeScript anchor (``chain20``, ``fan20``), with explicit ``uses`` keys as in its
``shared.mjs``. The first and last node of each shape return the wall-clock time they finished,
so the harness can tell hop latency and how long the client took to see the end.

``python -m benchmarks.redis_app QUEUE CONCURRENCY CLIENT`` is the raw BullMQ baseline: a bullmq
``Worker`` whose processor does nothing, except re-adding the job while its ``left`` counter is
positive (so a chain of jobs costs what a chain of nodes costs the transport). CLIENT is
``stock`` (bullmq's own redis-py client) or ``scripts`` (the client the BullMQ transport gives
bullmq, which sends its Lua scripts on Flowcraft's pipelined connection).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from typing import Any

from flowcraft import Blueprint, NodeContext, load_blueprint

__all__ = [
    "CHAIN",
    "FAN",
    "FIRST",
    "NODE_COUNT",
    "RAW_JOB",
    "RAW_JOB_OPTS",
    "SINGLE",
    "TERMINAL",
    "app",
]

CHAIN = "chain20"
FAN = "fan20"
SINGLE = "single"
"""One node: what a client waiting on many runs at once costs, not the runs."""
NODE_COUNT = {CHAIN: 20, FAN: 22}
FIRST = {CHAIN: "n0", FAN: "start"}
TERMINAL = {CHAIN: "n19", FAN: "join"}
RAW_JOB = "noop"
# Completed raw jobs stay a while: the harness counts them in BullMQ's completed set. (The
# transport removes a completed job's hash at once, one step less than this baseline pays.)
RAW_JOB_OPTS = {"removeOnComplete": {"age": 3600}, "removeOnFail": {"age": 7 * 86400}}


async def noop(ctx: NodeContext) -> int:
    value = ctx.input
    return (value if isinstance(value, int) else 0) + 1


async def stamp(ctx: NodeContext) -> float:
    return time.time()


def _chain(n: int) -> Blueprint:
    uses = ["stamp", *(["noop"] * (n - 2)), "stamp"]
    nodes = [{"id": f"n{i}", "uses": u} for i, u in enumerate(uses)]
    edges = [{"source": f"n{i - 1}", "target": f"n{i}"} for i in range(1, n)]
    return load_blueprint({"id": f"chain{n}", "nodes": nodes, "edges": edges})


def _fan(width: int) -> Blueprint:
    nodes: list[dict[str, Any]] = [{"id": "start", "uses": "stamp"}]
    edges = []
    for i in range(width):
        nodes.append({"id": f"p{i}", "uses": "noop"})
        edges += [{"source": "start", "target": f"p{i}"}, {"source": f"p{i}", "target": "join"}]
    nodes.append({"id": "join", "uses": "stamp", "config": {"joinStrategy": "all"}})
    return load_blueprint({"id": f"fan{width}", "nodes": nodes, "edges": edges})


app: dict[str, Any] = {
    "registry": {"noop": noop, "stamp": stamp},
    "blueprints": {
        CHAIN: _chain(20),
        FAN: _fan(20),
        SINGLE: load_blueprint({"id": SINGLE, "nodes": [{"id": "only", "uses": "noop"}]}),
    },
}


async def _raw_worker(queue_name: str, concurrency: int, client: str) -> None:
    from bullmq import Queue, Worker
    from redis.asyncio.connection import parse_url

    from flowcraft_redis import RedisSettings
    from flowcraft_redis._scripts_client import ScriptsClient

    settings = RedisSettings.from_env()
    base = settings.client()

    # "stock": bullmq's own client (connection options as a BullMQ user passes them: the server,
    # TCP keepalive, no per-command socket timeout); "scripts": the client the transport gives
    # bullmq's worker, so both pay the same per command and the difference is Flowcraft's
    # orchestration.
    def connection() -> Any:
        if client == "scripts":
            return ScriptsClient(base, settings)
        options = dict(parse_url(settings.url))
        options.pop("connection_class", None)
        return {**options, "socket_connect_timeout": 5.0, "socket_keepalive": True}

    queue = Queue(queue_name, {"connection": connection()})

    async def process(job: Any, token: str) -> None:
        left = int(job.data.get("left", 0))
        if left > 0:
            await queue.add(RAW_JOB, {"left": left - 1}, RAW_JOB_OPTS)

    worker = Worker(queue_name, process, {"connection": connection(), "concurrency": concurrency})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("worker started", file=sys.stderr, flush=True)
    await stop.wait()
    await worker.close()
    await queue.close()


if __name__ == "__main__":
    asyncio.run(_raw_worker(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
