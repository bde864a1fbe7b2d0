"""Subflows in distributed mode, the node's side: a subflow node runs its blueprint as a
child run of its own.

The node's job computes the child's initial context as in memory, then (:func:`start_child`)
records the link ``parent:<child>`` → ``[run, node, iteration]``, parks the node (reason
``subflow``) and starts the child under the deterministic id ``child_run_id``, so that a
redelivered job finds the same child instead of starting a second one. While the child runs
the parent is neither finished nor awaiting; when the child awaits a human, the parent awaits
too, and resuming the parent resumes the child.

When the child's final result is written, the run ledger (``_runs.Runs.end_links``) resumes the
parked node with a job whose result is read from the child (:func:`child_outcome`): the mapped
outputs, or the child's failure as the node's failure, so the node's fallback runs as for any
failure. Every step is idempotent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from flowcraft.builtins import (
    child_blueprint,
    child_initial_context,
    subflow_failure,
    subflow_output,
    subflow_output_keys,
)
from flowcraft.distributed._jobrun import JobRun
from flowcraft.distributed._operations import Operations
from flowcraft.distributed._payload import JobPayload, job_id
from flowcraft.distributed._results import error_from_dict
from flowcraft.distributed._runs import child_run_id
from flowcraft.errors import NodeExecutionError
from flowcraft.node import NodeContext, NodeResult, PatchOperation
from flowcraft.runtime._graph import NodeSpec, graph_for

__all__ = ["child_outcome", "is_subflow", "start_child", "subflow_job"]


async def subflow_job(ctx: NodeContext) -> None:
    """The ``subflow`` built-in of distributed workers: asks for the child run.

    The child is started after the node returns (:func:`start_child`), like a ``wait`` node's
    park, so middleware and retries wrap only the checks and the input mapping.

    Raises:
        BlueprintError: ``params.blueprintId`` is missing or not registered with this worker.
        ExpressionError: The evaluator rejects an expression of the child blueprint.
    """
    run: JobRun = ctx._run
    child = child_blueprint(ctx, run.blueprints, "this worker")
    graph = graph_for(child)
    graph.check_expressions(run.evaluator)
    run.child = (child.id, child_initial_context(ctx, run.data, graph.start_nodes))
    run.pause(ctx.node_id, {"reason": "subflow", "blueprintId": child.id})


def is_subflow(adapter: Operations, spec: NodeSpec) -> bool:
    """Whether ``spec`` runs as a child run (the built-in, not a registry override)."""
    return spec.definition.uses == "subflow" and adapter.registry.get("subflow") is subflow_job


async def start_child(
    adapter: Operations,
    payload: JobPayload,
    details: Mapping[str, Any],
    blueprint_id: str,
    data: Mapping[str, Any],
    attempt: int = 1,
) -> None:
    """Link, park and start the child a subflow job asked for (each step repeatable); a
    retried subflow node starts a child of its own per attempt."""
    run_id, node_id, iteration = payload.run_id, payload.node_id, payload.iteration
    store, keys = adapter.coordination, adapter.keys
    child_id = child_run_id(run_id, node_id, iteration, attempt)
    link = orjson.dumps([run_id, node_id, iteration]).decode()
    await store.set_if_not_exist(keys.parent(child_id), link, adapter.ttl)
    # Parked before the child starts, so that the child's end always finds the node parked.
    await adapter.park(payload, {**details, "childRunId": child_id})
    if await store.get(keys.resumed(run_id, node_id, iteration)) is not None:
        # A redelivered job whose child already ended and resumed the node: undo the park.
        await store.remove_from_set(keys.parked(run_id), job_id(node_id, iteration))
        await adapter.unpark(run_id, node_id)
        return
    await adapter.start_run(
        blueprint_id, data, run_id=child_id, trace_context=payload.trace_context, exists="attach"
    )
    # Cancelling the parent cancels the children it finds; one started after that is
    # cancelled here (one of the two sees the other's write).
    if await store.get(keys.final(run_id)) is not None:
        await adapter.publish_final(child_id, "cancelled")


async def child_outcome(
    adapter: Operations, payload: JobPayload, spec: NodeSpec
) -> tuple[NodeResult, list[PatchOperation]]:
    """The result of a subflow node whose child ended, and the parent keys it sets.

    Raises:
        NodeExecutionError: The child did not complete (failed, stalled, cancelled); the
            message carries the child's first error, which names the child's node.
    """
    run_id, node_id, iteration = payload.run_id, payload.node_id, payload.iteration
    child = (payload.resume or {}).get("subflow")
    child_id = child if isinstance(child, str) else child_run_id(run_id, node_id, iteration)
    # Also here, not only in resume_node: a resume job re-enqueued by reconcile may follow a
    # crash between the resume fence and the unpark.
    await adapter.coordination.remove_from_set(
        adapter.keys.parked(run_id), job_id(node_id, iteration)
    )
    await adapter.unpark(run_id, node_id)
    raw = await adapter.coordination.get(adapter.keys.final(child_id))
    meta = await adapter.meta(child_id)
    if raw is None or meta is None:
        raise NodeExecutionError(
            f"subflow of node '{node_id}' has no result (child run '{child_id}')",
            node_id=node_id,
        )
    record = orjson.loads(raw)
    if record["status"] != "completed":
        errors = [error_from_dict(e) for e in record.get("errors") or []]
        first = errors[0] if errors else None
        raise subflow_failure(node_id, meta[0], record["status"], first)
    graph = await adapter.graph_of(child_id, adapter.blueprint(meta[0]))
    terminals = [n for n in graph.nodes if not graph.out_edges[n]]
    params = spec.definition.params or {}
    child = await adapter.context.get_many(child_id, subflow_output_keys(params, terminals))
    output, writes = subflow_output(params, terminals, child)
    ops: list[PatchOperation] = [{"op": "set", "key": k, "value": v} for k, v in writes.items()]
    return NodeResult(output=output), ops
