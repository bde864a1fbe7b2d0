"""Built-in nodes: ``wait``, ``sleep``, ``webhook``, ``subflow``, ``batch-scatter``,
``batch-gather`` and ``loop-controller``. A registry entry with the same key overrides them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from flowcraft.context import OUTPUTS, ContextView
from flowcraft.errors import BlueprintError, FlowcraftError, NodeExecutionError
from flowcraft.node import NodeContext, NodeResult
from flowcraft.runtime._inputs import resolve_reference

if TYPE_CHECKING:
    from flowcraft.runtime._engine import Run
    from flowcraft.runtime._graph import NodeSpec

__all__ = [
    "BUILTINS",
    "child_blueprint",
    "child_initial_context",
    "parse_duration",
    "resume_awaiting_node",
    "subflow_failure",
    "subflow_output",
    "subflow_output_keys",
]

SUBFLOW_STATE = "_subflowState."
BATCH_ITEMS = "_batch."
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration(value: Any) -> float:
    """Milliseconds from a number of ms or text like ``"500ms"``, ``"5s"``, ``"2h"``, ``"1d"``.

    Raises:
        ValueError: Negative, or not a recognised form.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value}")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_MS[match.group(2) or "ms"]
    raise ValueError(f"invalid duration {value!r}: use milliseconds or e.g. '5s', '2m', '1h', '1d'")


def _run(ctx: NodeContext) -> Run:
    run: Run = ctx._run
    return run


async def wait_node(ctx: NodeContext) -> None:
    """Pause the run until ``resume`` (human in the loop); the resume action routes."""
    details: dict[str, Any] = {"reason": "external_event"}
    if ctx.params:
        details["params"] = dict(ctx.params)
    _run(ctx).pause(ctx.node_id, details)


async def sleep_node(ctx: NodeContext) -> None:
    """Pause the run until ``params.duration`` has passed; the scheduler resumes it."""
    try:
        duration = parse_duration(ctx.params.get("duration"))
    except ValueError as exc:
        raise BlueprintError(f"sleep node '{ctx.node_id}': {exc}", node_id=ctx.node_id) from exc
    wake = datetime.now(UTC) + timedelta(milliseconds=duration)
    _run(ctx).pause(ctx.node_id, {"reason": "timer", "wakeUpAt": wake.isoformat()})


async def webhook_node(ctx: NodeContext) -> None:
    """Pause the run until a webhook delivery resumes it with the request body as output."""
    path = ctx.params.get("path") or f"/webhooks/{ctx.run_id}/{ctx.node_id}"
    details: dict[str, Any] = {"reason": "webhook", "path": path}
    if "event" in ctx.params:
        details["event"] = ctx.params["event"]
    register = ctx.dependencies.get("webhooks")
    if register is not None:
        details.update(await register.register(ctx.run_id, ctx.node_id, dict(ctx.params)) or {})
    _run(ctx).pause(ctx.node_id, details)


async def loop_controller(ctx: NodeContext) -> NodeResult:
    """Continue the loop while ``params.condition`` holds, else break."""
    condition = ctx.params.get("condition")
    if not isinstance(condition, str):
        raise BlueprintError(
            f"loop controller '{ctx.node_id}' needs a string params.condition",
            node_id=ctx.node_id,
        )
    run = _run(ctx)
    scope = ContextView(run.data, {"context": ContextView(run.data), "input": ctx.input})
    if run.evaluator.evaluate(condition, scope):
        return NodeResult(action="continue")
    return NodeResult(action="break")


async def batch_scatter(ctx: NodeContext) -> NodeResult:
    """Emit one worker node per input item; with ``chunkSize`` each chunk waits for the last."""
    items = ctx.input if ctx.input is not None else []
    if not isinstance(items, list):
        raise NodeExecutionError(
            f"batch scatter '{ctx.node_id}' needs a list input, got {type(items).__name__}",
            node_id=ctx.node_id,
        )
    params = ctx.params
    worker = params.get("workerUsesKey")
    gather = params.get("gatherNodeId")
    if not isinstance(worker, str) or not isinstance(gather, str):
        raise BlueprintError(
            f"batch scatter '{ctx.node_id}' needs params.workerUsesKey and params.gatherNodeId",
            node_id=ctx.node_id,
        )
    chunk = int(params.get("chunkSize") or len(items) or 1)
    if chunk < 1:
        raise BlueprintError(f"batch scatter '{ctx.node_id}': chunkSize must be at least 1")
    batch_id = ctx.node_id.removesuffix("_scatter")
    run = _run(ctx)
    ids = [f"{batch_id}_worker_{i}" for i in range(len(items))]
    nodes: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        key = f"{BATCH_ITEMS}{batch_id}.{i}"
        run.data[key] = item
        start = i - i % chunk
        preds = [ctx.node_id] if start == 0 else ids[start - chunk : start]
        nodes.append({"id": ids[i], "uses": worker, "inputs": key, "predecessors": preds})
    bus = run.bus
    if bus is not None and bus.wants("batch:start"):
        bus.emit(
            "batch:start",
            {
                "batchId": batch_id,
                "scatterNodeId": ctx.node_id,
                "workerNodeIds": ids,
                "executionId": ctx.run_id,
            },
        )
    return NodeResult(output={"gatherNodeId": gather, "workerIds": ids}, dynamic_nodes=nodes)


async def batch_gather(ctx: NodeContext) -> list[Any]:
    """Collect the workers' outputs in item order (``None`` for a worker without output)."""
    run = _run(ctx)
    gather = ctx.params.get("gatherNodeId") or ctx.node_id
    scatter_output: Any = None
    candidates = ctx.input.values() if isinstance(ctx.input, Mapping) else [ctx.input]
    for value in [ctx.input, *candidates]:
        if isinstance(value, Mapping) and value.get("gatherNodeId") == gather:
            scatter_output = value
            break
    ids: list[str] = list(scatter_output.get("workerIds") or []) if scatter_output else []
    data = run.data
    results = [data.get(OUTPUTS + worker_id) for worker_id in ids]
    batch_id = gather.removesuffix("_gather")
    for i in range(len(ids)):
        data.pop(f"{BATCH_ITEMS}{batch_id}.{i}", None)
    output_key = ctx.params.get("outputKey")
    if isinstance(output_key, str):
        await ctx.context.set(output_key, results)
    bus = run.bus
    if bus is not None and bus.wants("batch:finish"):
        bus.emit(
            "batch:finish",
            {
                "batchId": batch_id,
                "gatherNodeId": ctx.node_id,
                "results": results,
                "executionId": ctx.run_id,
            },
        )
    return results


async def subflow_node(ctx: NodeContext) -> NodeResult:
    """Run another registered blueprint as one node (``params.blueprintId``)."""
    run = _run(ctx)
    child = child_blueprint(ctx, run.runtime.blueprints, "the runtime")
    from flowcraft.runtime._graph import graph_for

    child_data = child_initial_context(ctx, run.data, graph_for(child).start_nodes)
    status, child_run = await run.runtime.run_child(child, child_data, run)
    return _subflow_outcome(ctx, run, status, child_run)


def child_blueprint(ctx: NodeContext, blueprints: Mapping[str, Any], owner: str) -> Any:
    """The blueprint a subflow node runs (``owner`` names who should have it registered).

    Raises:
        BlueprintError: ``params.blueprintId`` is missing or not registered.
    """
    blueprint_id = ctx.params.get("blueprintId")
    if not isinstance(blueprint_id, str):
        raise BlueprintError(
            f"subflow node '{ctx.node_id}' needs params.blueprintId", node_id=ctx.node_id
        )
    child = blueprints.get(blueprint_id)
    if child is None:
        raise BlueprintError(
            f"subflow node '{ctx.node_id}': blueprint '{blueprint_id}' is not registered"
            f" with {owner}",
            node_id=ctx.node_id,
        )
    return child


def child_initial_context(
    ctx: NodeContext, data: Mapping[str, Any], start_nodes: list[str]
) -> dict[str, Any]:
    """A subflow child's initial context: ``params.inputs`` (child key → parent key or
    reference) copied from ``data``, else the node's input as every start node's input."""
    child_data: dict[str, Any] = {}
    mapping = ctx.params.get("inputs")
    if isinstance(mapping, Mapping):
        for child_key, parent_key in mapping.items():
            child_data[child_key] = (
                data[parent_key] if parent_key in data else resolve_reference(data, parent_key)
            )
    elif ctx.input is not None:
        for start in start_nodes:
            child_data[f"_inputs.{start}"] = ctx.input
    return child_data


def subflow_output_keys(params: Mapping[str, Any], terminals: list[str]) -> list[str]:
    """The child context keys :func:`subflow_output` reads."""
    outputs = params.get("outputs")
    if isinstance(outputs, Mapping):
        return [k for child_key in outputs.values() for k in (OUTPUTS + child_key, child_key)]
    return [OUTPUTS + t for t in terminals]


def subflow_output(
    params: Mapping[str, Any], terminals: list[str], child: Mapping[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """A completed child's output as the subflow node's output, and the parent keys to set.

    ``params.outputs`` maps parent key → child key (a node's output, else a context key);
    without it the output is that of the child's one terminal node (``terminals``: nodes
    without outgoing edges), or ``{terminal: output}`` for those that produced one.
    """
    outputs = params.get("outputs")
    if isinstance(outputs, Mapping):
        mapped = {
            parent_key: child.get(OUTPUTS + child_key, child.get(child_key))
            for parent_key, child_key in outputs.items()
        }
        return mapped, mapped
    produced = [t for t in terminals if OUTPUTS + t in child]
    if len(produced) == 1:
        return child[OUTPUTS + produced[0]], {}
    return {t: child[OUTPUTS + t] for t in produced}, {}


def subflow_failure(
    node_id: str, blueprint_id: str, status: str, first: FlowcraftError | None
) -> NodeExecutionError:
    """The error a subflow node fails with when its child ended ``status`` (not completed)."""
    error = NodeExecutionError(
        f"subflow '{blueprint_id}' of node '{node_id}' ended {status}"
        + (f": {first.message}" if first is not None else ""),
        node_id=node_id,
    )
    error.__cause__ = first
    return error


def _subflow_outcome(ctx: NodeContext, run: Run, status: str, child_run: Run) -> NodeResult:
    key = SUBFLOW_STATE + ctx.node_id
    if status == "awaiting":
        child_run.data["_runState"] = child_run.snapshot_state()
        run.data[key] = child_run.data
        run.pause(
            ctx.node_id,
            {"reason": "subflow", "awaiting": list(child_run.awaiting)},
        )
        return NodeResult()
    run.data.pop(key, None)
    if status != "completed":
        first = child_run.errors[0] if child_run.errors else None
        raise subflow_failure(ctx.node_id, child_run.blueprint_id, status, first)
    graph = child_run.graph
    terminals = [n for n in graph.nodes if not graph.out_edges[n]]
    output, parent_writes = subflow_output(ctx.params, terminals, child_run.data)
    run.data.update(parent_writes)
    return NodeResult(output=output)


async def resume_awaiting_node(
    run: Run, node_id: str, spec: NodeSpec, output: Any, action: str | None
) -> NodeResult:
    """The result an awaiting node completes with when resumed."""
    from flowcraft.runtime.runtime import UNSET

    definition = spec.definition
    key = SUBFLOW_STATE + node_id
    if definition.uses == "subflow" and isinstance(run.data.get(key), dict):
        ctx = run._context_for(node_id, spec, None)
        child_data = run.data[key]
        child_awaiting = list(child_data.get("_awaitingNodeIds") or [])
        if not child_awaiting:
            raise NodeExecutionError(f"subflow of node '{node_id}' has nothing to resume")
        child_bp = child_blueprint(ctx, run.runtime.blueprints, "the runtime")
        status, child_run = await run.runtime.run_child(
            child_bp,
            child_data,
            run,
            resume=(child_awaiting[0], output, action),
        )
        return _subflow_outcome(ctx, run, status, child_run)
    if output is UNSET:
        output = run._input_for(node_id, spec) if definition.uses == "sleep" else None
    return NodeResult(output=output, action=action)


BUILTINS: dict[str, Any] = {
    "wait": wait_node,
    "sleep": sleep_node,
    "webhook": webhook_node,
    "subflow": subflow_node,
    "batch-scatter": batch_scatter,
    "batch-gather": batch_gather,
    "loop-controller": loop_controller,
}
