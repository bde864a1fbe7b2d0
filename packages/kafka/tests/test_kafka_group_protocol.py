"""Which group protocol the queue takes (docs/kafka.md, "Group protocol and crash recovery"):
KIP-848's where the broker lets the group have the settings' session timeout and heartbeat
(the queue sets them as the group's own config), else the classic one with the reason logged.

The ``flowcraft_services`` broker allows KIP-848 sessions down to 1 s and heartbeats down to
100 ms (``group.consumer.min.session.timeout.ms``, ``group.consumer.min.heartbeat.interval.ms``);
the classic protocol has no heartbeat floor."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import orjson
import pytest
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    ResourceType,
)

from flowcraft_kafka import KafkaSettings
from flowcraft_kafka.queue import KafkaQueue
from flowcraft_redis_store import Batcher

BELOW_THE_FLOOR_MS = 50
"""A heartbeat below the services broker's 100 ms floor for KIP-848's."""


async def _serve_one_job(settings: KafkaSettings) -> str | None:
    """Start a queue on ``settings``, pass one job through it, return its group protocol."""
    client = settings.redis.client()
    batcher = Batcher(client, settings.redis.retry())
    queue = KafkaQueue(settings, batcher, lease=30.0)
    try:
        body = orjson.dumps({"runId": f"run-{uuid.uuid4().hex[:8]}"}).decode()
        await queue.enqueue(body)
        deliveries = await queue.receive(10, 60.0)
        assert [d.body for d in deliveries] == [body]
        await queue.ack(deliveries[0])
        return queue.group_protocol
    finally:
        await queue.close()
        batcher.close()
        await client.aclose()
        _drop(settings)


def _group_config(settings: KafkaSettings) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    resource = ConfigResource(ResourceType.GROUP, settings.group_id)
    (future,) = admin.describe_configs([resource]).values()
    return {name: str(entry.value) for name, entry in future.result(timeout=30).items()}


def _drop(settings: KafkaSettings) -> None:
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    for future in admin.delete_topics([settings.topic, settings.dead_letters]).values():
        future.result(timeout=30)


def _fresh(base: KafkaSettings, **changes: Any) -> KafkaSettings:
    return replace(base.namespaced(f"p{uuid.uuid4().hex[:8]}"), partitions=2, **changes)


async def test_auto_takes_kip848_with_the_settings_session(base_settings: KafkaSettings) -> None:
    settings = _fresh(base_settings, session_timeout_ms=2000, heartbeat_interval_ms=500)
    assert await _serve_one_job(settings) == "consumer"
    config = _group_config(settings)
    assert config["consumer.session.timeout.ms"] == "2000"
    assert config["consumer.heartbeat.interval.ms"] == "500"


async def test_auto_falls_back_to_classic_with_the_reason(
    base_settings: KafkaSettings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _fresh(
        base_settings, session_timeout_ms=2000, heartbeat_interval_ms=BELOW_THE_FLOOR_MS
    )
    with caplog.at_level("INFO", logger="flowcraft.kafka"):
        assert await _serve_one_job(settings) == "classic"
    assert "group.consumer.min.heartbeat.interval.ms" in caplog.text


async def test_an_explicit_protocol_is_kept(
    base_settings: KafkaSettings, caplog: pytest.LogCaptureFixture
) -> None:
    classic = _fresh(base_settings, group_protocol="classic")
    assert await _serve_one_job(classic) == "classic"
    assert _group_config(classic)["consumer.session.timeout.ms"] == "45000"
    consumer = _fresh(
        base_settings,
        group_protocol="consumer",
        session_timeout_ms=2000,
        heartbeat_interval_ms=BELOW_THE_FLOOR_MS,
    )
    with caplog.at_level("WARNING", logger="flowcraft.kafka"):
        assert await _serve_one_job(consumer) == "consumer"
    assert "the broker's session timeout" in caplog.text


def test_an_unknown_protocol_is_refused() -> None:
    with pytest.raises(ValueError, match="group_protocol"):
        KafkaSettings(group_protocol="share")
