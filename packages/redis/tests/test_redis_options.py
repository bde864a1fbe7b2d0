"""The adapter configured as the TypeScript adapter's docs show it (issue 22): one shared
connection, a replaced coordination store, ``{host, port}`` and ``prefix``, TLS; and the
TS-compatibility details: a cancelled run's status reason, a reused run id, reconcile's
fallback to the context's blueprint id."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from flowcraft import NodeContext, create_flow
from flowcraft.distributed import Client, DistributedAdapter, Worker
from flowcraft.errors import RunExists
from flowcraft_redis import (
    RedisAdapter,
    RedisCoordinationStore,
    RedisSettings,
    RedisStreamsAdapter,
)
from flowcraft_redis.hop import RedisHopCommitter

T = 60.0
KINDS = [RedisAdapter, RedisStreamsAdapter]


async def step(ctx: NodeContext) -> str:
    return ctx.node_id


FLOW = create_flow("options").node("a", step).node("b", step).edge("a", "b")
BLUEPRINT = FLOW.to_blueprint()
OPTIONS: dict[str, Any] = {
    "registry": FLOW.function_registry,
    "blueprints": {BLUEPRINT.id: BLUEPRINT},
}


@pytest.fixture(scope="session")
def redis_tls_url() -> str:
    url = os.environ.get("REDIS_TLS_URL")
    if not url:
        from flowcraft_services import resolve

        url = resolve("redis-tls").start()["REDIS_TLS_URL"]
    return url


@pytest.fixture
def queue() -> str:
    return f"opts-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def unreachable_default(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Whatever still connects to the default URL fails instead of finding a server there.
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    yield


@asynccontextmanager
async def serving(make: Callable[[], DistributedAdapter]) -> AsyncIterator[Client]:
    """A worker and a client, each on an adapter ``make`` builds."""
    worker_adapter, client_adapter = make(), make()
    worker = Worker(worker_adapter, concurrency=4, receive_wait=0.05)
    worker.start()
    try:
        yield Client(client_adapter)
    finally:
        await worker.stop()
        await worker_adapter.close()
        await client_adapter.close()


async def completes(client: Client) -> None:
    result = await client.run(BLUEPRINT.id, {}, timeout=T)
    assert result.status == "completed", result.errors


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.usefixtures("unreachable_default")
async def test_every_part_uses_the_shared_connection(redis_url: str, queue: str, kind: Any) -> None:
    shared = aioredis.Redis.from_url(redis_url)
    settings = RedisSettings.from_env(queue_name=queue)
    try:
        async with serving(lambda: kind(settings, connection=shared, **OPTIONS)) as client:
            await completes(client)
        # The adapter leaves a shared client open for its owner.
        assert await shared.ping()
    finally:
        await shared.aclose()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.usefixtures("unreachable_default")
async def test_the_coordination_store_is_replaceable(redis_url: str, queue: str, kind: Any) -> None:
    shared = aioredis.Redis.from_url(redis_url)
    settings = RedisSettings.from_env(queue_name=queue)
    # The seed's RedisCoordinationStore(redisConnection): the adapter's own layout, so the
    # one-step hop stays; with one of a layout of its own, hops take core's split hop over it.
    stores = [
        lambda: RedisCoordinationStore(shared),
        lambda: RedisCoordinationStore(shared, RedisSettings(coordination_prefix=f"{queue}:")),
    ]
    try:
        for store, one_step in zip(stores, [True, False], strict=True):
            adapter = kind(settings, connection=shared, coordination=store(), **OPTIONS)
            assert isinstance(adapter.hops, RedisHopCommitter) is one_step
            await adapter.close()
            async with serving(
                lambda store=store: kind(settings, client=shared, coordination=store(), **OPTIONS)
            ) as client:
                await completes(client)
    finally:
        await shared.aclose()


@pytest.mark.usefixtures("unreachable_default")
async def test_host_port_and_prefix_as_seed_004_passes_them(redis_url: str, queue: str) -> None:
    where = urlsplit(redis_url)
    connection = {"host": where.hostname, "port": where.port}
    settings = RedisSettings(queue_name=queue)
    make = lambda: RedisAdapter(settings, connection=connection, prefix="flowcraft", **OPTIONS)  # noqa: E731
    async with serving(make) as client:
        await completes(client)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        # BullMQ's job id counter, under the prefix given.
        assert await raw.exists(f"flowcraft:{queue}:id")
        assert not await raw.exists(f"bull:{queue}:id")
    finally:
        await raw.aclose()


@pytest.mark.parametrize("kind", KINDS)
async def test_runs_over_tls(redis_tls_url: str, queue: str, kind: Any) -> None:
    assert redis_tls_url.startswith("rediss://")
    settings = RedisSettings(url=redis_tls_url, queue_name=queue)
    async with serving(lambda: kind(settings, **OPTIONS)) as client:
        await completes(client)


async def test_a_cluster_client_is_refused_with_what_to_pass() -> None:
    cluster = RedisCluster(host="127.0.0.1", port=1)
    with pytest.raises(TypeError, match=r"cluster=True"):
        RedisAdapter(connection=cluster, **OPTIONS)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_cancelled_runs_status_key_carries_a_reason(
    redis_url: str, queue: str, kind: Any
) -> None:
    settings = RedisSettings(url=redis_url, queue_name=queue).namespaced(queue)
    adapter = kind(settings, **OPTIONS)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        client = Client(adapter)
        run_id = await client.start(BLUEPRINT.id, {})
        assert await client.cancel(run_id)
        status = orjson.loads(await raw.get(settings.status_key(run_id)))
        assert status == {"status": "cancelled", "reason": "Workflow cancelled"}
    finally:
        await adapter.close()
        await raw.aclose()


async def test_a_reused_run_id_raises_unless_attached(redis_url: str, queue: str) -> None:
    settings = RedisSettings(url=redis_url).namespaced(queue)
    adapter = RedisStreamsAdapter(settings, **OPTIONS)
    try:
        run_id = await adapter.start_run(BLUEPRINT.id, {"x": 1}, f"run-{queue}")
        with pytest.raises(RunExists):
            await adapter.start_run(BLUEPRINT.id, {"x": 2}, run_id)
        assert await adapter.start_run(BLUEPRINT.id, {"x": 2}, run_id, exists="attach") == run_id
        # Attaching keeps the run's context.
        assert await adapter.context.get(run_id, "x") == 1
    finally:
        await adapter.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_reconcile_falls_back_to_the_contexts_blueprint_id(
    redis_url: str, queue: str, kind: Any
) -> None:
    settings = RedisSettings(url=redis_url, queue_name=queue).namespaced(queue)
    starter = kind(settings, **OPTIONS)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        run_id = await starter.start_run(BLUEPRINT.id, {})
        # The coordination record is lost; the context still names the blueprint.
        await raw.delete(settings.coordination_key(starter.keys.meta(run_id)))
        assert await starter.reconcile(run_id) == {"a"}
        assert await starter.meta(run_id) == (BLUEPRINT.id, BLUEPRINT.version)
        async with serving(lambda: kind(settings, **OPTIONS)) as client:
            result = await client.wait(run_id, T)
            assert result.status == "completed", result.errors
    finally:
        await starter.close()
        await raw.aclose()
