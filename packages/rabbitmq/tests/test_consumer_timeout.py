"""A node longer than the broker's ``consumer_timeout`` completes its run once (issue 17).

The broker closes a channel whose delivery stays unacked past ``consumer_timeout`` and
requeues what it held, so without parking the long job would run again beside itself and its
join could fire twice. The node here runs twice the (lowered) timeout on a node of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections import Counter
from typing import Any

import aio_pika
import psycopg
import pytest
from conftest import CONSUMER_TIMEOUT_MS
from psycopg import sql

from flowcraft import NodeContext, create_flow
from flowcraft.distributed import Client, Worker
from flowcraft_rabbitmq import RabbitPostgresAdapter, RabbitSettings

TIMEOUT = CONSUMER_TIMEOUT_MS / 1000
PATIENCE = 300.0
"""Seconds anything may take on a loaded machine before the test gives up."""


async def _held_past_timeout(url: str) -> BaseException | None:
    """Hold one delivery unacked until the broker closes its channel; why it closed it."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        closed: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        channel.close_callbacks.add(
            lambda _sender, exc=None: closed.done() or closed.set_result(exc)
        )
        queue = await channel.declare_queue(exclusive=True)
        await channel.default_exchange.publish(aio_pika.Message(b"held"), routing_key=queue.name)

        async def hold(message: Any) -> None:
            pass  # never acked

        await queue.consume(hold)
        return await asyncio.wait_for(closed, PATIENCE)


async def _parked_left(settings: RabbitSettings) -> int:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        parked = await channel.declare_queue(f"{settings.queue_name}.parked", passive=True)
        return parked.declaration_result.message_count or 0


async def _drop(settings: RabbitSettings) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        for suffix in ("", ".dead", ".parked"):
            await channel.queue_delete(f"{settings.queue_name}{suffix}")
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True
    ) as conn:
        drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(settings.schema))
        await conn.execute(drop)


async def test_a_node_longer_than_consumer_timeout_runs_once(
    short_timeout_amqp_url: str, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "flowcraft")
    settings = RabbitSettings(
        amqp_url=short_timeout_amqp_url,
        database_url=database_url,
        consumer_timeout_seconds=TIMEOUT,
        lease_seconds=1.0,
    ).namespaced(f"ct{uuid.uuid4().hex[:10]}")
    calls: Counter[str] = Counter()

    async def node(ctx: NodeContext) -> str:
        calls[ctx.node_id] += 1
        if ctx.node_id == "long":
            await asyncio.sleep(2 * TIMEOUT)
        return ctx.node_id

    flow = (
        create_flow("long")
        .node("start", node)
        .node("long", node)
        .node("short", node)
        .node("join", node)
        .edge("start", "long")
        .edge("start", "short")
        .edge("long", "join")
        .edge("short", "join")
    )
    blueprints = {"long": flow.to_blueprint()}
    adapters = [
        RabbitPostgresAdapter(
            dataclasses.replace(settings, client_name=f"ct-{i}"),
            registry=flow.function_registry,
            blueprints=blueprints,
        )
        for i in range(3)
    ]
    # Two workers: a requeued copy of the long job would reach the one that is not busy.
    workers = [Worker(adapter, concurrency=4, timer_interval=0.05) for adapter in adapters[:2]]
    for worker in workers:
        worker.start()
    try:
        held = asyncio.ensure_future(_held_past_timeout(short_timeout_amqp_url))
        result = await Client(adapters[2]).run("long", timeout=PATIENCE)
        # The broker does enforce the lowered timeout: a plain unacked delivery loses its
        # channel, so the long job survived it by being parked.
        assert "PRECONDITION_FAILED" in repr(await held)
        # The parked copy comes back once its holder let go; it must be absorbed, not run.
        for _ in range(int(PATIENCE / 0.2)):
            if await _parked_left(settings) == 0:
                break
            await asyncio.sleep(0.2)
    finally:
        for worker in workers:
            await worker.stop(timeout=PATIENCE)
        await adapters[2].close()
        await _drop(settings)
    assert result.status == "completed"
    assert calls == {"start": 1, "long": 1, "short": 1, "join": 1}
    # Nor did the broker take the long job back meanwhile: its copy, dropped beside the
    # running job, and the failed ack would not show in the counts.
    assert not [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("flowcraft")
        and (record.levelno >= logging.WARNING or "copy of a job" in record.getMessage())
    ]
