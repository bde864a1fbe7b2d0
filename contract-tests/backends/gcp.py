"""Contract-suite fixture of flowcraft-gcp: Google's Pub/Sub and Firestore emulators and Redis.

Provisioning: ``PUBSUB_EMULATOR_HOST``, ``FIRESTORE_EMULATOR_HOST`` and ``REDIS_URL`` if set,
else the servers of ``flowcraft_services`` (the emulators from the machine image's Cloud SDK
packages, Redis). Each test gets a topic, subscriptions, Firestore collections and a Redis key
prefix of its own; reset deletes them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import redis as sync_redis
from google.api_core import exceptions as google_errors
from google.cloud import firestore, pubsub_v1  # type: ignore[attr-defined]
from google.cloud.firestore_v1.field_path import FieldPath

from backends._fixture import spawn_worker
from flowcraft.blueprint import Blueprint
from flowcraft.distributed import ContextStore, CoordinationStore, DistributedAdapter
from flowcraft_gcp import REASON, GcpAdapter, GcpSettings

__all__ = ["Deployment", "Fixture"]

_SERVICES = (
    ("pubsub", "PUBSUB_EMULATOR_HOST"),
    ("firestore", "FIRESTORE_EMULATOR_HOST"),
    ("redis", "REDIS_URL"),
)
_SOURCE_COUNT = "CloudPubSubDeadLetterSourceDeliveryCount"
_DELETES_PER_BATCH = 500
"""Firestore's limit on the writes of one batch."""
_SUPPORT = Path(__file__).parents[2] / "packages" / "redis" / "tests"
"""Where the Redis package's test servers live (a private, restartable redis-server)."""


class Deployment:
    """One test's share of the servers."""

    def __init__(self, base: GcpSettings, lease: float) -> None:
        tagged = base.namespaced(f"t{uuid.uuid4().hex[:10]}")
        self.settings = dataclasses.replace(tagged, lease_seconds=lease)
        self.lease = lease
        self.adapters: list[GcpAdapter] = []


class Fixture:
    """What the suite needs from a backend."""

    name = "gcp"
    carries_raw_text = True
    """Message data are the bytes published, JSON or not."""

    def __init__(self) -> None:
        self.base = GcpSettings()
        self.env: dict[str, str] = {}

    def provision(self) -> None:
        """Reach the servers named in the environment, or start them."""
        env = {name: os.environ[name] for _, name in _SERVICES if os.environ.get(name)}
        for service, variable in _SERVICES:
            if variable not in env:
                from flowcraft_services import resolve

                env.update(resolve(service).start())
        project = env.get("GOOGLE_CLOUD_PROJECT") or os.environ.get(
            "GOOGLE_CLOUD_PROJECT", "flowcraft-test"
        )
        self.env = {
            "PUBSUB_EMULATOR_HOST": env["PUBSUB_EMULATOR_HOST"],
            "FIRESTORE_EMULATOR_HOST": env["FIRESTORE_EMULATOR_HOST"],
            "GOOGLE_CLOUD_PROJECT": project,
            "REDIS_URL": env["REDIS_URL"],
        }
        # Google's clients read the emulator hosts from the environment only.
        os.environ.update(self.env)
        self.base = GcpSettings.from_env(self.env, client_name="flowcraft")
        self._publisher().list_topics(request={"project": f"projects/{project}"}, timeout=5)
        self._firestore().collection("_probe").document("probe").get(timeout=5)
        with sync_redis.Redis.from_url(self.base.redis_url, socket_timeout=5) as client:
            client.ping()

    def _publisher(self) -> Any:
        return pubsub_v1.PublisherClient()

    def _subscriber(self) -> Any:
        return pubsub_v1.SubscriberClient()

    def _firestore(self) -> firestore.Client:
        return firestore.Client(project=self.base.project)

    def spawn_worker(
        self, deployment: Deployment, app: str, env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        """A ``flowcraft worker`` process serving ``deployment`` (for SIGKILL tests)."""
        return spawn_worker(self.name, app, {**env, **self.env, **deployment.settings.to_env()})

    def deployment(self, *, lease: float) -> Deployment:
        """A fresh topic, subscriptions, collections and key prefix for one test."""
        return Deployment(self.base, lease)

    @contextlib.asynccontextmanager
    async def restartable(
        self, *, lease: float
    ) -> AsyncIterator[tuple[Deployment, Callable[[float], Awaitable[None]]]]:
        """A deployment whose Redis is a private redis-server (``appendonly yes``,
        ``appendfsync always``), and its restart: SIGKILL, a pause, the same port and data.

        Only Redis restarts: it is the one server of this backend a deployment runs itself.
        Pub/Sub and Firestore are services that do not restart under their clients, and their
        emulators keep everything in memory (a restarted emulator is an empty one)."""
        if str(_SUPPORT) not in sys.path:
            sys.path.insert(0, str(_SUPPORT))
        from redis_test_support import RedisServer

        with tempfile.TemporaryDirectory(prefix="flowcraft-gcp-restart-") as workdir:
            server = RedisServer(Path(workdir), persistent=True)

            async def restart(down_for: float) -> None:
                await asyncio.to_thread(server.restart, signal.SIGKILL, down_for)

            server.start()
            deployment = Deployment(dataclasses.replace(self.base, redis_url=server.url), lease)
            try:
                yield deployment, restart
            finally:
                await self.reset(deployment)
                server.stop()

    def adapter(
        self,
        deployment: Deployment,
        registry: Mapping[str, Any],
        blueprints: Mapping[str, Blueprint],
        **options: Any,
    ) -> DistributedAdapter:
        """An adapter (one per worker or client) over ``deployment``."""
        options.setdefault("lease", deployment.lease)
        # Named, so that Redis can count each adapter's connections.
        settings = dataclasses.replace(
            deployment.settings, client_name=f"fc-{uuid.uuid4().hex[:12]}"
        )
        adapter = GcpAdapter(settings, registry=registry, blueprints=blueprints, **options)
        deployment.adapters.append(adapter)
        return adapter

    def stores(self, deployment: Deployment) -> tuple[CoordinationStore, ContextStore]:
        """The stores of an adapter of their own (closed at reset)."""
        adapter = GcpAdapter(deployment.settings)
        deployment.adapters.append(adapter)
        return adapter.coordination, adapter.context

    def client_connections(self, deployment: Deployment, adapter: DistributedAdapter) -> int:
        """The adapter's gRPC channels that are connected (Pub/Sub publisher and subscriber,
        Firestore: one HTTP/2 connection each; the emulators cannot list their clients) and
        its Redis connections, counted by Redis under the adapter's client name."""
        assert isinstance(adapter, GcpAdapter)
        name = adapter.settings.client_name
        with sync_redis.Redis.from_url(self.base.redis_url, decode_responses=True) as client:
            redis = sum(1 for c in client.client_list() if c.get("name") == name)
        return adapter.connections() + redis

    def _pull_all(self, subscription: str) -> list[Any]:
        """Every message of ``subscription`` pullable now, handed back afterwards."""
        subscriber = self._subscriber()
        received: list[Any] = []
        try:
            while True:
                try:
                    response = subscriber.pull(
                        request={
                            "subscription": subscription,
                            "max_messages": 1000,
                            "return_immediately": True,
                        },
                        timeout=10,
                    )
                except google_errors.NotFound:
                    break
                if not response.received_messages:
                    break
                received.extend(response.received_messages)
            ids = [m.ack_id for m in received]
            for start in range(0, len(ids), 1000):
                subscriber.modify_ack_deadline(
                    request={
                        "subscription": subscription,
                        "ack_ids": ids[start : start + 1000],
                        "ack_deadline_seconds": 0,
                    }
                )
        finally:
            subscriber.close()
        return received

    def dead_letters(self, deployment: Deployment) -> list[str]:
        """Reasons of the messages on the dead-letter subscription (left on it)."""
        reasons = []
        for m in self._pull_all(deployment.settings.dead_letter_subscription_path):
            attributes = m.message.attributes
            reason = attributes.get(REASON)
            if reason is None:
                reason = f"delivered {attributes.get(_SOURCE_COUNT, '?')} times (Pub/Sub)"
            reasons.append(str(reason))
        return reasons

    def queued_jobs(self, deployment: Deployment) -> int:
        """Jobs waiting on the subscription (Pub/Sub cannot count the ones live workers
        lease; the emulator has no metrics API)."""
        return len(self._pull_all(deployment.settings.subscription_path))

    async def inject(self, deployment: Deployment, body: str) -> None:
        """Publish a raw (possibly malformed) job, as a foreign producer could."""
        adapter = GcpAdapter(deployment.settings)
        deployment.adapters.append(adapter)
        await adapter.queue.enqueue(body)

    async def reset(self, deployment: Deployment) -> None:
        """Close the test's adapters; delete its topics, subscriptions, documents and keys."""
        # Kept in the list: a test may use an adapter again after a reset (it reconnects),
        # and the final reset must close it again.
        for adapter in deployment.adapters:
            await adapter.close()
        s = deployment.settings
        subscriber = self._subscriber()
        try:
            for subscription in (s.subscription_path, s.dead_letter_subscription_path):
                with contextlib.suppress(google_errors.NotFound):
                    subscriber.delete_subscription(request={"subscription": subscription})
        finally:
            subscriber.close()
        publisher = self._publisher()
        for topic in (s.topic_path, s.dead_letter_topic_path):
            with contextlib.suppress(google_errors.NotFound):
                publisher.delete_topic(request={"topic": topic})
        db = self._firestore()
        try:
            for collection in (s.context_collection, s.status_collection):
                _delete_all(db, collection)
        finally:
            db.close()  # type: ignore[no-untyped-call]
        with sync_redis.Redis.from_url(s.redis_url) as client:
            keys = list(client.scan_iter(match=f"{s.redis_prefix}*", count=1000))
            if keys:
                client.delete(*keys)


def _delete_all(db: firestore.Client, collection: str) -> None:
    """Every document under ``collection``, subcollections included, in batched deletes of
    500: ``recursive_delete`` throttles its BulkWriter from 500 writes/s up (2,000 documents
    on the emulator: 5.0 s with it, 1.7 s so; the 2,000-waits test's teardown took 30 s)."""
    query = db.collection(collection).recursive().select([FieldPath.document_id()])
    refs = [snapshot.reference for snapshot in query.stream()]
    for start in range(0, len(refs), _DELETES_PER_BATCH):
        batch = db.batch()
        for ref in refs[start : start + _DELETES_PER_BATCH]:
            batch.delete(ref)
        batch.commit()
