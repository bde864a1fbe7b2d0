"""Durable retries: a failed attempt with retries left is a timer in the coordination store.

The worker's slot is free during the back-off, the attempt count lives in the store (a crash
neither resets nor repeats it), and a subflow node's retry starts a new child run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import Harness

from flowcraft import NodeContext, create_flow

T = 30.0
HERE = Path(__file__).parent


async def test_a_node_in_back_off_frees_its_slot(harness: Harness) -> None:
    attempts: list[int] = []
    first_failed = asyncio.Event()
    other_ran_during_back_off = asyncio.Event()

    async def flaky(ctx: NodeContext) -> int:
        attempts.append(ctx.attempt)
        if ctx.attempt < 2:
            first_failed.set()
            raise RuntimeError("first attempt fails")
        return ctx.attempt

    async def quick(ctx: NodeContext) -> str:
        if attempts == [1]:
            other_ran_during_back_off.set()
        return "quick"

    harness.add(create_flow("flaky").node("f", flaky, config={"maxRetries": 2, "retryDelay": 1500}))
    harness.add(create_flow("quick").node("q", quick))
    harness.worker(concurrency=1)
    client = harness.client
    flaky_run = await client.start("flaky")
    await asyncio.wait_for(first_failed.wait(), T)
    # One slot, and the flaky node waits out its back-off: the slot serves another run.
    assert (await client.run("quick", timeout=T)).status == "completed"
    assert other_ran_during_back_off.is_set()
    result = await client.wait(flaky_run, timeout=T)
    assert result.status == "completed", result.errors
    assert attempts == [1, 2]
    assert result.context["_outputs.f"] == 2


async def test_retries_exhausted_fail_the_run_with_the_last_error(harness: Harness) -> None:
    attempts: list[int] = []

    async def always(ctx: NodeContext) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError(f"attempt {ctx.attempt} fails")

    harness.add(create_flow("never").node("f", always, config={"maxRetries": 3, "retryDelay": 10}))
    harness.worker()
    result = await harness.client.run("never", timeout=T)
    assert result.status == "failed"
    assert attempts == [1, 2, 3]
    assert "attempt 3 fails" in result.errors[0].message


async def test_a_worker_killed_during_back_off_loses_no_attempt(
    harness: Harness, tmp_path: Path
) -> None:
    spawn = getattr(harness.backend, "spawn_worker", None)
    if spawn is None:
        pytest.skip(reason="this backend lives in one process: it has no worker processes to kill")
    sys.path.insert(0, str(HERE))
    import retry_app

    log = tmp_path / "attempts"
    env = {"FLOWCRAFT_RETRY_LOG": str(log), "PYTHONPATH": str(HERE)}
    harness.add(retry_app.flow)
    victim = spawn(harness.deployment, "retry_app:app", env)
    replacement = None
    try:
        run_id = await harness.client.start("durable-retry")
        deadline = time.monotonic() + T
        while not (log.exists() and log.read_text()):
            assert time.monotonic() < deadline, "the first attempt never ran"
            await asyncio.sleep(0.02)
        # The first attempt failed and its retry waits out the back-off: kill the worker now.
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=T) == -signal.SIGKILL
        replacement = spawn(harness.deployment, "retry_app:app", env)
        result = await harness.client.wait(run_id, timeout=T)
    finally:
        for process in (victim, replacement):
            if process is not None and process.poll() is None:
                process.kill()
    assert result.status == "completed", result.errors
    assert result.context["_outputs.flaky"] == "succeeded on attempt 3"
    attempts = [int(line.split()[0]) for line in log.read_text().splitlines()]
    assert attempts == [1, 2, 3]
    assert int(log.read_text().splitlines()[0].split()[1]) == victim.pid
    os.environ.pop("FLOWCRAFT_RETRY_LOG", None)


async def test_a_failed_subflow_child_is_retried_as_a_new_child(harness: Harness) -> None:
    calls: list[str] = []

    async def child_step(ctx: NodeContext) -> str:
        calls.append(ctx.run_id)
        if len(calls) == 1:
            raise RuntimeError("the first child fails")
        return "child ok"

    child = create_flow("child").node("c", child_step)
    harness.add(child)
    parent = create_flow("parent").node(
        "sub",
        "subflow",
        params={"blueprintId": "child"},
        config={"maxRetries": 2, "retryDelay": 10},
    )
    harness.add(parent)
    harness.worker()
    result = await harness.client.run("parent", timeout=T)
    assert result.status == "completed", result.errors
    assert len(calls) == 2 and calls[0] != calls[1], calls
