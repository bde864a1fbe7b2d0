"""Middleware: code that wraps every node execution.

Order for a list ``[m1, m2]``: ``before_node`` hooks in list order, then ``around_node`` hooks
nested with ``m1`` outermost, then the node (all its attempts), then ``after_node`` hooks in list
order, which see the final result or error. An ``around_node`` hook may return a different result
than ``next()`` gave, or catch the error ``next()`` raised and return a result instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from flowcraft.node import NodeContext, NodeResult

__all__ = ["Middleware", "NextFn"]

NextFn = Callable[[], Awaitable[NodeResult]]


class Middleware:
    """Base class with no-op hooks; override any of them (each may be async or sync)."""

    def before_node(self, ctx: NodeContext, node_id: str) -> Awaitable[None] | None:
        """Runs before the node; raising fails the node."""
        return None

    def after_node(
        self,
        ctx: NodeContext,
        node_id: str,
        result: NodeResult | None,
        error: BaseException | None,
    ) -> Awaitable[None] | None:
        """Runs after the node with its result or error; raising fails the node."""
        return None

    async def around_node(self, ctx: NodeContext, node_id: str, next: NextFn) -> Any:
        """Wraps the node; return ``await next()`` or a replacement result."""
        return await next()
