"""Google Pub/Sub + Firestore benchmark: flowcraft-gcp against the bare driver loops and Streams.

Usage: python benchmarks/bench_gcp.py [--transports gcp,redis-streams] [--runs 50] [--reps 2]
       [--workers 1,2] [--concurrency 8] [--single 10] [--out FILE]

For each transport: ``--runs`` concurrent runs of ``chain20`` and of ``fan20`` on 1 and 2 worker
processes (node executions/s, run p50/p95, completion seen by the client), then single
``chain20`` runs on one worker (per-hop latency, completion seen). After each repetition of
ours, one repetition of the bare loops on the same emulator with as many worker processes:
each receives a message, acks it and publishes the next one (a chain of 20 messages per run,
``--runs`` chains at once, at most ``--concurrency`` messages held per process), no Flowcraft:

* ``async-pull``: the backend's driver, ``SubscriberAsyncClient.pull`` / ``acknowledge`` and
  ``PublisherAsyncClient.publish`` (one request per pulled batch, as the backend batches
  a tick's acks and publishes);
* ``streaming-pull``: the threaded ``SubscriberClient.subscribe`` (streaming pull, flow
  control ``max_messages``) with the batching ``PublisherClient``, callbacks in its threads;
* ``async-pull+firestore``: the ``async-pull`` loop plus the least a hop needs from Firestore
  (per pulled batch, one batch get and one batched write of a document per message), to show
  what the Firestore emulator leaves of the bare loop.

Ratios are ours over the ``async-pull`` loop of the same repetitions. Servers:
``flowcraft_services`` (or ``PUBSUB_EMULATOR_HOST``, ``FIRESTORE_EMULATOR_HOST``,
``REDIS_URL``).
"""

from __future__ import annotations

import argparse
import asyncio
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

from flowcraft_gcp import GcpSettings

HERE = Path(__file__).resolve().parent
DRIVERS = ("async-pull", "streaming-pull", "async-pull+firestore")
SERVICES = (
    ("pubsub", ("PUBSUB_EMULATOR_HOST",)),
    ("firestore", ("FIRESTORE_EMULATOR_HOST",)),
    ("redis", ("REDIS_URL",)),
)


def project() -> str:
    return os.environ.get("GOOGLE_CLOUD_PROJECT", "flowcraft-test")


# ------------------------------------------------------------------------------ the bare loop


async def bare_worker(driver: str, topic: str, subscription: str, prefetch: int) -> None:
    """Receive → ack → publish the next message, until SIGTERM."""
    import signal

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    if driver == "streaming-pull":
        await _serve_streaming(topic, subscription, prefetch, stop)
    else:
        await _serve_async(topic, subscription, prefetch, stop, firestore=driver != "async-pull")


def _next(data: bytes, topic: str) -> tuple[str, bytes]:
    left = orjson.loads(data)["left"]
    if left > 0:
        return topic, orjson.dumps({"left": left - 1})
    return f"{topic}-done", b"{}"


async def _serve_async(
    topic: str, subscription: str, prefetch: int, stop: asyncio.Event, *, firestore: bool
) -> None:
    from google.cloud.firestore import AsyncClient
    from google.pubsub_v1.services.publisher import PublisherAsyncClient
    from google.pubsub_v1.services.subscriber import SubscriberAsyncClient

    publisher, subscriber = PublisherAsyncClient(), SubscriberAsyncClient()
    db = AsyncClient(project=project()) if firestore else None
    documents = db.collection(topic.rsplit("/", 1)[-1]) if db is not None else None
    print("worker started", file=sys.stderr, flush=True)

    async def serve() -> None:
        while True:
            response = await subscriber.pull(
                request={"subscription": subscription, "max_messages": prefetch},
                timeout=60,
                retry=None,
            )
            received = list(response.received_messages)
            if not received:
                continue
            if db is not None and documents is not None:
                # What a hop needs from Firestore at the least, as the backend sends a tick's:
                # one batch get of the messages' documents, one batched write of them.
                refs = [documents.document(m.message.message_id) for m in received]
                async for _ in db.get_all(refs):
                    pass
                batch = db.batch()
                for ref in refs:
                    batch.set(ref, {"v": b"x"})
                await batch.commit()
            await subscriber.acknowledge(
                subscription=subscription, ack_ids=[m.ack_id for m in received]
            )
            out: dict[str, list[dict[str, bytes]]] = {}
            for m in received:
                target, body = _next(m.message.data, topic)
                out.setdefault(target, []).append({"data": body})
            await asyncio.gather(
                *(publisher.publish(topic=t, messages=msgs) for t, msgs in out.items())
            )

    task = asyncio.ensure_future(serve())
    await stop.wait()
    task.cancel()


async def _serve_streaming(
    topic: str, subscription: str, prefetch: int, stop: asyncio.Event
) -> None:
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()

    def handle(message: Any) -> None:
        target, body = _next(message.data, topic)
        message.ack()
        # Waiting for the publish's message id, as the async loop waits for its reply.
        publisher.publish(target, body).result()

    future = subscriber.subscribe(
        subscription, handle, flow_control=pubsub_v1.types.FlowControl(max_messages=prefetch)
    )
    print("worker started", file=sys.stderr, flush=True)
    await stop.wait()
    future.cancel()
    subscriber.close()


async def bare_rep(topic: str, done: str, runs: int) -> float:
    """``runs`` chains of 20 messages through the bare workers; messages per second."""
    from google.pubsub_v1.services.publisher import PublisherAsyncClient
    from google.pubsub_v1.services.subscriber import SubscriberAsyncClient

    publisher, subscriber = PublisherAsyncClient(), SubscriberAsyncClient()
    try:
        began = time.perf_counter()
        first = orjson.dumps({"left": NODE_COUNT[CHAIN] - 1})
        await publisher.publish(topic=topic, messages=[{"data": first}] * runs)
        seen = 0
        while seen < runs:
            response = await subscriber.pull(
                request={"subscription": done, "max_messages": 1000}, timeout=60, retry=None
            )
            ids = [m.ack_id for m in response.received_messages]
            if ids:
                await subscriber.acknowledge(subscription=done, ack_ids=ids)
            seen += len(ids)
        return runs * NODE_COUNT[CHAIN] / (time.perf_counter() - began)
    finally:
        await publisher.transport.close()
        await subscriber.transport.close()


class Bare:
    """Bare-loop worker processes of both drivers, a topic each, for one worker count."""

    def __init__(self, workers: int, prefetch: int) -> None:
        self.workers, self.prefetch = workers, prefetch
        tag = uuid.uuid4().hex[:8]
        base = f"projects/{project()}"
        self.topics = {d: f"{base}/topics/bare-{d}-{tag}" for d in DRIVERS}
        self.procs: list[Any] = []

    def _subscription(self, topic: str) -> str:
        return topic.replace("/topics/", "/subscriptions/")

    async def __aenter__(self) -> Bare:
        from google.pubsub_v1.services.publisher import PublisherAsyncClient
        from google.pubsub_v1.services.subscriber import SubscriberAsyncClient

        publisher, subscriber = PublisherAsyncClient(), SubscriberAsyncClient()
        for topic in self.topics.values():
            for name in (topic, f"{topic}-done"):
                await publisher.create_topic(name=name)
                await subscriber.create_subscription(
                    name=self._subscription(name), topic=name, ack_deadline_seconds=30
                )
        script = str(HERE / "bench_gcp.py")
        for driver, topic in self.topics.items():
            command = [sys.executable, script, "--bare-worker", driver, topic]
            command += [self._subscription(topic), str(self.prefetch)]
            self.procs += await start_workers(command, self.workers, child_env(), f"bare-{driver}")
        return self

    async def rep(self, runs: int) -> dict[str, float]:
        return {
            d: await bare_rep(t, self._subscription(f"{t}-done"), runs)
            for d, t in self.topics.items()
        }

    async def __aexit__(self, *exc: object) -> None:
        stop_workers(self.procs)
        from google.pubsub_v1.services.publisher import PublisherAsyncClient
        from google.pubsub_v1.services.subscriber import SubscriberAsyncClient

        publisher, subscriber = PublisherAsyncClient(), SubscriberAsyncClient()
        for topic in self.topics.values():
            for name in (topic, f"{topic}-done"):
                await subscriber.delete_subscription(subscription=self._subscription(name))
                await publisher.delete_topic(topic=name)
        from google.cloud import firestore

        db = firestore.Client(project=project())
        collection = self.topics["async-pull+firestore"].rsplit("/", 1)[-1]
        db.recursive_delete(db.collection(collection))


# ------------------------------------------------------------------------------ flowcraft runs


def deployment(name: str, servers: dict[str, str]) -> Deployment:
    """Settings, worker environment and cleanup of one case's fresh topic and namespace."""
    if name == "gcp":
        tag = f"b{uuid.uuid4().hex[:10]}"
        settings = GcpSettings.from_env(servers).namespaced(tag)

        def clean() -> None:
            from google.api_core import exceptions as google_errors
            from google.cloud import firestore, pubsub_v1  # type: ignore[attr-defined]

            subscriber = pubsub_v1.SubscriberClient()
            publisher = pubsub_v1.PublisherClient()
            for path in (settings.subscription_path, settings.dead_letter_subscription_path):
                with contextlib.suppress(google_errors.NotFound):
                    subscriber.delete_subscription(subscription=path)
            for path in (settings.topic_path, settings.dead_letter_topic_path):
                with contextlib.suppress(google_errors.NotFound):
                    publisher.delete_topic(topic=path)
            subscriber.close()
            db = firestore.Client(project=settings.project)
            for collection in (settings.context_collection, settings.status_collection):
                db.recursive_delete(db.collection(collection))
            drop_keys(settings.redis_url, tag)

        return settings, {**servers, **settings.to_env()}, clean
    return redis_streams(servers)


def main() -> None:
    if sys.argv[1:2] == ["--bare-worker"]:
        driver, topic, subscription, prefetch = sys.argv[2:6]
        asyncio.run(bare_worker(driver, topic, subscription, int(prefetch)))
        return
    # Google's clients, ours and the bare loops', read the emulator hosts from the environment.
    servers = find_servers(SERVICES)
    servers["GOOGLE_CLOUD_PROJECT"] = os.environ.setdefault("GOOGLE_CLOUD_PROJECT", project())

    async def bench(args: argparse.Namespace) -> dict[str, Any]:
        return await compare(
            args,
            lambda name: deployment(name, servers),
            lambda workers: Bare(workers, args.concurrency),
            "async-pull",
        )

    bench_main("gcp", "gcp,redis-streams", bench)


if __name__ == "__main__":
    main()
