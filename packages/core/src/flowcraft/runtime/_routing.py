"""Pure routing rules shared by the in-memory engine and the distributed adapter.

Nothing here touches scheduling state: callers pass the context data they hold, so the in-memory
run (a dict) and a distributed job (the keys it loaded) route identically.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flowcraft.blueprint import EdgeDefinition, NodeDefinition
from flowcraft.context import OUTPUTS, ContextView
from flowcraft.errors import ExpressionError, FlowcraftError
from flowcraft.evaluator import Evaluator
from flowcraft.node import NodeResult
from flowcraft.runtime._graph import NodeSpec
from flowcraft.runtime._inputs import resolve_inputs

__all__ = [
    "Routes",
    "condition_holds",
    "condition_scope",
    "edge_error",
    "edge_value",
    "input_from_edges",
    "routing_edges",
    "select_edges",
]

Routes = tuple[tuple[int, EdgeDefinition], ...]


def routing_edges(spec: NodeSpec, rescues: str | None = None) -> Routes:
    """The ``(index, edge)`` pairs a node's result routes along.

    A node routes along its own outgoing edges. A fallback that completes on behalf of the
    primary ``rescues`` routes along its own edges and that primary's (never along the edges of
    its other primaries).
    """
    if rescues is None:
        return spec.routing_edges
    return spec.rescue_routes.get(rescues, spec.routing_edges)


def edge_error(edge: EdgeDefinition, kind: str, exc: BaseException) -> ExpressionError:
    """The typed error for an edge ``condition`` or ``transform`` that could not be evaluated.

    The message names the edge; ``node_id`` is its source (as in the linter's report).
    """
    expression = (edge.condition if kind == "condition" else edge.transform) or ""
    reason = exc.message if isinstance(exc, FlowcraftError) else f"{type(exc).__name__}: {exc}"
    error = ExpressionError(
        f"edge ({edge.source} -> {edge.target}) {kind}: {reason}",
        expression=expression,
        node_id=edge.source,
    )
    error.__cause__ = exc
    return error


def condition_holds(
    evaluator: Evaluator, edge: EdgeDefinition, data: Mapping[str, Any], result: NodeResult
) -> bool:
    """Whether ``edge``'s condition (if any) holds for ``result``.

    Raises:
        ExpressionError: The evaluator failed on the condition (see :func:`edge_error`).
    """
    condition = edge.condition
    if condition is None:
        return True
    try:
        return bool(evaluator.evaluate(condition, condition_scope(data, result)))
    except Exception as exc:
        raise edge_error(edge, "condition", exc) from exc


def select_edges(
    edges: Routes,
    result: NodeResult,
    passes: Callable[[EdgeDefinition], bool],
) -> set[int]:
    """The indices of the edges a result takes.

    Edges whose ``action`` equals the result's action win; when none of them passes (or there is
    no action), the edges without an action are considered. ``passes`` checks a condition.
    """
    action = result.action
    chosen: set[int] = set()
    if action is not None:
        for index, edge in edges:
            if edge.action == action and passes(edge):
                chosen.add(index)
    if not chosen:
        for index, edge in edges:
            if edge.action is None and passes(edge):
                chosen.add(index)
    return chosen


def condition_scope(data: Mapping[str, Any], result: NodeResult) -> ContextView:
    """What an edge condition sees: the context plus ``result`` and ``context``."""
    return ContextView(
        data,
        {
            "result": {"output": result.output, "action": result.action},
            "context": ContextView(data),
        },
    )


def edge_value(
    evaluator: Evaluator, edge: EdgeDefinition, target: NodeDefinition, data: Mapping[str, Any]
) -> Any:
    """The value an edge hands its target: the source's output, through the transform if any.

    Raises:
        ExpressionError: The evaluator failed on the transform (see :func:`edge_error`).
    """
    value = data.get(OUTPUTS + edge.source)
    if edge.transform is None:
        return value
    if isinstance(target.inputs, str):
        ref = target.inputs if target.inputs[:1] == "_" else OUTPUTS + target.inputs
        if ref != OUTPUTS + edge.source and ref in data:
            value = data[ref]
    scope = {"input": value, "context": ContextView(data)}
    try:
        return evaluator.evaluate(edge.transform, scope)
    except Exception as exc:
        raise edge_error(edge, "transform", exc) from exc


def input_from_edges(
    evaluator: Evaluator,
    edges: list[EdgeDefinition],
    spec: NodeSpec,
    data: Mapping[str, Any],
    taken: list[tuple[str, int]],
) -> Any:
    """A node's input given the ``(source, edge index)`` pairs of the edges taken into it.

    A node with an ``inputs`` mapping and no transform on a taken edge resolves the mapping; one
    predecessor hands its value; several hand ``{source: value}`` (deterministic fan-in).
    """
    definition = spec.definition
    if definition.inputs is not None and not any(edges[i].transform for _, i in taken):
        return resolve_inputs(data, definition.inputs)
    if len(spec.preds) <= 1:
        return edge_value(evaluator, edges[taken[0][1]], definition, data) if taken else None
    return {
        source: edge_value(evaluator, edges[index], definition, data) for source, index in taken
    }
