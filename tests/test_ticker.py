"""The shared timer of the jobs in progress: lease renewals and cancel checks."""

from __future__ import annotations

import asyncio
import logging

import pytest

from flowcraft.distributed._ticker import Ticker


async def test_actions_run_every_interval_until_removed() -> None:
    ticker = Ticker(0.02, "tick")
    runs: list[str] = []

    async def a() -> None:
        runs.append("a")

    async def b() -> None:
        runs.append("b")

    key_a = ticker.add(a)
    key_b = ticker.add(b)
    await asyncio.sleep(0.11)
    ticker.remove(key_a)
    seen_a = runs.count("a")
    await asyncio.sleep(0.08)
    assert seen_a >= 2
    assert runs.count("a") == seen_a  # nothing after remove
    assert runs.count("b") >= seen_a + 2
    ticker.remove(key_b)


async def test_a_slow_action_is_not_started_again_while_it_runs() -> None:
    ticker = Ticker(0.01, "slow")
    running = 0
    overlapped = False
    started = 0

    async def slow() -> None:
        nonlocal running, overlapped, started
        started += 1
        running += 1
        overlapped = overlapped or running > 1
        await asyncio.sleep(0.05)
        running -= 1

    key = ticker.add(slow)
    await asyncio.sleep(0.2)
    ticker.remove(key)
    assert not overlapped
    assert 2 <= started <= 5


async def test_a_failing_action_is_logged_and_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ticker = Ticker(0.01, "lease heartbeat")
    runs: list[int] = []

    async def failing() -> None:
        raise ConnectionError("store down")

    async def fine() -> None:
        runs.append(1)

    with caplog.at_level(logging.WARNING, logger="flowcraft.distributed"):
        keys = [ticker.add(failing), ticker.add(fine)]
        await asyncio.sleep(0.05)
        for key in keys:
            ticker.remove(key)
    assert len(runs) >= 2
    assert any("lease heartbeat failed" in r.getMessage() for r in caplog.records)


def test_a_ticker_serves_one_event_loop_after_another() -> None:
    ticker = Ticker(0.01, "tick")
    runs: list[int] = []

    async def action() -> None:
        runs.append(1)

    async def serve() -> None:
        key = ticker.add(action)
        await asyncio.sleep(0.05)
        ticker.remove(key)

    asyncio.run(serve())
    first = len(runs)
    asyncio.run(serve())  # the timer of the closed loop does not carry over
    assert first >= 2
    assert len(runs) >= first + 2
