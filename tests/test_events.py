"""Event bus extensions: queued delivery with a bounded queue, inline subscribers, JSON lines."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest

from flowcraft import FlowRuntime, NodeContext, create_flow
from flowcraft.events import EventBus, FlowEvent, JsonLinesSink


def _chain(n: int) -> Any:
    def step(ctx: NodeContext) -> int:
        return 1

    flow = create_flow("chain")
    for i in range(n):
        flow.node(f"n{i}", step)
        if i:
            flow.edge(f"n{i - 1}", f"n{i}")
    return flow


async def test_blocked_subscriber_never_blocks_the_run() -> None:
    bus = EventBus(max_queue=1000)
    release = asyncio.Event()
    seen: list[str] = []

    async def stuck(event: FlowEvent) -> None:
        await release.wait()
        seen.append(event.type)

    bus.subscribe(stuck)
    result = await _chain(5).run(FlowRuntime(event_bus=bus))
    assert result.status == "completed"
    assert seen == []  # the run finished while the subscriber was still blocked
    release.set()
    await bus.drain()
    assert seen[0] == "workflow:start" and seen[-1] == "workflow:finish"
    assert bus.dropped == 0


async def test_full_queue_drops_and_counts() -> None:
    bus = EventBus(max_queue=3)
    release = asyncio.Event()
    got: list[FlowEvent] = []

    async def slow(event: FlowEvent) -> None:
        await release.wait()
        got.append(event)

    bus.subscribe(slow, ["node:start"])
    for i in range(10):
        bus.emit("node:start", {"nodeId": str(i)})
    assert bus.overflowed == 7 and bus.dropped == 7 and bus.failed == 0
    release.set()
    await bus.drain()
    assert [e.payload["nodeId"] for e in got] == ["0", "1", "2"]
    # Once drained there is room again.
    bus.emit("node:start", {"nodeId": "again"})
    await bus.drain()
    assert got[-1].payload["nodeId"] == "again"


async def test_queued_subscribers_each_have_their_own_queue() -> None:
    bus = EventBus(max_queue=2)
    release = asyncio.Event()
    fast: list[str] = []

    async def slow(event: FlowEvent) -> None:
        await release.wait()

    bus.subscribe(slow)
    bus.subscribe(lambda event: fast.append(event.payload["nodeId"]))
    for i in range(2):
        bus.emit("node:start", {"nodeId": str(i)})
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    for i in range(2, 4):
        bus.emit("node:start", {"nodeId": str(i)})
    release.set()
    await bus.drain()
    assert fast == ["0", "1", "2", "3"]
    # The slow one holds event 0, queues 1 and 2, and loses 3; the fast one lost nothing.
    assert bus.overflowed == 1


async def test_inline_subscriber_sees_events_during_emit() -> None:
    bus = EventBus(max_queue=10)
    inline: list[str] = []
    bus.subscribe(lambda e: inline.append(e.type), ["node:start"], inline=True)
    bus.emit("node:start", {"nodeId": "a"})
    assert inline == ["node:start"]


async def test_failing_queued_subscriber_is_counted_not_raised() -> None:
    bus = EventBus(max_queue=10)

    def broken(event: FlowEvent) -> None:
        raise RuntimeError("bug")

    bus.subscribe(broken)
    result = await _chain(2).run(FlowRuntime(event_bus=bus))
    await bus.drain()
    assert result.status == "completed"
    assert bus.failed > 0 and bus.dropped == bus.failed


def test_unsubscribe_and_filters() -> None:
    bus = EventBus()
    got: list[str] = []
    unsubscribe = bus.subscribe(lambda e: got.append(e.type), ["node:finish"])
    assert bus.wants("node:finish") and not bus.wants("node:start")
    bus.emit("node:start", {})
    bus.emit("node:finish", {})
    unsubscribe()
    unsubscribe()
    assert not bus.wants("node:finish")
    bus.emit("node:finish", {})
    assert got == ["node:finish"]
    with pytest.raises(ValueError, match="unknown event types"):
        bus.subscribe(got.append, ["node:nope"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="max_queue"):
        EventBus(max_queue=0)


async def test_json_lines_sink_to_a_file(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "events.jsonl"
    bus = EventBus(max_queue=100)
    with JsonLinesSink(path) as sink:
        bus.subscribe(sink)
        result = await _chain(3).run(FlowRuntime(event_bus=bus))
        await bus.drain()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == sink.lines
    assert lines[0]["type"] == "workflow:start"
    assert lines[-1]["type"] == "workflow:finish"
    assert lines[-1]["payload"]["executionId"] == result.run_id
    assert {"type", "payload", "timestamp"} == set(lines[0])
    assert sum(1 for line in lines if line["type"] == "node:finish") == 3


def test_json_lines_sink_to_streams_keeps_odd_values() -> None:
    text = io.StringIO()
    binary = io.BytesIO()
    for stream in (text, binary):
        sink = JsonLinesSink(stream)
        sink(FlowEvent("node:error", {"error": ValueError("x"), "tags": {1, 2}, "obj": object()}))
        sink.close()
        assert not stream.closed  # the caller's stream stays open
    record = json.loads(text.getvalue())
    assert record["payload"]["error"] == "ValueError: x"
    assert record["payload"]["tags"] == [1, 2]
    assert record["payload"]["obj"].startswith("<object object")
    from_binary = json.loads(binary.getvalue())
    assert from_binary["payload"] == record["payload"] and from_binary["type"] == "node:error"


async def test_every_context_write_of_the_engine_is_announced() -> None:
    bus = EventBus()
    changes: list[tuple[str, str]] = []
    bus.subscribe(
        lambda e: changes.append((e.payload["op"], e.payload["key"])),
        ["context:change"],
        inline=True,
    )

    async def step(ctx: NodeContext) -> int:
        return 1

    flow = create_flow("announced").node("a", step).node("b", step).wait("w")
    flow.edge("a", "b").edge("b", "w")
    runtime = FlowRuntime(event_bus=bus)
    paused = await flow.run(runtime)
    assert paused.status == "awaiting"
    # Outputs, the input the engine resolved for b and w, and the awaiting bookkeeping.
    for key in ("_outputs.a", "_outputs.b", "_inputs.b", "_inputs.w", "_awaitingNodeIds"):
        assert ("set", key) in changes, key
    changes.clear()
    done = await runtime.resume(flow.to_blueprint(), paused.serialized_context, {"output": 2})
    assert done.status == "completed"
    assert ("delete", "_awaitingNodeIds") in changes
