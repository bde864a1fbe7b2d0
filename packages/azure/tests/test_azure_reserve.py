"""Reserved successors (docs/azure.md, "Reserved successors"): a job the hop leases to its own
worker rides on its predecessor's message, which it renews and then deletes or releases; the
predecessor no longer settles it; undone, the predecessor settles it again; should the worker
die, the predecessor's message comes back, and nothing else does."""

from __future__ import annotations

import pytest

from flowcraft.backend import AdapterError, Delivery, ReservingQueue
from flowcraft_azure import MAX_BODY, AzureAdapter


async def _stored(adapter: AzureAdapter) -> int:
    jobs, _ = adapter.queue._clients()
    return (await jobs.get_queue_properties()).approximate_message_count


async def _received(adapter: AzureAdapter, body: str = '{"job": 0}') -> Delivery:
    await adapter.queue.enqueue(body)
    (delivery,) = await adapter.queue.receive(1, 5.0)
    return delivery


async def test_a_reserved_job_settles_its_predecessors_message(adapter: AzureAdapter) -> None:
    queue = adapter.queue
    assert isinstance(queue, ReservingQueue)
    predecessor = await _received(adapter)
    reserved = await queue.reserve(predecessor, '{"job": 1}')
    assert reserved is not None
    assert (reserved.body, reserved.delivery_count) == ('{"job": 1}', 1)
    # Nothing was sent, and the predecessor's ack leaves its message to the successor.
    await queue.ack(predecessor)
    assert await _stored(adapter) == 1
    assert await queue.receive(32, 0.2) == []
    first = predecessor.handle.pop_receipt
    await queue.extend_lease(reserved, 60.0)
    assert predecessor.handle.pop_receipt != first
    await queue.ack(reserved)
    assert await _stored(adapter) == 0


async def test_a_predecessor_reserves_one_successor(adapter: AzureAdapter) -> None:
    queue = adapter.queue
    predecessor = await _received(adapter)
    assert await queue.reserve(predecessor, '{"job": 1}') is not None
    assert await queue.reserve(predecessor, '{"job": 2}') is None
    await queue.ack(predecessor)


async def test_an_undone_reservation_gives_the_message_back(adapter: AzureAdapter) -> None:
    queue = adapter.queue
    predecessor = await _received(adapter)
    reserved = await queue.reserve(predecessor, '{"job": 1}')
    assert reserved is not None
    queue.unreserve(predecessor, reserved)
    await queue.ack(reserved)
    assert await _stored(adapter) == 1
    await queue.ack(predecessor)
    assert await _stored(adapter) == 0


async def test_a_released_reservation_brings_back_its_predecessor(adapter: AzureAdapter) -> None:
    queue = adapter.queue
    predecessor = await _received(adapter)
    reserved = await queue.reserve(predecessor, '{"job": 1}')
    assert reserved is not None
    await queue.ack(predecessor)
    # A stopping worker: its predecessor's redelivery enqueues the successor again.
    await queue.release(reserved)
    (delivery,) = await queue.receive(32, 5.0)
    assert (delivery.body, delivery.delivery_count) == ('{"job": 0}', 2)
    await queue.ack(delivery)
    assert await _stored(adapter) == 0


async def test_a_killed_workers_reservation_brings_back_its_predecessor(
    adapter: AzureAdapter,
) -> None:
    dying = AzureAdapter(adapter.settings, lease=1.0)
    try:
        predecessor = await _received(dying)
        reserved = await dying.queue.reserve(predecessor, '{"job": 1}')
        assert reserved is not None
        await dying.queue.ack(predecessor)
        dying.queue.abandon()
        (delivery,) = await adapter.queue.receive(32, 30.0)
    finally:
        await dying.close()
    assert (delivery.body, delivery.delivery_count) == ('{"job": 0}', 2)
    await adapter.queue.ack(delivery)


async def test_a_body_too_long_for_a_message_is_not_reserved(adapter: AzureAdapter) -> None:
    predecessor = await _received(adapter)
    body = "x" * (MAX_BODY + 1)
    with pytest.raises(AdapterError, match=f"{MAX_BODY + 1} bytes is over the {MAX_BODY}"):
        await adapter.queue.reserve(predecessor, body)
    await adapter.queue.ack(predecessor)
    assert await _stored(adapter) == 0
