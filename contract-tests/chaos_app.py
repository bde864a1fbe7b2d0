"""The flow of the chaos test, importable by worker subprocesses (``chaos_app:app``).

``start`` → ``BRANCHES`` parallel branches → ``join`` (``joinStrategy: all``) → ``c1`` → ``c2``
→ ``c3``. Every value is a function of the run's ``seed``, so the test can compute what each
node must output and write. Every node writes a context key of its own and sleeps a little,
at random, so that a SIGKILL usually lands in the middle of some node.

Workers are killed, so nothing they remember survives: each execution appends JSON lines to
``$FLOWCRAFT_CHAOS_DIR/<pid>.log`` instead (``start`` when the node's code begins, ``end`` just
before it returns). The join's ``start`` line also carries what it saw of its predecessors.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

import orjson

from flowcraft import Flow, NodeContext, create_flow

__all__ = [
    "BRANCHES",
    "BLUEPRINT_ID",
    "CHAIN",
    "NODES",
    "app",
    "branch_value",
    "expected_context",
    "expected_output",
    "flow",
]

BLUEPRINT_ID = "chaos"
BRANCHES = [f"b{i}" for i in range(4)]
CHAIN = ["c1", "c2", "c3"]
NODES = ["start", *BRANCHES, "join", *CHAIN]

_log_fd: int | None = None
_log_pid = 0


def _log(ctx: NodeContext, event: str, **extra: Any) -> None:
    global _log_fd, _log_pid
    directory = os.environ.get("FLOWCRAFT_CHAOS_DIR")
    if not directory:
        return
    if _log_fd is None or _log_pid != os.getpid():
        _log_pid = os.getpid()
        path = os.path.join(directory, f"{_log_pid}.log")
        _log_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    record = {
        "ev": event,
        "run": ctx.run_id,
        "node": ctx.node_id,
        "pid": _log_pid,
        "t": time.time(),
        **extra,
    }
    # One write(2) of one line per record on an O_APPEND descriptor: lines of concurrent
    # executions never interleave, and a kill leaves at most the line being written.
    os.write(_log_fd, orjson.dumps(record) + b"\n")


async def _pause(low: float, high: float) -> None:
    await asyncio.sleep(random.uniform(low, high))


def branch_value(seed: int, branch: str) -> int:
    return seed * 10 + BRANCHES.index(branch)


def _join_value(seed: int) -> int:
    return sum(branch_value(seed, b) for b in BRANCHES)


def expected_output(seed: int) -> int:
    """What ``c3`` outputs for ``seed``."""
    return (_join_value(seed) + 1) * 2 - 3


def expected_context(seed: int) -> dict[str, Any]:
    """The context keys the nodes write, with their values, for ``seed``."""
    c1 = _join_value(seed) + 1
    return {
        "chaos.start": seed,
        **{f"chaos.branch.{b}": branch_value(seed, b) for b in BRANCHES},
        "chaos.join": {"inputs": BRANCHES, "context": BRANCHES, "sum": _join_value(seed)},
        "chaos.c1": c1,
        "chaos.c2": c1 * 2,
        "chaos.c3": c1 * 2 - 3,
    }


async def start(ctx: NodeContext) -> int:
    _log(ctx, "start")
    seed = int(ctx.input)
    await _pause(0.0, 0.01)
    await ctx.context.set("chaos.start", seed)
    _log(ctx, "end")
    return seed


async def branch(ctx: NodeContext) -> int:
    _log(ctx, "start")
    value = int(ctx.input) * 10 + int(ctx.params["index"])
    await _pause(0.005, 0.04)
    await ctx.context.set(f"chaos.branch.{ctx.node_id}", value)
    await _pause(0.0, 0.01)
    _log(ctx, "end")
    return value


async def join(ctx: NodeContext) -> int:
    inputs: dict[str, Any] = dict(ctx.input) if isinstance(ctx.input, dict) else {}
    # Logged first, so that every execution of the join is judged, also one killed at once.
    _log(ctx, "start", inputs=inputs)
    written = await ctx.context.get_many([f"chaos.branch.{b}" for b in BRANCHES])
    seen = sorted(k.removeprefix("chaos.branch.") for k, v in written.items() if v is not None)
    _log(ctx, "saw", context=seen)
    total = sum(int(v) for v in inputs.values())
    await _pause(0.0, 0.02)
    await ctx.context.set("chaos.join", {"inputs": sorted(inputs), "context": seen, "sum": total})
    _log(ctx, "end")
    return total


async def c1(ctx: NodeContext) -> int:
    return await _chain(ctx, int(ctx.input) + 1)


async def c2(ctx: NodeContext) -> int:
    return await _chain(ctx, int(ctx.input) * 2)


async def c3(ctx: NodeContext) -> int:
    return await _chain(ctx, int(ctx.input) - 3)


async def _chain(ctx: NodeContext, value: int) -> int:
    _log(ctx, "start")
    await _pause(0.0, 0.02)
    await ctx.context.set(f"chaos.{ctx.node_id}", value)
    _log(ctx, "end")
    return value


def _build() -> Flow:
    built = create_flow(BLUEPRINT_ID).node("start", start, inputs="seed")
    for index, name in enumerate(BRANCHES):
        built = built.node(name, branch, params={"index": index}).edge("start", name)
    built = built.node("join", join, config={"joinStrategy": "all"})
    for name in BRANCHES:
        built = built.edge(name, "join")
    built = built.node("c1", c1).node("c2", c2).node("c3", c3)
    return built.edge("join", "c1").edge("c1", "c2").edge("c2", "c3")


flow = _build()
app = {"registry": flow.function_registry, "blueprints": {BLUEPRINT_ID: flow.to_blueprint()}}
