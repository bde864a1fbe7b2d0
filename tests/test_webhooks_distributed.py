"""Webhook endpoints shared across processes: a worker's webhook node, another process's app.

With the memory backend the "processes" are separate adapter, registry and app objects that
share only the backend's stores; with Redis, two registries share a Redis coordination store.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

pytest.importorskip("starlette", reason="starlette is a test dependency (extra 'web')")
pytest.importorskip("httpx", reason="httpx is a test dependency")

import httpx

from flowcraft import BlueprintError, NodeContext, create_flow
from flowcraft.distributed import Client, CoordinationStore, Worker
from flowcraft.flow import Flow
from flowcraft.memory import MemoryAdapter, MemoryBackend, MemoryCoordinationStore
from flowcraft.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    CoordinationWebhookStore,
    WebhookEndpoint,
    WebhookRegistry,
    create_app,
    sign,
)

SECRETS = {"PAY_SECRET": "from-vault"}


def charge(ctx: NodeContext) -> str:
    return "charged"


def ship(ctx: NodeContext) -> Any:
    return {"shipped": ctx.input}


def _flow() -> Flow:
    flow = create_flow("payment").node("charge", charge)
    flow.node("paid", "webhook", params={"path": "/hooks/pay/{runId}", "secretName": "PAY_SECRET"})
    return flow.node("ship", ship).edge("charge", "paid").edge("paid", "ship")


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def _headers(body: bytes, delivery: str, secret: str = "from-vault") -> dict[str, str]:
    return {
        SIGNATURE_HEADER: sign(secret, body),
        DELIVERY_HEADER: delivery,
        "content-type": "application/json",
    }


@pytest.fixture
async def deployment() -> AsyncIterator[tuple[MemoryBackend, Client, Any]]:
    """A worker "process" with its own registry and an app "process" on its own adapter."""
    flow = _flow()
    blueprints = {"payment": flow.to_blueprint()}
    backend = MemoryBackend()
    worker_adapter = MemoryAdapter(backend, registry=flow.function_registry, blueprints=blueprints)
    WebhookRegistry(secret_resolver=SECRETS.get).install(worker_adapter)
    app_adapter = MemoryAdapter(backend, blueprints=blueprints)
    app = create_app(adapter=app_adapter, secret_resolver=SECRETS.get, background=False)
    async with Worker(worker_adapter, receive_wait=0.02):
        yield backend, Client(app_adapter), app


async def test_the_app_resumes_a_run_whose_webhook_node_ran_in_a_worker(
    deployment: tuple[MemoryBackend, Client, Any],
) -> None:
    backend, client, app = deployment
    run_id = await client.start("payment")
    paused = await client.wait(run_id, timeout=10)
    assert paused.status == "awaiting"
    path = f"/hooks/pay/{run_id}"
    assert paused.context["_awaitingDetails"]["paid"]["path"] == path
    record = await backend.coordination.get(f"flowcraft:webhook:live:{path}")
    assert record is not None and json.loads(record)["secretName"] == "PAY_SECRET"
    assert "from-vault" not in record  # resolved secrets stay out of the shared store

    body = json.dumps({"amount": 42}).encode()
    async with _client(app) as http:
        unsigned = await http.post(path, content=body, headers=_headers(body, "d-1", "wrong"))
        assert unsigned.status_code == 401
        accepted = await http.post(path, content=body, headers=_headers(body, "d-1"))
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["status"] in ("running", "completed")
        result = await client.wait(run_id, timeout=10)
        assert result.status == "completed"
        assert result.context["_outputs.ship"] == {"shipped": {"amount": 42}}
        replay = await http.post(path, content=body, headers=_headers(body, "d-1"))
        other = await http.post(path, content=body, headers=_headers(body, "d-2"))
    assert replay.status_code == 200 and replay.json()["duplicate"] is True
    assert replay.json()["runId"] == run_id
    assert other.status_code == 409
    # The worker that ended the run dropped its endpoints from the shared store.
    assert await app.state.registry.endpoints(run_id) == []


async def test_a_run_that_ended_has_no_endpoint_left(
    deployment: tuple[MemoryBackend, Client, Any],
) -> None:
    _, client, app = deployment
    run_id = await client.start("payment")
    assert (await client.wait(run_id, timeout=10)).status == "awaiting"
    assert [e.node_id for e in await app.state.registry.endpoints(run_id)] == ["paid"]
    await client.adapter.cancel(run_id)  # the app's adapter ends the run: its hook drops them
    body = b"{}"
    async with _client(app) as http:
        gone = await http.post(f"/hooks/pay/{run_id}", content=body, headers=_headers(body, "x"))
    assert gone.status_code == 404


async def test_an_app_that_cannot_resolve_the_secret_does_not_serve_the_endpoint() -> None:
    coordination = MemoryCoordinationStore()
    worker = WebhookRegistry(
        secret_resolver=SECRETS.get, store=CoordinationWebhookStore(coordination)
    )
    await worker.register("r1", "paid", {"secretName": "PAY_SECRET"})
    blind = WebhookRegistry(store=CoordinationWebhookStore(coordination))
    assert await blind.endpoint("/webhooks/r1/paid") is None
    sighted = WebhookRegistry(
        secret_resolver=SECRETS.get, store=CoordinationWebhookStore(coordination)
    )
    found = await sighted.endpoint("/webhooks/r1/paid")
    assert found is not None and found.secret == "from-vault"
    defaulted = WebhookRegistry(secret="shared", store=CoordinationWebhookStore(coordination))
    await defaulted.register("r2", "hook", {})
    raw = await coordination.get("flowcraft:webhook:live:/webhooks/r2/hook")
    assert raw is not None and "shared" not in raw
    assert (await defaulted.endpoint("/webhooks/r2/hook")) is not None


async def _shared_store_contract(coordination: CoordinationStore) -> None:
    """What every process sharing ``coordination`` sees, whichever process did what."""
    worker = WebhookRegistry(secret="s", store=CoordinationWebhookStore(coordination, ttl=60))
    resumed: list[tuple[str, Any]] = []

    async def resumer(endpoint: WebhookEndpoint, output: Any) -> str:
        resumed.append((endpoint.run_id, output))
        return "running"

    receiver = WebhookRegistry(
        secret="s", store=CoordinationWebhookStore(coordination, ttl=60), resumer=resumer
    )
    params = {"path": "/hooks/fixed"}
    assert await worker.register("run-1", "hook", params) == {"path": "/hooks/fixed"}
    # A redelivered webhook job registers again: harmless. Another run cannot take the path.
    assert await worker.register("run-1", "hook", params) == {"path": "/hooks/fixed"}
    with pytest.raises(BlueprintError, match="already registered"):
        await receiver.register("run-2", "hook", params)

    endpoint = await receiver.endpoint("/hooks/fixed")
    assert endpoint is not None and endpoint.run_id == "run-1" and endpoint.secret == "s"
    # Concurrent deliveries with different ids: exactly one gets through.
    answers = await asyncio.gather(
        *(receiver.deliver(endpoint, f"id-{n}", n, background=False) for n in range(5))
    )
    assert sorted(status for status, _ in answers) == [200, 409, 409, 409, 409]
    assert len(resumed) == 1
    (winner,) = [body for status, body in answers if status == 200]
    replay = await worker.deliver(endpoint, winner["deliveryId"], None, background=False)
    assert replay == (
        200,
        {"runId": "run-1", "nodeId": "hook", "deliveryId": winner["deliveryId"], "duplicate": True},
    )
    assert len(resumed) == 1
    # Spent, the path is free for the next run; the spent endpoint still answers replays.
    assert await worker.register("run-2", "hook", params) == {"path": "/hooks/fixed"}
    nxt = await receiver.endpoint("/hooks/fixed")
    assert nxt is not None and nxt.run_id == "run-2" and nxt.id != endpoint.id
    await worker.store.drop_run("run-2")
    assert await receiver.endpoints("run-2") == []
    spent = await receiver.endpoint("/hooks/fixed")
    assert spent is not None and spent.run_id == "run-1"


async def test_shared_store_semantics_on_the_memory_coordination_store() -> None:
    await _shared_store_contract(MemoryCoordinationStore())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def redis_url() -> Iterator[str]:
    pytest.importorskip("redis", reason="the redis client comes with flowcraft-redis")
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip(reason="redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail("redis-server did not start")
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_shared_store_semantics_on_redis(redis_url: str) -> None:
    pytest.importorskip("flowcraft_redis", reason="flowcraft-redis is part of the workspace")
    import redis.asyncio as aioredis

    from flowcraft_redis import RedisCoordinationStore

    client = aioredis.Redis.from_url(redis_url)
    try:
        await _shared_store_contract(RedisCoordinationStore(client))
    finally:
        await client.aclose()
