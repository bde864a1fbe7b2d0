"""Contract-suite fixture of flowcraft-redis with the BullMQ transport.

Provisioning: ``REDIS_URL`` if set, else testcontainers when Docker is reachable, else a local
redis-server started by ``flowcraft_services`` (installed from Debian if missing).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis as sync_redis
import redis.asyncio as aioredis

from backends._fixture import spawn_worker
from flowcraft.blueprint import Blueprint
from flowcraft.distributed import ContextStore, CoordinationStore, DistributedAdapter
from flowcraft_redis import (
    RedisAdapter,
    RedisContextStore,
    RedisCoordinationStore,
    RedisSettings,
    RedisStreamsAdapter,
)

__all__ = ["Deployment", "Fixture"]

_SUPPORT = Path(__file__).parents[2] / "packages" / "redis" / "tests"
"""Where ``redis_test_support`` (a private redis-server) lives."""


class Deployment:
    """One test's share of the server: a queue and key namespace of its own."""

    def __init__(self, settings: RedisSettings, lease: float) -> None:
        self.settings = settings.namespaced(f"t{uuid.uuid4().hex[:8]}")
        self.lease = lease
        self.adapters: list[DistributedAdapter] = []
        self.clients: list[aioredis.Redis] = []


class Fixture:
    """What the suite needs from a backend."""

    name = "redis"
    adapter_class: type[RedisAdapter] | type[RedisStreamsAdapter] = RedisAdapter
    carries_raw_text = False
    """BullMQ stores job data as JSON, so injected text arrives as a JSON string."""

    service = "redis"
    """The ``flowcraft_services`` server started when ``url_variable`` is unset."""
    url_variable = "REDIS_URL"

    def __init__(self) -> None:
        self.url = ""

    def provision(self) -> None:
        """Reach the server ``url_variable`` names, or start one."""
        url = os.environ.get(self.url_variable)
        if not url:
            from flowcraft_services import resolve

            url = resolve(self.service).start()[self.url_variable]
        self.url = url
        with self.sync(self.deployment(lease=1.0)) as client:
            client.ping()

    def settings(self) -> RedisSettings:
        """The settings every deployment is namespaced from."""
        return RedisSettings(url=self.url)

    def sync(self, deployment: Deployment, **options: Any) -> sync_redis.Redis:
        """A blocking client to where ``deployment``'s keys are."""
        return sync_redis.Redis.from_url(self.url, **options)

    def spawn_worker(
        self, deployment: Deployment, app: str, env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        """A ``flowcraft worker`` process serving ``deployment`` (for SIGKILL tests)."""
        settings = deployment.settings
        settings_env = {
            "REDIS_URL": settings.url,
            "FLOWCRAFT_REDIS_QUEUE_NAME": settings.queue_name,
            "FLOWCRAFT_REDIS_STATE_PREFIX": settings.state_prefix,
            "FLOWCRAFT_REDIS_STATUS_PREFIX": settings.status_prefix,
            "FLOWCRAFT_REDIS_COORDINATION_PREFIX": settings.coordination_prefix,
            "FLOWCRAFT_REDIS_LEASE_SECONDS": str(deployment.lease),
            "FLOWCRAFT_REDIS_CLUSTER": str(settings.cluster),
        }
        return spawn_worker(self.name, app, {**env, **settings_env})

    @contextlib.asynccontextmanager
    async def restartable(
        self, *, lease: float
    ) -> AsyncIterator[tuple[Deployment, Callable[[float], Awaitable[None]]]]:
        """A deployment on a private redis-server with ``appendonly yes`` and ``appendfsync
        always`` (the deployment assumption under which a restart loses no acknowledged
        write), and its restart: SIGKILL, a pause, the same port and data again."""
        if str(_SUPPORT) not in sys.path:
            sys.path.insert(0, str(_SUPPORT))
        from redis_test_support import RedisServer

        with tempfile.TemporaryDirectory(prefix="flowcraft-restart-") as workdir:
            server = RedisServer(Path(workdir), persistent=True)

            async def restart(down_for: float) -> None:
                await asyncio.to_thread(server.restart, signal.SIGKILL, down_for)

            server.start()
            deployment: Deployment | None = None
            try:
                deployment = Deployment(RedisSettings(url=server.url), lease)
                yield deployment, restart
            finally:
                for adapter in deployment.adapters if deployment is not None else ():
                    await adapter.close()
                server.stop()

    def deployment(self, *, lease: float) -> Deployment:
        """A fresh namespace for one test."""
        return Deployment(self.settings(), lease)

    def adapter(
        self,
        deployment: Deployment,
        registry: Mapping[str, Any],
        blueprints: Mapping[str, Blueprint],
        **options: Any,
    ) -> DistributedAdapter:
        """An adapter (one per worker or client) over ``deployment``."""
        options.setdefault("lease", deployment.lease)
        # Named, so that the server can count each adapter's connections.
        settings = replace(deployment.settings, client_name=f"fc-{uuid.uuid4().hex[:12]}")
        adapter = self.adapter_class(settings, registry=registry, blueprints=blueprints, **options)
        deployment.adapters.append(adapter)
        return adapter

    def stores(self, deployment: Deployment) -> tuple[CoordinationStore, ContextStore]:
        """Stores on a client of their own (closed at reset)."""
        client = deployment.settings.client()
        deployment.clients.append(client)
        return (
            RedisCoordinationStore(client, deployment.settings),
            RedisContextStore(client, deployment.settings),
        )

    def queued_jobs(self, deployment: Deployment) -> int:
        """Jobs BullMQ holds waiting, delayed, prioritized or active."""
        prefix = f"{deployment.settings.bullmq_prefix}:{deployment.settings.queue_name}"
        with self.sync(deployment) as client:
            return int(
                client.llen(f"{prefix}:wait")
                + client.llen(f"{prefix}:active")
                + client.zcard(f"{prefix}:delayed")
                + client.zcard(f"{prefix}:prioritized")
            )

    def client_connections(self, deployment: Deployment, adapter: DistributedAdapter) -> int:
        """Connections the server has open under the adapter's client name."""
        name = getattr(adapter, "settings", deployment.settings).client_name
        with self.sync(deployment, decode_responses=True) as client:
            return sum(1 for c in client.client_list() if c.get("name") == name)

    def dead_letters(self, deployment: Deployment) -> list[str]:
        """Reasons of the jobs BullMQ holds as failed."""
        prefix = f"{deployment.settings.bullmq_prefix}:{deployment.settings.queue_name}"
        with self.sync(deployment, decode_responses=True) as client:
            ids = client.zrange(f"{prefix}:failed", 0, -1)
            return [str(client.hget(f"{prefix}:{i}", "failedReason") or "") for i in ids]

    async def inject(self, deployment: Deployment, body: str) -> None:
        """Put a raw (possibly malformed) job on the queue, as a foreign producer could."""
        from bullmq import Queue

        settings = deployment.settings
        connection = settings.client()
        queue = Queue(
            settings.queue_name, {"connection": connection, "prefix": settings.bullmq_prefix}
        )
        try:
            await queue.add("executeNode", _raw(body), {})
        finally:
            await queue.close()
            await connection.aclose()

    async def reset(self, deployment: Deployment) -> None:
        """Close every adapter of the test and delete its keys."""
        for adapter in deployment.adapters:
            await adapter.close()
        for client in deployment.clients:
            await client.aclose()
        deployment.adapters.clear()
        deployment.clients.clear()
        with self.sync(deployment) as client:
            # Every key of the deployment names its namespace (BullMQ's by the queue name).
            for pattern in (f"*{deployment.settings.coordination_prefix}*", "*bull:*"):
                keys = list(client.scan_iter(match=pattern, count=1000))
                if pattern == "*bull:*":
                    keys = [k for k in keys if deployment.settings.queue_name.encode() in k]
                if keys:
                    client.delete(*keys)


def _raw(body: str) -> Any:
    import orjson

    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
