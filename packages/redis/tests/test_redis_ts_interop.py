"""A client written for the TypeScript BullMQ adapter drives Python workers.

``ts-client/client.mjs`` (bullmq and ioredis from npm, the anchor's pinned versions) HSETs the
initial state into ``workflow:state:<runId>``, adds ``executeNode`` jobs to ``flowcraft-queue``
and polls ``workflow:status:<runId>``, exactly as the TS anchor's ``bench/client-lib.mjs``. The
Python workers must leave the status JSON the TS adapter writes.

The expected statuses were captured by running the same client against the pinned TS worker
(flowcraft 2.10.1, @flowcraft/bullmq-adapter 1.7.1) with the same blueprints and equivalent
nodes. Two differences are deliberate and asserted as such:

* A node with explicit ``inputs`` gets no ``_inputs.<id>`` key: the TS worker writes the last
  predecessor's output there (last writer wins, TS defect 16; see docs/semantics.md).
* A failure's ``reason`` names the node and the cause (``node 'b' failed: RuntimeError: boom``)
  where the TS worker writes ``Node 'b' execution failed``; both are free text.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
from redis_test_support import TsClient
from ts_interop_app import BLUEPRINTS, FLOWS, REGISTRY

from flowcraft.distributed import Worker
from flowcraft_redis import RedisAdapter, RedisSettings

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
        "_inputs.join": 2,
        "_outputs.p1": 2,
        "_outputs.p2": 2,
        "_outputs.join": 6,
    },
    "two_starts": {
        **INITIAL,
        "blueprintVersion": None,
        "blueprintId": "ts-two-starts",
        "_outputs.a": 1,
        "_inputs.join": 1,
        "_outputs.b": 1,
        "_outputs.join": 2,
    },
}
"""``payload.context`` of the TS adapter's ``workflow:status:<runId>`` for each flow."""
TS_FAILED = {"status": "failed", "reason": "Node 'b' execution failed"}


def expected_context(flow: str) -> dict[str, Any]:
    """The TS context with the deliberate differences applied."""
    context = dict(TS_CONTEXTS[flow])
    if flow in ("fan", "two_starts"):
        del context["_inputs.join"]
    return context


def assert_completed_like_ts(raw: str | None, flow: str) -> None:
    assert raw is not None, "the run published no workflow:status key"
    status = json.loads(raw)
    assert set(status) == {"status", "payload"}
    assert status["status"] == "completed"
    payload = status["payload"]
    assert set(payload) == {"context", "serializedContext", "status"}
    assert payload["status"] == "completed"
    assert payload["context"] == expected_context(flow)
    assert json.loads(payload["serializedContext"]) == payload["context"]


@pytest.fixture
def run_ids(redis_url: str) -> Iterator[list[str]]:
    """Run ids the test uses; their keys are deleted afterwards."""
    ids: list[str] = []
    yield ids
    with redis.Redis.from_url(redis_url) as client:
        for run_id in ids:
            keys = list(client.scan_iter(match=f"*{run_id}*", count=1000))
            if keys:
                client.delete(*keys)


@pytest.fixture
async def python_worker(redis_url: str) -> AsyncIterator[Worker]:
    """A Python worker on the TS layout: default settings, only the server differs."""
    adapter = RedisAdapter(RedisSettings(url=redis_url), registry=REGISTRY, blueprints=BLUEPRINTS)
    worker = Worker(adapter)
    worker.start()
    try:
        yield worker
    finally:
        await worker.stop(timeout=5)
        await adapter.close()


def new_runs(run_ids: list[str], *flows: str) -> list[dict[str, Any]]:
    runs = []
    for flow in flows:
        run_id = f"ts-interop-{flow}-{uuid.uuid4().hex[:8]}"
        run_ids.append(run_id)
        runs.append({"runId": run_id, "blueprint": FLOWS[flow], "initialContext": INITIAL})
    return runs


async def drive(
    ts_client: TsClient, redis_url: str, runs: list[dict[str, Any]], **options: Any
) -> Mapping[str, str | None]:
    # The client blocks while it polls, so it runs in a thread and the worker keeps serving.
    return await asyncio.to_thread(ts_client.run, redis_url, runs, **options)


@pytest.mark.parametrize("preset_version", [True, False], ids=["version-preset", "no-version"])
async def test_linear_flow(
    ts_client: TsClient,
    redis_url: str,
    python_worker: Worker,
    run_ids: list[str],
    preset_version: bool,
) -> None:
    # Without the preset version the TS worker drops the first job; Python workers record the
    # blueprint's version instead, and the status is the one TS writes with the preset.
    runs = new_runs(run_ids, "linear")
    statuses = await drive(ts_client, redis_url, runs, preset_version=preset_version)
    assert_completed_like_ts(statuses[runs[0]["runId"]], "linear")


async def test_fan_out_fan_in(
    ts_client: TsClient, redis_url: str, python_worker: Worker, run_ids: list[str]
) -> None:
    runs = new_runs(run_ids, "fan", "fan", "fan")
    statuses = await drive(ts_client, redis_url, runs)
    for run in runs:
        assert_completed_like_ts(statuses[run["runId"]], "fan")


async def test_fan_in_of_start_nodes(
    ts_client: TsClient, redis_url: str, python_worker: Worker, run_ids: list[str]
) -> None:
    # The client enqueues every start job at once; the run must count them all in flight
    # before the first finishes, or it would end before the join fired.
    runs = new_runs(run_ids, *["two_starts"] * 8)
    statuses = await drive(ts_client, redis_url, runs)
    for run in runs:
        assert_completed_like_ts(statuses[run["runId"]], "two_starts")


async def test_failing_node(
    ts_client: TsClient, redis_url: str, python_worker: Worker, run_ids: list[str]
) -> None:
    runs = new_runs(run_ids, "failing")
    raw = (await drive(ts_client, redis_url, runs))[runs[0]["runId"]]
    assert raw is not None, "the run published no workflow:status key"
    status = json.loads(raw)
    assert set(status) == set(TS_FAILED)
    assert status["status"] == TS_FAILED["status"]
    assert status["reason"] == "node 'b' failed: RuntimeError: boom (intentional)"
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        assert client.hget(f"workflow:state:{runs[0]['runId']}", "_outputs.c") is None


def test_cli_worker_subprocess(ts_client: TsClient, redis_url: str, run_ids: list[str]) -> None:
    """``python -m flowcraft worker --backend redis`` serves a TS client with no options."""
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "flowcraft", "worker", "--backend", "redis"]
    worker = subprocess.Popen([*command, "--app", "ts_interop_app:app"], env=env)
    try:
        runs = new_runs(run_ids, "linear", "fan")
        statuses = ts_client.run(redis_url, runs)
        assert_completed_like_ts(statuses[runs[0]["runId"]], "linear")
        assert_completed_like_ts(statuses[runs[1]["runId"]], "fan")
    finally:
        worker.terminate()
        assert worker.wait(30) == 0
