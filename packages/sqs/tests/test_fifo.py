"""The FIFO option on ElasticMQ: runs complete (joins, retries with back-off, whose attempts
differ only in their bodies), the same job sent twice is kept once, and a malformed job goes
to the FIFO dead-letter queue with its reason."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import orjson
import pytest

from flowcraft import NodeContext, create_flow
from flowcraft.distributed import Client, Worker
from flowcraft_sqs import SqsAdapter, SqsQueue, SqsSettings
from flowcraft_sqs.clients import Clients

T = 120.0
attempts: list[int] = []


async def start(ctx: NodeContext) -> int:
    return 1


async def branch(ctx: NodeContext) -> int:
    return int(ctx.input or 0) + 1


async def flaky(ctx: NodeContext) -> str:
    attempts.append(len(attempts) + 1)
    if len(attempts) < 3:
        raise RuntimeError(f"attempt {len(attempts)} fails")
    return f"succeeded on attempt {len(attempts)}"


flow = (
    create_flow("fifo")
    .node("start", start)
    .node("a", branch)
    .node("b", branch)
    .node("flaky", flaky, config={"maxRetries": 3, "retryDelay": 200})
    .edge("start", "a")
    .edge("start", "b")
    .edge("a", "flaky")
    .edge("b", "flaky")
)
blueprints = {"fifo": flow.to_blueprint()}


@pytest.fixture
async def settings(fresh: SqsSettings) -> AsyncIterator[SqsSettings]:
    settings = replace(fresh, fifo=True, lease_seconds=5)
    yield settings
    clients = Clients(settings)
    try:
        sqs = await clients.sqs()
        for name in (settings.queue_name, settings.dead_letter_queue_name):
            url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
            await sqs.delete_queue(QueueUrl=url)
    finally:
        await clients.close()


async def _counts(settings: SqsSettings, name: str) -> int:
    clients = Clients(settings)
    try:
        sqs = await clients.sqs()
        url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        reply = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)  # type: ignore[arg-type]
        return sum(int(reply["Attributes"].get(n, "0")) for n in names)  # type: ignore[misc]
    finally:
        await clients.close()


async def test_runs_complete_on_a_fifo_queue(settings: SqsSettings) -> None:
    attempts.clear()
    worker = Worker(
        SqsAdapter(settings, registry=flow.function_registry, blueprints=blueprints),
        concurrency=8,
        timer_interval=0.05,
    )
    worker.start()
    client = Client(SqsAdapter(settings, blueprints=blueprints))
    try:
        result = await client.run("fifo", timeout=T)
    finally:
        await worker.stop(timeout=10)
        await client.adapter.close()
    assert result.status == "completed", result.errors
    assert result.context["_outputs.flaky"] == "succeeded on attempt 3"
    assert attempts == [1, 2, 3]
    assert settings.queue_name.endswith(".fifo")
    assert await _counts(settings, settings.queue_name) == 0


async def test_the_same_job_sent_twice_is_kept_once(settings: SqsSettings) -> None:
    body = orjson.dumps({"runId": "r1", "blueprintId": "fifo", "nodeId": "a"}).decode()
    other = orjson.dumps({"runId": "r1", "blueprintId": "fifo", "nodeId": "a", "attempt": 2})
    clients = Clients(settings)
    try:
        queue = SqsQueue(clients)
        await queue.enqueue(body)
        await queue.enqueue(body)
        await queue.enqueue(other.decode())
        assert await _counts(settings, settings.queue_name) == 2
    finally:
        await clients.close()


async def test_a_malformed_job_is_dead_lettered_with_its_reason(settings: SqsSettings) -> None:
    worker = Worker(
        SqsAdapter(settings, registry=flow.function_registry, blueprints=blueprints),
        concurrency=2,
    )
    clients = Clients(settings)
    try:
        await SqsQueue(clients).enqueue("not json")
        worker.start()
        sqs = await clients.sqs()
        url = (await sqs.get_queue_url(QueueName=settings.dead_letter_queue_name))["QueueUrl"]
        reply = await sqs.receive_message(
            QueueUrl=url, WaitTimeSeconds=20, MessageAttributeNames=["All"]
        )
    finally:
        await worker.stop(timeout=10)
        await clients.close()
    messages = reply.get("Messages", [])
    assert [m["Body"] for m in messages] == ["not json"]
    assert messages[0]["MessageAttributes"]["reason"]["StringValue"]
