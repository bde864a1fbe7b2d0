"""A publish is done only once the broker confirmed it: one whose connection drops before the
confirm counts as not stored and goes again on the restored channel; ``declare`` makes the
queues without publishing anything."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import cast

import aiormq
import pika
import pytest
from flowcraft_services import resolve

from flowcraft_rabbitmq import RabbitSettings
from flowcraft_rabbitmq.queue import RabbitQueue


@pytest.fixture(scope="module")
def amqp_url() -> str:
    return os.environ.get("AMQP_URL") or resolve("rabbitmq").start()["AMQP_URL"]


def _counts(url: str, queues: list[str]) -> list[int]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        return [int(channel.queue_declare(q, passive=True).method.message_count) for q in queues]
    finally:
        connection.close()


@pytest.fixture
async def queue(amqp_url: str) -> AsyncIterator[RabbitQueue]:
    settings = RabbitSettings(amqp_url=amqp_url).namespaced(f"pr{uuid.uuid4().hex[:10]}")
    queue = RabbitQueue(settings)
    try:
        yield queue
    finally:
        await queue.close()
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        try:
            channel = connection.channel()
            for suffix in ("", ".dead", ".parked"):
                channel.queue_delete(f"{settings.queue_name}{suffix}")
        finally:
            connection.close()


async def test_declare_makes_the_queues_and_publishes_nothing(
    queue: RabbitQueue, amqp_url: str
) -> None:
    await queue.declare()
    assert _counts(amqp_url, [queue.name, f"{queue.name}.dead", f"{queue.name}.parked"]) == [
        0,
        0,
        0,
    ]


async def test_a_publish_whose_connection_drops_before_its_confirm_goes_again(
    queue: RabbitQueue, amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await queue.declare()
    receive_confirm = aiormq.Channel._on_confirm_frame
    dropped: list[int] = []

    async def drop_connection_instead(self: aiormq.Channel, frame: object) -> None:
        # The broker stored the message and confirmed it; the confirm is lost with the
        # connection, as when the broker is killed between storing and confirming.
        if not dropped:
            dropped.append(self.number)
            cast(aiormq.Connection, self.connection)._reader_task.cancel()
            return
        await receive_confirm(self, frame)  # type: ignore[arg-type]

    monkeypatch.setattr(aiormq.Channel, "_on_confirm_frame", drop_connection_instead)
    await queue.enqueue('{"job": 1}')
    assert dropped
    # Stored twice (the first copy was stored, unbeknown to the publisher; core handles a
    # duplicated job), never lost.
    assert _counts(amqp_url, [queue.name]) == [2]
