"""Flows and registries imported by the CLI tests (module:attr sources)."""

from __future__ import annotations

from typing import Any

from flowcraft import NodeContext, create_flow


def double(ctx: NodeContext) -> Any:
    return (ctx.input or 0) * 2


def seed(ctx: NodeContext) -> Any:
    return ctx.params.get("value", 21)


def boom(ctx: NodeContext) -> None:
    raise RuntimeError("kaboom")


REGISTRY = {"seed": seed, "double": double, "boom": boom}

flow = create_flow("cli-sample").node("seed", seed).node("double", double).edge("seed", "double")
failing = create_flow("cli-fail").node("boom", boom)
not_a_flow = 42
