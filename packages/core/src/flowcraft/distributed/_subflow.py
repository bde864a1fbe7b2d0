"""Subflows in distributed mode: a subflow node runs its blueprint as a child run of its own.

The node's job computes the child's initial context as in memory, then (:func:`start_child`)
records the link ``parent:<child>`` → ``[run, node, iteration]``, parks the node (reason
``subflow``) and starts the child under the deterministic id :func:`child_run_id`, so that a
redelivered job finds the same child instead of starting a second one. While the child runs
the parent is neither finished nor awaiting; when the child awaits a human, the parent awaits
too, and resuming the parent resumes the child.

When the child's final result is written, :func:`end_links` resumes the parked node with a
job whose result is read from the child (:func:`child_outcome`): the mapped outputs, or the
child's failure as the node's failure, so the node's fallback runs as for any failure. A run
that ends while children run cancels them. Every step is idempotent; a run stays in the
unfinished-runs set until :func:`end_links` is done, so the reconciler repeats what a crash
interrupted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from flowcraft.builtins import (
    child_blueprint,
    child_initial_context,
    subflow_failure,
    subflow_output,
    subflow_output_keys,
)
from flowcraft.distributed._jobrun import JobRun
from flowcraft.distributed._orchestration import (
    STATUS,
    Orchestration,
    error_from_dict,
    job_id,
    parse_job_id,
)
from flowcraft.distributed._protocols import JobPayload
from flowcraft.errors import NodeExecutionError
from flowcraft.node import NodeContext, NodeResult, PatchOperation
from flowcraft.runtime._graph import NodeSpec, graph_for

if TYPE_CHECKING:
    from flowcraft.distributed.adapter import BaseDistributedAdapter

__all__ = [
    "child_awaits",
    "child_outcome",
    "child_run_id",
    "end_links",
    "is_subflow",
    "start_child",
    "subflow_job",
    "wake_parent",
    "waits_for_human",
]


def child_run_id(run_id: str, node_id: str, iteration: int) -> str:
    """The run id of the child a subflow node starts in one iteration."""
    return f"{run_id}/{node_id}@{iteration}"


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


def is_subflow(adapter: BaseDistributedAdapter, spec: NodeSpec) -> bool:
    """Whether ``spec`` runs as a child run (the built-in, not a registry override)."""
    return spec.definition.uses == "subflow" and adapter.registry.get("subflow") is subflow_job


async def start_child(
    adapter: BaseDistributedAdapter,
    payload: JobPayload,
    details: Mapping[str, Any],
    blueprint_id: str,
    data: Mapping[str, Any],
) -> None:
    """Link, park and start the child a subflow job asked for (each step repeatable)."""
    run_id, node_id, iteration = payload.run_id, payload.node_id, payload.iteration
    store, keys = adapter.coordination, adapter.keys
    child_id = child_run_id(run_id, node_id, iteration)
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
        blueprint_id, data, run_id=child_id, trace_context=payload.trace_context
    )
    # Cancelling the parent cancels the children it finds; one started after that is
    # cancelled here (one of the two sees the other's write).
    if await store.get(keys.final(run_id)) is not None:
        await adapter.publish_final(child_id, "cancelled")


async def child_outcome(
    adapter: BaseDistributedAdapter, payload: JobPayload, spec: NodeSpec
) -> tuple[NodeResult, list[PatchOperation]]:
    """The result of a subflow node whose child ended, and the parent keys it sets.

    Raises:
        NodeExecutionError: The child did not complete (failed, stalled, cancelled); the
            message carries the child's first error, which names the child's node.
    """
    run_id, node_id, iteration = payload.run_id, payload.node_id, payload.iteration
    child_id = child_run_id(run_id, node_id, iteration)
    # Also here, not only in resume_node: a resume job re-enqueued by reconcile may follow a
    # crash between the resume fence and the unpark.
    await adapter.coordination.remove_from_set(
        adapter.keys.parked(run_id), job_id(node_id, iteration)
    )
    await adapter.unpark(run_id, node_id)
    raw = await adapter.coordination.get(adapter.keys.final(child_id))
    meta = await adapter._meta(child_id)
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
    graph = await adapter.graph_of(child_id, adapter._blueprint(meta[0]))
    terminals = [n for n in graph.nodes if not graph.out_edges[n]]
    params = spec.definition.params or {}
    child = await adapter.context.get_many(child_id, subflow_output_keys(params, terminals))
    output, writes = subflow_output(params, terminals, child)
    ops: list[PatchOperation] = [{"op": "set", "key": k, "value": v} for k, v in writes.items()]
    return NodeResult(output=output), ops


async def end_links(orch: Orchestration, run_id: str) -> None:
    """After ``run_id``'s final result: cancel its running children, then resume the parent's
    node that waits for it (that node's job reads the result from the child)."""
    store, keys = orch.coordination, orch.keys
    (raw_link,), (parked,) = await store.read([keys.parent(run_id)], [keys.parked(run_id)])
    for member in parked:
        node_id, iteration, _ = parse_job_id(member)
        child_id = child_run_id(run_id, node_id, iteration)
        if await store.get(keys.parent(child_id)) is not None:
            await orch.publish_final(child_id, "cancelled")
    link = _link(raw_link)
    if link is None or await store.get(keys.final(link[0])) is not None:
        return
    parent, node_id, iteration = link
    # Counted before resume_node takes its fence: should this process die in between, the
    # parent's reconcile still finds the job.
    member = job_id(node_id, iteration, "resume")
    await store.add_to_set(keys.enqueued(parent), member, orch.ttl)
    await orch.resume_node(parent, node_id, iteration, {"subflow": run_id})


async def waits_for_human(
    orch: Orchestration, run_id: str, member: str, details: Mapping[str, Any]
) -> bool:
    """Whether a parked node waits for a resume: not a sleep, nor a subflow whose child runs."""
    reason = details.get("reason")
    if reason == "timer":
        return False
    if reason != "subflow":
        return True
    node_id, iteration, _ = parse_job_id(member)
    return await child_awaits(orch, run_id, node_id, iteration)


async def child_awaits(orch: Orchestration, run_id: str, node_id: str, iteration: int) -> bool:
    """Whether the child run of a parked subflow node awaits a resume."""
    child_id = child_run_id(run_id, node_id, iteration)
    if await orch.coordination.get(orch.keys.final(child_id)) is not None:
        return False
    return bool(await orch.context.get(child_id, STATUS) == "awaiting")


async def wake_parent(orch: Orchestration, run_id: str) -> None:
    """``run_id`` now awaits a resume: its parent awaits too once nothing else of it runs.

    The parent's last job ended while the child was running, so nothing else would look again.
    """
    link = await _parent(orch, run_id)
    if link is None:
        return
    parent = link[0]
    store, keys = orch.coordination, orch.keys
    if await store.get(keys.final(parent)) is not None:
        return
    enqueued = await store.members(keys.enqueued(parent))
    if enqueued and enqueued <= await store.members(keys.done(parent)):
        await orch._quiescent(parent)


async def _parent(orch: Orchestration, run_id: str) -> tuple[str, str, int] | None:
    return _link(await orch.coordination.get(orch.keys.parent(run_id)))


def _link(raw: str | None) -> tuple[str, str, int] | None:
    if raw is None:
        return None
    parent, node_id, iteration = orjson.loads(raw)
    return str(parent), str(node_id), int(iteration)
