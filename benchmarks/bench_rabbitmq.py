"""RabbitMQ benchmark: Flowcraft's RabbitMQ backends against the bare driver loop and Streams.

Usage: python benchmarks/bench_rabbitmq.py [--transports rabbitmq,rabbitmq-postgres,redis-streams]
       [--runs 50] [--reps 2] [--workers 1,2] [--concurrency 8] [--single 10] [--out FILE]

For each transport: ``--runs`` concurrent runs of ``chain20`` and of ``fan20`` on 1 and 2 worker
processes (node executions/s, run p50/p95, completion seen by the client), then single
``chain20`` runs on one worker (per-hop latency, completion seen). After each repetition of
ours, one repetition of the bare loop on the same broker with as many worker processes: each
consumes a message, acks it and publishes the next one with a publisher confirm (a chain of 20
messages per run, ``--runs`` chains at once, prefetch = ``--concurrency``), no Flowcraft, with
aio-pika (the backend's driver) and with pika's asyncio adapter. Ratios are ours over the
aio-pika loop of the same repetitions. Servers: ``flowcraft_services`` (or the env vars).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

# Siblings of this script, importable because its directory leads sys.path.
from bench_backend import Deployment, compare, find_servers, redis_streams
from bench_backend import main as bench_main
from bench_redis import child_env, drop_keys, start_workers, stop_workers
from redis_app import CHAIN, NODE_COUNT

from flowcraft_rabbitmq import RabbitSettings

HERE = Path(__file__).resolve().parent
DRIVERS = ("aio-pika", "pika")
SERVICES = (
    ("rabbitmq", ("AMQP_URL",)),
    ("postgres", ("DATABASE_URL",)),
    ("redis", ("REDIS_URL",)),
)


# ------------------------------------------------------------------------------ the bare loop


async def bare_worker(driver: str, url: str, queue: str, prefetch: int) -> None:
    """Receive → ack → publish the next message (confirmed), until SIGTERM."""
    import signal

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    serve = _serve_aio_pika if driver == "aio-pika" else _serve_pika
    await serve(url, queue, prefetch, stop)


async def _serve_aio_pika(url: str, queue: str, prefetch: int, stop: asyncio.Event) -> None:
    import aio_pika

    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=prefetch)
    jobs = await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})

    async def handle(message: Any) -> None:
        left = orjson.loads(message.body)["left"]
        await message.ack()
        target, body = (queue, {"left": left - 1}) if left > 0 else (f"{queue}.done", {})
        out = aio_pika.Message(orjson.dumps(body), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(out, routing_key=target)

    await jobs.consume(handle)
    print("worker started", file=sys.stderr, flush=True)
    await stop.wait()
    await connection.close()


async def _serve_pika(url: str, queue: str, prefetch: int, stop: asyncio.Event) -> None:
    import pika
    from pika.adapters.asyncio_connection import AsyncioConnection

    loop = asyncio.get_running_loop()

    def waiter() -> tuple[asyncio.Future[Any], Callable[[Any], None]]:
        future: asyncio.Future[Any] = loop.create_future()
        return future, lambda value: future.done() or future.set_result(value)

    opened, on_open = waiter()
    connection = AsyncioConnection(
        pika.URLParameters(url), on_open_callback=on_open, custom_ioloop=loop
    )
    await opened
    ready, on_channel = waiter()
    connection.channel(on_open_callback=on_channel)
    channel = await ready
    # The confirms are counted, as aio-pika awaits each: both loops pay for them.
    confirms: dict[int, asyncio.Future[None]] = {}
    sent = 0

    def confirmed(frame: Any) -> None:
        tag, multiple = frame.method.delivery_tag, frame.method.multiple
        for key in [k for k in confirms if k <= tag] if multiple else [tag]:
            future = confirms.pop(key, None)
            if future is not None and not future.done():
                future.set_result(None)

    for setup in (
        lambda cb: channel.confirm_delivery(confirmed, callback=cb),
        lambda cb: channel.basic_qos(prefetch_count=prefetch, callback=cb),
        lambda cb: channel.queue_declare(
            queue, durable=True, arguments={"x-queue-type": "quorum"}, callback=cb
        ),
    ):
        done, callback = waiter()
        setup(callback)
        await done

    def handle(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        nonlocal sent
        left = orjson.loads(body)["left"]
        ch.basic_ack(method.delivery_tag)
        target, out = (queue, {"left": left - 1}) if left > 0 else (f"{queue}.done", {})
        ch.basic_publish("", target, orjson.dumps(out), pika.BasicProperties(delivery_mode=2))
        sent += 1
        confirms[sent] = loop.create_future()

    channel.basic_consume(queue, handle)
    print("worker started", file=sys.stderr, flush=True)
    await stop.wait()
    connection.close()


async def bare_rep(url: str, queue: str, runs: int) -> float:
    """``runs`` chains of 20 messages through the bare workers; messages per second."""
    import aio_pika

    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        done = await channel.declare_queue(f"{queue}.done", durable=True)
        began = time.perf_counter()
        first = orjson.dumps({"left": NODE_COUNT[CHAIN] - 1})
        await asyncio.gather(
            *(
                channel.default_exchange.publish(aio_pika.Message(first), routing_key=queue)
                for _ in range(runs)
            )
        )
        seen = 0
        async with done.iterator() as messages:
            async for message in messages:
                await message.ack()
                seen += 1
                if seen == runs:
                    break
        return runs * NODE_COUNT[CHAIN] / (time.perf_counter() - began)
    finally:
        await connection.close()


class Bare:
    """Bare-loop worker processes of both drivers, one queue each, for one worker count."""

    def __init__(self, url: str, workers: int, prefetch: int) -> None:
        self.url, self.workers, self.prefetch = url, workers, prefetch
        self.queues = {driver: f"bare-{driver}-{uuid.uuid4().hex[:8]}" for driver in DRIVERS}
        self.procs: list[Any] = []

    async def __aenter__(self) -> Bare:
        script = str(HERE / "bench_rabbitmq.py")
        for driver, queue in self.queues.items():
            command = [sys.executable, script, "--bare-worker", driver, queue]
            command += [str(self.prefetch)]
            self.procs += await start_workers(
                command, self.workers, child_env(AMQP_URL=self.url), f"bare-{driver}"
            )
        return self

    async def rep(self, runs: int) -> dict[str, float]:
        return {d: await bare_rep(self.url, q, runs) for d, q in self.queues.items()}

    async def __aexit__(self, *exc: object) -> None:
        stop_workers(self.procs)
        import aio_pika

        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel()
            for queue in self.queues.values():
                await channel.queue_delete(queue)
                await channel.queue_delete(f"{queue}.done")


# ------------------------------------------------------------------------------ flowcraft runs


def deployment(name: str, servers: dict[str, str]) -> Deployment:
    """Settings, worker environment and cleanup of one case's fresh queue and namespace."""
    if name.startswith("rabbitmq"):
        tag = f"b{uuid.uuid4().hex[:10]}"
        settings = RabbitSettings(
            amqp_url=servers["AMQP_URL"],
            database_url=servers["DATABASE_URL"],
            redis_url=servers["REDIS_URL"],
        ).namespaced(tag)

        def clean() -> None:
            import pika
            import psycopg

            connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
            channel = connection.channel()
            for suffix in ("", ".dead", ".parked"):
                channel.queue_delete(f"{settings.queue_name}{suffix}")
            connection.close()
            with psycopg.connect(settings.database_url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{tag}" CASCADE')
            drop_keys(settings.redis_url, tag)

        return settings, settings.to_env(), clean
    return redis_streams(servers)


def main() -> None:
    if sys.argv[1:2] == ["--bare-worker"]:
        driver, queue, prefetch = sys.argv[2], sys.argv[3], int(sys.argv[4])
        asyncio.run(bare_worker(driver, os.environ["AMQP_URL"], queue, prefetch))
        return
    servers = find_servers(SERVICES)

    async def bench(args: argparse.Namespace) -> dict[str, Any]:
        return await compare(
            args,
            lambda name: deployment(name, servers),
            lambda workers: Bare(servers["AMQP_URL"], workers, args.concurrency),
            "aio-pika",
        )

    bench_main("rabbitmq", "rabbitmq,rabbitmq-postgres,redis-streams", bench)


if __name__ == "__main__":
    main()
