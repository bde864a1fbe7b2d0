"""What the Azure services allow and how the backend keeps to it (docs/azure.md, "Limits" and
"How it maps"): a value near Cosmos's 2 MB item limit round-trips; each lease extension's new
pop receipt replaces the old one; dead letters carry their reason; a body too long for a
message is refused naming its size; reads of many runs in one tick agree with point reads."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from azure.core import exceptions as azure_errors

from flowcraft.backend import AdapterError
from flowcraft_azure import MAX_BODY, MAX_ITEM, AzureAdapter, decode_body

NEAR_LIMIT = MAX_ITEM - 4096
"""Just below the 2 MB item limit, leaving room for the item's id, run id and Cosmos's own
properties."""


async def test_a_value_near_the_item_limit_round_trips(adapter: AzureAdapter) -> None:
    value = "x" * NEAR_LIMIT
    await adapter.context.set("run", "big", value)
    assert await adapter.context.get("run", "big") == value
    assert await adapter.context.get_many("run", ["big"]) == {"big": value}


async def test_each_lease_extension_replaces_the_pop_receipt(adapter: AzureAdapter) -> None:
    queue = adapter.queue
    await queue.enqueue('{"job": 1}')
    (delivery,) = await queue.receive(1, 5.0)
    first = delivery.handle.pop_receipt
    # Asked for more than the visibility left, so the Update goes out.
    await queue.extend_lease(delivery, 60.0)
    second = delivery.handle.pop_receipt
    assert second != first
    jobs, _ = queue._clients()
    with pytest.raises(azure_errors.HttpResponseError) as refused:
        await jobs.delete_message(delivery.handle.message_id, first)
    assert refused.value.error_code == "PopReceiptMismatch"
    await queue.ack(delivery)
    properties = await jobs.get_queue_properties()
    assert properties.approximate_message_count == 0


async def test_a_dead_letter_keeps_its_reason_and_leaves_the_queue(adapter: AzureAdapter) -> None:
    queue = adapter.queue
    await queue.enqueue("not json")
    (delivery,) = await queue.receive(1, 5.0)
    await queue.dead_letter(delivery, "malformed: not JSON")
    jobs, poison = queue._clients()
    (letter,) = [m async for m in poison.receive_messages(max_messages=32)]
    record = orjson.loads(decode_body(letter.content))
    assert record["reason"] == "malformed: not JSON"
    assert record["body"] == "not json"
    assert record["dequeueCount"] == 1
    assert (await jobs.get_queue_properties()).approximate_message_count == 0


async def test_a_body_too_long_for_a_message_is_refused_naming_its_size(
    adapter: AzureAdapter,
) -> None:
    body = "x" * (MAX_BODY + 1)
    with pytest.raises(AdapterError, match=f"{MAX_BODY + 1} bytes is over the {MAX_BODY}"):
        await adapter.queue.enqueue(body)
    await adapter.queue.enqueue("x" * MAX_BODY)


async def test_reads_of_many_runs_in_one_tick_match_point_reads(adapter: AzureAdapter) -> None:
    context = adapter.context
    runs = [f"run/{i}" for i in range(300)]
    await asyncio.gather(
        *(context.patch(r, [{"op": "set", "key": "k~/", "value": i}]) for i, r in enumerate(runs))
    )
    gathered = await asyncio.gather(*(context.get(r, "k~/") for r in [*runs, "absent"]))
    assert gathered == [*range(300), None]
    whole = await asyncio.gather(*(context.to_dict(r) for r in runs[:40]))
    assert whole == [{"k~/": i} for i in range(40)]
    assert [await context.get(r, "k~/") for r in runs[:3]] == [0, 1, 2]
