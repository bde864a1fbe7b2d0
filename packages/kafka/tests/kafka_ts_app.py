"""Blueprints and nodes of the TS-client interop tests and their worker subprocess.

The blueprints are plain TS-shaped JSON with explicit ``uses`` keys, as a TS client sends them;
they and the nodes are those of the Redis backend's interop tests, whose expected statuses were
captured from the pinned TS runtime (flowcraft 2.10.1). ``app`` serves ``flowcraft worker --app
kafka_ts_app:app``.
"""

from __future__ import annotations

from typing import Any

from flowcraft import Blueprint, NodeContext, load_blueprint

__all__ = ["BLUEPRINTS", "FLOWS", "REGISTRY", "app"]


def inc(ctx: NodeContext) -> int:
    """The TS bench's ``noop``: its input plus one (0 for a non-number)."""
    value = ctx.input
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else 0
    return int(number) + 1


def total(ctx: NodeContext) -> Any:
    """The sum of a fan-in's mapped inputs."""
    return sum(dict(ctx.input or {}).values())


async def seeded(ctx: NodeContext) -> Any:
    """The initial context's ``seed`` plus one: reads what the TS client wrote."""
    return int(await ctx.context.get("seed")) + 1


def boom(ctx: NodeContext) -> None:
    """Always fails."""
    raise RuntimeError("boom (intentional)")


FLOWS: dict[str, dict[str, Any]] = {
    "linear": {
        "id": "ts-linear",
        "nodes": [{"id": f"n{i}", "uses": "inc"} for i in range(3)],
        "edges": [{"source": "n0", "target": "n1"}, {"source": "n1", "target": "n2"}],
    },
    # Versioned, so the client writes blueprintVersion "2" into the initial context.
    "fan": {
        "id": "ts-fan",
        "metadata": {"version": "2"},
        "nodes": [
            {"id": "start", "uses": "inc"},
            *({"id": f"p{i}", "uses": "inc"} for i in range(3)),
            {"id": "join", "uses": "total", "inputs": {f"p{i}": f"p{i}" for i in range(3)}},
        ],
        "edges": [
            *({"source": "start", "target": f"p{i}"} for i in range(3)),
            *({"source": f"p{i}", "target": "join"} for i in range(3)),
        ],
    },
    # Two start nodes: a TS client produces both at once, and the join waits for both.
    "two_starts": {
        "id": "ts-two-starts",
        "nodes": [
            {"id": "a", "uses": "inc"},
            {"id": "b", "uses": "inc"},
            {"id": "join", "uses": "total", "inputs": {"a": "a", "b": "b"}},
        ],
        "edges": [{"source": "a", "target": "join"}, {"source": "b", "target": "join"}],
    },
    "seeded": {
        "id": "ts-seeded",
        "nodes": [{"id": "s", "uses": "seeded"}, {"id": "t", "uses": "inc"}],
        "edges": [{"source": "s", "target": "t"}],
    },
    "failing": {
        "id": "ts-failing",
        "nodes": [
            {"id": "a", "uses": "inc"},
            {"id": "b", "uses": "boom"},
            {"id": "c", "uses": "inc"},
        ],
        "edges": [{"source": "a", "target": "b"}, {"source": "b", "target": "c"}],
    },
}
"""TS blueprint JSON by test name."""

REGISTRY = {"inc": inc, "total": total, "seeded": seeded, "boom": boom}
BLUEPRINTS: dict[str, Blueprint] = {b["id"]: load_blueprint(b) for b in FLOWS.values()}
app = {"registry": REGISTRY, "blueprints": BLUEPRINTS}
