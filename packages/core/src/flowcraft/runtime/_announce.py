"""The events a run announces about its nodes and context, in one payload shape for in-memory
and distributed runs.

Each function emits only when the bus wants its event, so callers need only check that there is
a bus; every payload carries the run's ``executionId``.
"""

from __future__ import annotations

from typing import Any

from flowcraft.blueprint import EdgeDefinition
from flowcraft.errors import FlowcraftError
from flowcraft.events import EventBus
from flowcraft.node import NodeResult

__all__ = [
    "condition",
    "context_change",
    "node_error",
    "node_fallback",
    "node_finish",
    "node_start",
]


def node_start(bus: EventBus, run_id: str, blueprint_id: str, node_id: str, value: Any) -> None:
    """``node:start``, with the node's input."""
    if bus.wants("node:start"):
        payload = {"nodeId": node_id, "executionId": run_id, "blueprintId": blueprint_id}
        bus.emit("node:start", {**payload, "input": value})


def node_finish(
    bus: EventBus, run_id: str, blueprint_id: str, node_id: str, result: NodeResult
) -> None:
    """``node:finish``, with the node's result."""
    if bus.wants("node:finish"):
        payload = {"nodeId": node_id, "executionId": run_id, "blueprintId": blueprint_id}
        bus.emit("node:finish", {**payload, "result": result.to_dict()})


def node_error(
    bus: EventBus, run_id: str, blueprint_id: str, node_id: str, error: FlowcraftError
) -> None:
    """``node:error``: the node failed for good, and so does the run."""
    if bus.wants("node:error"):
        payload = {"nodeId": node_id, "executionId": run_id, "blueprintId": blueprint_id}
        bus.emit("node:error", {**payload, "error": error.to_dict()})


def node_fallback(
    bus: EventBus,
    run_id: str,
    blueprint_id: str,
    node_id: str,
    fallback: str,
    error: FlowcraftError,
) -> None:
    """``node:fallback``: ``fallback`` runs for the failed ``node_id``."""
    if bus.wants("node:fallback"):
        payload = {"nodeId": node_id, "executionId": run_id, "blueprintId": blueprint_id}
        bus.emit("node:fallback", {**payload, "fallback": fallback, "error": error.message})


def condition(
    bus: EventBus,
    run_id: str,
    blueprint_id: str,
    node_id: str,
    edge: EdgeDefinition,
    passed: bool,
) -> None:
    """``edge:evaluate`` for a condition evaluated on ``node_id``'s result, and
    ``node:skipped`` (naming ``node_id``) when it did not hold."""
    if bus.wants("edge:evaluate"):
        bus.emit(
            "edge:evaluate",
            {
                "source": edge.source,
                "target": edge.target,
                "condition": edge.condition,
                "result": passed,
                "executionId": run_id,
                "blueprintId": blueprint_id,
            },
        )
    if not passed and bus.wants("node:skipped"):
        bus.emit(
            "node:skipped",
            {
                "nodeId": node_id,
                "edge": edge.model_dump(by_alias=True, exclude_none=True),
                "executionId": run_id,
                "blueprintId": blueprint_id,
            },
        )


def context_change(bus: EventBus, run_id: str, op: str, key: str, value: Any) -> None:
    """``context:change`` for one write (``op``: set or delete)."""
    if bus.wants("context:change"):
        bus.emit("context:change", {"key": key, "op": op, "value": value, "executionId": run_id})
