"""The context store's documented size limit (docs/kafka.md, "Context store and limits"): a
value, or a patch's values together, must stay below 16 MiB, Cassandra's largest CQL message
(``native_transport_max_message_size``, the same as ``max_mutation_size`` by default)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from flowcraft.backend import AdapterError
from flowcraft_kafka import CassandraContextStore, CassandraSession, KafkaSettings

MIB = 1024 * 1024
NEAR_LIMIT = 16 * MIB - 64 * 1024
"""Just below the limit, leaving room for the row's key and the message's framing."""


@pytest.fixture
async def store(base_settings: KafkaSettings) -> AsyncIterator[CassandraContextStore]:
    # Writing 16 MiB takes seconds on a loaded machine.
    session = CassandraSession(replace(base_settings, request_timeout=60.0))
    try:
        yield CassandraContextStore(session)
    finally:
        await session.close()


async def test_a_value_near_the_limit_round_trips(store: CassandraContextStore) -> None:
    run_id = f"limits-{uuid.uuid4().hex[:8]}"
    value = "x" * NEAR_LIMIT
    try:
        await store.set(run_id, "big", value)
        assert await store.get(run_id, "big") == value
        await store.patch(run_id, [{"op": "set", "key": "patched", "value": value}])
        assert await store.get_many(run_id, ["patched"]) == {"patched": value}
    finally:
        await store.delete_run(run_id)


async def test_a_value_over_the_limit_fails_naming_it(store: CassandraContextStore) -> None:
    run_id = f"limits-{uuid.uuid4().hex[:8]}"
    with pytest.raises(AdapterError, match="exceeds allowed maximum of 16777216 bytes"):
        await store.set(run_id, "big", "x" * (16 * MIB))
    assert await store.to_dict(run_id) == {}
