"""Azure Storage Queues + Cosmos DB benchmark: flowcraft-azure against the bare driver loop and
Streams.

Usage: python benchmarks/bench_azure.py [--transports azure,redis-streams] [--runs 50]
       [--reps 2] [--workers 1,2] [--concurrency 8] [--single 10] [--out FILE]

For each transport: ``--runs`` concurrent runs of ``chain20`` and of ``fan20`` on 1 and 2 worker
processes (node executions/s, run p50/p95, completion seen by the client), then single
``chain20`` runs on one worker (per-hop latency, completion seen). After each repetition of
ours, one repetition of the bare loop on the same Azurite with as many worker processes: each
receives up to ``--concurrency`` messages (``azure.storage.queue.aio``, aiohttp), deletes each
and sends the next one (a chain of 20 messages per run, ``--runs`` chains at once), polling an
empty queue with the same capped back-off as the backend (Storage Queues have no long poll);
no Flowcraft, no Cosmos, no Redis.

Ratios are ours over the bare loop of the same repetitions. Servers: ``flowcraft_services``
(or ``AZURE_STORAGE_CONNECTION_STRING``, ``COSMOS_ENDPOINT`` / ``COSMOS_KEY``, ``REDIS_URL``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

# Siblings of this script, importable because its directory leads sys.path.
from bench_backend import Deployment, compare, find_servers, redis_streams
from bench_backend import main as bench_main
from bench_redis import child_env, drop_keys, start_workers, stop_workers
from redis_app import CHAIN, NODE_COUNT

from flowcraft_azure import AzureSettings

HERE = Path(__file__).resolve().parent
SERVICES = (
    ("azurite", ("AZURE_STORAGE_CONNECTION_STRING",)),
    ("cosmos", ("COSMOS_ENDPOINT", "COSMOS_KEY")),
    ("redis", ("REDIS_URL",)),
)
# The npm Cosmos server: a self-signed certificate, and 500 for a missing item.
EMULATOR = {"FLOWCRAFT_AZURE_COSMOS_VERIFY": "false", "FLOWCRAFT_AZURE_COSMOS_EMULATOR": "true"}
DRIVER = "azure-storage-queue"
POLL_MIN, POLL_MAX = AzureSettings().poll_min, AzureSettings().poll_max


# ------------------------------------------------------------------------------ the bare loop


def _queue(name: str) -> Any:
    from azure.storage.queue import BinaryBase64EncodePolicy
    from azure.storage.queue.aio import QueueClient

    return QueueClient.from_connection_string(
        os.environ["AZURE_STORAGE_CONNECTION_STRING"],
        name,
        message_encode_policy=BinaryBase64EncodePolicy(),
    )


async def bare_worker(queue: str, prefetch: int) -> None:
    """Receive → delete → send the next message, until SIGTERM."""
    import signal

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    jobs, done = _queue(queue), _queue(f"{queue}-done")
    print("worker started", file=sys.stderr, flush=True)

    async def one(message: Any) -> None:
        left = orjson.loads(base64.b64decode(message.content))["left"]
        await jobs.delete_message(message.id, message.pop_receipt)
        if left > 0:
            await jobs.send_message(orjson.dumps({"left": left - 1}))
        else:
            await done.send_message(b"{}")

    async def serve() -> None:
        delay = POLL_MIN
        while True:
            pages = jobs.receive_messages(
                messages_per_page=prefetch, max_messages=prefetch, visibility_timeout=30
            )
            received = [m async for m in pages]
            if not received:
                await asyncio.sleep(delay)
                delay = min(POLL_MAX, delay * 2)
                continue
            delay = POLL_MIN
            await asyncio.gather(*(one(m) for m in received))

    task = asyncio.ensure_future(serve())
    await stop.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await jobs.close()
    await done.close()


async def bare_rep(queue: str, runs: int) -> float:
    """``runs`` chains of 20 messages through the bare workers; messages per second."""
    jobs, done = _queue(queue), _queue(f"{queue}-done")
    try:
        began = time.perf_counter()
        first = orjson.dumps({"left": NODE_COUNT[CHAIN] - 1})
        await asyncio.gather(*(jobs.send_message(first) for _ in range(runs)))
        seen = 0
        while seen < runs:
            received = [m async for m in done.receive_messages(messages_per_page=32)]
            await asyncio.gather(*(done.delete_message(m.id, m.pop_receipt) for m in received))
            seen += len(received)
            if not received:
                await asyncio.sleep(POLL_MIN)
        return runs * NODE_COUNT[CHAIN] / (time.perf_counter() - began)
    finally:
        await jobs.close()
        await done.close()


class Bare:
    """Bare-loop worker processes on a queue of their own, for one worker count."""

    def __init__(self, workers: int, prefetch: int) -> None:
        self.workers, self.prefetch = workers, prefetch
        self.queue = f"bare-{uuid.uuid4().hex[:8]}"
        self.procs: list[Any] = []

    async def __aenter__(self) -> Bare:
        for name in (self.queue, f"{self.queue}-done"):
            client = _queue(name)
            await client.create_queue()
            await client.close()
        command = [sys.executable, str(HERE / "bench_azure.py"), "--bare-worker", self.queue]
        command.append(str(self.prefetch))
        self.procs += await start_workers(command, self.workers, child_env(), "bare-azure")
        return self

    async def rep(self, runs: int) -> dict[str, float]:
        return {DRIVER: await bare_rep(self.queue, runs)}

    async def __aexit__(self, *exc: object) -> None:
        stop_workers(self.procs)
        for name in (self.queue, f"{self.queue}-done"):
            client = _queue(name)
            await client.delete_queue()
            await client.close()


# ------------------------------------------------------------------------------ flowcraft runs


def deployment(name: str, servers: dict[str, str]) -> Deployment:
    """Settings, worker environment and cleanup of one case's fresh queue and namespace."""
    if name == "azure":
        tag = f"b{uuid.uuid4().hex[:10]}"
        settings = AzureSettings.from_env({**servers, **EMULATOR}).namespaced(tag)

        def clean() -> None:
            from azure.core import exceptions as azure_errors
            from azure.storage.queue import QueueClient
            from flowcraft_services.providers.cosmos import client, quiet_tls

            for queue in (settings.queue, settings.poison_queue):
                with contextlib.suppress(azure_errors.ResourceNotFoundError):
                    QueueClient.from_connection_string(
                        settings.connection_string, queue
                    ).delete_queue()
            with quiet_tls():
                database = client(servers).get_database_client(settings.database)
                for container in (settings.context_container, settings.status_container):
                    with contextlib.suppress(azure_errors.ResourceNotFoundError):
                        database.delete_container(container)
            drop_keys(settings.redis_url, tag)

        return settings, {**servers, **EMULATOR, **settings.to_env()}, clean
    return redis_streams(servers)


def main() -> None:
    if sys.argv[1:2] == ["--bare-worker"]:
        queue, prefetch = sys.argv[2:4]
        asyncio.run(bare_worker(queue, int(prefetch)))
        return
    servers = find_servers(SERVICES)

    async def bench(args: argparse.Namespace) -> dict[str, Any]:
        return await compare(
            args,
            lambda name: deployment(name, servers),
            lambda workers: Bare(workers, args.concurrency),
            DRIVER,
        )

    bench_main("azure", "azure,redis-streams", bench)


if __name__ == "__main__":
    main()
