"""A client written for the TypeScript Kafka adapter drives Python workers.

``ts-client/client.mjs`` (kafkajs and cassandra-driver from npm, the anchor's pinned versions)
inserts the run's initial context into the ``contexts`` table and a ``running`` row into
``statuses``, produces the start jobs to the jobs topic keyed by run id, and polls
``statuses``, exactly as the TS anchor's ``bench/client-lib.mjs`` (the adapter's documented
client procedure). The Python workers adopt the run (its initial context imported into their
per-key rows), run it, and leave the final status row the TS adapter writes.

The expected contexts are those the pinned TS runtime (flowcraft 2.10.1) produces for these
blueprints, as captured for the Redis backend's interop tests, with the same deliberate
difference: a node with explicit ``inputs`` gets no ``_inputs.<id>`` key (the TS worker writes
the last predecessor's output there, TS defect 16; see docs/semantics.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from conftest import TsClient
from kafka_ts_app import BLUEPRINTS, FLOWS, REGISTRY

from flowcraft.distributed import Worker
from flowcraft_kafka import KafkaAdapter, KafkaSettings

HERE = Path(__file__).parent
INITIAL = {"seed": 1, "note": "hello", "nested": {"a": [1, None]}}

TS_CONTEXTS: dict[str, dict[str, Any]] = {
    "linear": {
        **INITIAL,
        "blueprintVersion": None,
        "blueprintId": "ts-linear",
        "_outputs.n0": 1,
        "_inputs.n1": 1,
        "_outputs.n1": 2,
        "_inputs.n2": 2,
        "_outputs.n2": 3,
    },
    "fan": {
        **INITIAL,
        "blueprintVersion": "2",
        "blueprintId": "ts-fan",
        "_outputs.start": 1,
        "_inputs.p0": 1,
        "_inputs.p1": 1,
        "_inputs.p2": 1,
        "_outputs.p0": 2,
        "_outputs.p1": 2,
        "_outputs.p2": 2,
        "_outputs.join": 6,
    },
    "two_starts": {
        **INITIAL,
        "blueprintVersion": None,
        "blueprintId": "ts-two-starts",
        "_outputs.a": 1,
        "_outputs.b": 1,
        "_outputs.join": 2,
    },
    "seeded": {
        **INITIAL,
        "blueprintVersion": None,
        "blueprintId": "ts-seeded",
        "_outputs.s": 2,
        "_inputs.t": 2,
        "_outputs.t": 3,
    },
}
"""``payload.context`` of the final status row for each flow."""


def assert_completed_like_ts(row: dict[str, str] | None, flow: str) -> None:
    assert row is not None, "the run's status row never left 'running'"
    assert row["status"] == "completed"
    status = json.loads(row["status_data"])
    assert set(status) == {"status", "payload"}
    assert status["status"] == "completed"
    payload = status["payload"]
    assert set(payload) == {"context", "serializedContext", "status"}
    assert payload["status"] == "completed"
    assert payload["context"] == TS_CONTEXTS[flow]
    assert json.loads(payload["serializedContext"]) == payload["context"]


@pytest.fixture
def settings(base_settings: KafkaSettings) -> Iterator[KafkaSettings]:
    """The TS names with a topic, group and Redis namespace of the test's own; the topic is
    created first, as a TS deployment does (its client would otherwise auto-create it with
    one partition)."""
    s = replace(base_settings.namespaced(f"ts{uuid.uuid4().hex[:8]}"), partitions=2)
    admin = AdminClient({"bootstrap.servers": s.bootstrap_servers})
    topics = [NewTopic(s.topic, s.partitions), NewTopic(s.dead_letters, 1)]
    for future in admin.create_topics(topics, operation_timeout=30).values():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    try:
        yield s
    finally:
        for future in admin.delete_topics([s.topic, s.dead_letters]).values():
            try:
                future.result()
            except KafkaException:
                continue
        with redis.Redis.from_url(s.redis.url) as client:
            keys = list(client.scan_iter(match=f"*{s.redis.coordination_prefix}*", count=1000))
            if keys:
                client.delete(*keys)


@pytest.fixture
async def python_worker(settings: KafkaSettings) -> AsyncIterator[Worker]:
    adapter = KafkaAdapter(settings, registry=REGISTRY, blueprints=BLUEPRINTS)
    worker = Worker(adapter)
    worker.start()
    try:
        yield worker
    finally:
        await worker.stop(timeout=10)
        await adapter.close()


def new_runs(*flows: str) -> list[dict[str, Any]]:
    return [
        {
            "runId": f"ts-interop-{flow}-{uuid.uuid4().hex[:8]}",
            "blueprint": FLOWS[flow],
            "initialContext": INITIAL,
        }
        for flow in flows
    ]


async def drive(
    ts_client: TsClient, settings: KafkaSettings, runs: list[dict[str, Any]], **options: Any
) -> dict[str, dict[str, str] | None]:
    # The client blocks while it polls, so it runs in a thread and the worker keeps serving.
    return await asyncio.to_thread(ts_client.run, settings, runs, **options)


@pytest.mark.parametrize("preset_version", [True, False], ids=["version-preset", "no-version"])
async def test_linear_flow(
    ts_client: TsClient, settings: KafkaSettings, python_worker: Worker, preset_version: bool
) -> None:
    # Without the preset version the TS worker drops the first job; Python workers record the
    # blueprint's version instead, and the status is the one TS writes with the preset.
    runs = new_runs("linear")
    statuses = await drive(ts_client, settings, runs, preset_version=preset_version)
    assert_completed_like_ts(statuses[runs[0]["runId"]], "linear")


async def test_fan_out_fan_in(
    ts_client: TsClient, settings: KafkaSettings, python_worker: Worker
) -> None:
    runs = new_runs("fan", "fan", "fan")
    statuses = await drive(ts_client, settings, runs)
    for run in runs:
        assert_completed_like_ts(statuses[run["runId"]], "fan")


async def test_fan_in_of_start_nodes(
    ts_client: TsClient, settings: KafkaSettings, python_worker: Worker
) -> None:
    # The client produces every start job at once; the run must count them all in flight
    # before the first finishes, or it would end before the join fired.
    runs = new_runs(*["two_starts"] * 8)
    statuses = await drive(ts_client, settings, runs)
    for run in runs:
        assert_completed_like_ts(statuses[run["runId"]], "two_starts")


async def test_nodes_read_the_initial_context_the_client_wrote(
    ts_client: TsClient, settings: KafkaSettings, python_worker: Worker
) -> None:
    runs = new_runs("seeded", "seeded")
    statuses = await drive(ts_client, settings, runs)
    for run in runs:
        assert_completed_like_ts(statuses[run["runId"]], "seeded")


async def test_failing_node(
    ts_client: TsClient, settings: KafkaSettings, python_worker: Worker
) -> None:
    runs = new_runs("failing")
    row = (await drive(ts_client, settings, runs))[runs[0]["runId"]]
    assert row is not None, "the run's status row never left 'running'"
    assert row["status"] == "failed"
    status = json.loads(row["status_data"])
    assert set(status) == {"status", "reason"}
    assert status["status"] == "failed"
    assert status["reason"] == "node 'b' failed: RuntimeError: boom (intentional)"


def test_cli_worker_subprocess(ts_client: TsClient, settings: KafkaSettings) -> None:
    """``python -m flowcraft worker --backend kafka`` serves a TS client, configured by the
    environment alone."""
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "CASSANDRA_CONTACT_POINTS": settings.contact_points,
        "CASSANDRA_PORT": str(settings.cassandra_port),
        "CASSANDRA_LOCAL_DC": settings.local_dc,
        "REDIS_URL": settings.redis.url,
        "FLOWCRAFT_KAFKA_TOPIC": settings.topic,
        "FLOWCRAFT_KAFKA_GROUP_ID": settings.group_id,
        "FLOWCRAFT_REDIS_COORDINATION_PREFIX": settings.redis.coordination_prefix,
        "FLOWCRAFT_REDIS_STATE_PREFIX": settings.redis.state_prefix,
        "FLOWCRAFT_REDIS_STATUS_PREFIX": settings.redis.status_prefix,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "flowcraft", "worker", "--backend", "kafka"]
    worker = subprocess.Popen([*command, "--app", "kafka_ts_app:app"], env=env)
    try:
        runs = new_runs("linear", "fan")
        statuses = ts_client.run(settings, runs)
        assert_completed_like_ts(statuses[runs[0]["runId"]], "linear")
        assert_completed_like_ts(statuses[runs[1]["runId"]], "fan")
    finally:
        worker.terminate()
        assert worker.wait(60) == 0
