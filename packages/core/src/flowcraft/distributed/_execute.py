"""Running the node of one job: its input, the node call, and what a failure or pause means."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flowcraft.context import OUTPUTS, ChangeListener
from flowcraft.distributed._current import CurrentJob, running_job
from flowcraft.distributed._jobrun import StoreContext
from flowcraft.distributed._keys import INTERNAL
from flowcraft.distributed._operations import Operations
from flowcraft.distributed._payload import JobPayload, job_id, member_of
from flowcraft.distributed._results import error_from_dict
from flowcraft.distributed._runs import child_attempt
from flowcraft.distributed._subflow import child_outcome, is_subflow, start_child
from flowcraft.errors import (
    FlowcraftError,
    ImplementationNotFound,
    NodeExecutionError,
    WorkflowCancelled,
)
from flowcraft.node import NodeContext, NodeResult, PatchOperation
from flowcraft.runtime import _announce as announce
from flowcraft.runtime._executor import (
    Attempts,
    announce_retry,
    backoff,
    invoker_for,
    run_with_middleware,
)
from flowcraft.runtime._graph import Graph, NodeSpec
from flowcraft.runtime._inputs import resolve_inputs
from flowcraft.runtime._routing import input_from_edges

__all__ = [
    "DEFERRED",
    "Deferred",
    "Outcome",
    "Prefetch",
    "announcer",
    "as_error",
    "execute_node",
    "prefetch_keys",
]

_log = logging.getLogger("flowcraft.distributed")
INPUTS = "_inputs."
RESCUED_ERROR = "rescuedError"
"""Field of a fallback job: the error of the primary it stands in for."""
# Built-ins that read arbitrary context keys through ctx._run.data.
_NEEDS_ALL = frozenset({"loop-controller", "batch-gather"})


@dataclass(slots=True)
class Outcome:
    """A node's result and the context operations to store with it."""

    result: NodeResult
    ops: list[PatchOperation] = field(default_factory=list)


def _reference_keys(ref: str) -> list[str]:
    if ref[:1] == "_":
        return [ref]
    base = ref.partition(".")[0]
    return [OUTPUTS + base, base]


def _input_keys(spec: NodeSpec) -> list[str]:
    inputs = spec.definition.inputs
    refs = [] if inputs is None else [inputs] if isinstance(inputs, str) else list(inputs.values())
    keys = [k for ref in refs for k in _reference_keys(ref)]
    mapping = (spec.definition.params or {}).get("inputs")
    if spec.definition.uses == "subflow" and isinstance(mapping, Mapping):
        # A subflow copies these parent keys (or references) into its child's context.
        keys += [k for ref in map(str, mapping.values()) for k in (ref, *_reference_keys(ref))]
    return keys


async def _taken(
    adapter: Operations,
    payload: JobPayload,
    graph: Graph,
    node_id: str,
    marks: set[str] | None = None,
) -> list[tuple[str, int]]:
    """The edges taken into ``node_id`` in the job's iteration, as (source, edge index).

    ``marks`` are the node's taken-edge marks when the caller already read them.
    """
    if marks is None:
        marks = await adapter.coordination.members(
            adapter.keys.taken(payload.run_id, node_id, payload.iteration)
        )
    taken: list[tuple[str, int]] = []
    for mark in sorted(marks):
        source, _, position = mark.rpartition("|")
        if source in graph.out_edges and int(position) < len(graph.out_edges[source]):
            taken.append((source, graph.out_edges[source][int(position)]))
    return taken


@dataclass(slots=True)  # not frozen, as the hop's classes (see _hop.py)
class Prefetch:
    """What the adapter read for a job when it arrived, so the node's input needs no reads.

    Attributes:
        marks: The node's taken-edge marks.
        keys: The context keys that were read (see :func:`prefetch_keys`); None: none were.
        data: The present ones among ``keys``.
    """

    marks: set[str]
    keys: frozenset[str] | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def covering(self, keys: list[str] | None) -> dict[str, Any] | None:
        """The prefetched values of ``keys`` if all were read, else None."""
        if keys is None or self.keys is None or not self.keys.issuperset(keys):
            return None
        return {k: self.data[k] for k in keys if k in self.data}


def prefetch_keys(spec: NodeSpec) -> list[str] | None:
    """Every context key the node's input can need, from the static graph.

    None when its input may need the whole context (a transform, a built-in reading any key).
    Cached on the spec: the caller must not change the list.
    """
    if spec.prefetch is None:
        spec.prefetch = (_prefetch_keys(spec),)
    return spec.prefetch[0]


def _prefetch_keys(spec: NodeSpec) -> list[str] | None:
    if spec.definition.uses in _NEEDS_ALL or spec.has_in_transform:
        return None
    if spec.definition.inputs is not None:
        return _input_keys(spec)
    node_id = spec.definition.id
    return [INPUTS + node_id, *(OUTPUTS + p for p in spec.preds), *_input_keys(spec)]


async def _data(
    adapter: Operations,
    run_id: str,
    keys: list[str] | None,
    prefetch: Prefetch | None,
) -> dict[str, Any]:
    data = prefetch.covering(keys) if prefetch is not None else None
    return await adapter.job_run_data(run_id, keys) if data is None else data


async def _input(
    adapter: Operations,
    payload: JobPayload,
    graph: Graph,
    node_id: str,
    prefetch: Prefetch | None = None,
) -> tuple[Any, dict[str, Any], list[PatchOperation], list[tuple[str, int]] | None]:
    """The node's input, the context data loaded for it, ``_inputs`` writes, and the taken
    edges when they were read (an ``inputs`` mapping does not need them)."""
    run_id = payload.run_id
    spec = graph.nodes[node_id]
    uses = spec.definition.uses
    if spec.definition.inputs is not None and not spec.has_in_transform:
        keys = None if uses in _NEEDS_ALL else _input_keys(spec)
        data = await _data(adapter, run_id, keys, prefetch)
        return resolve_inputs(data, spec.definition.inputs), data, [], None
    marks = None if prefetch is None else prefetch.marks
    taken = await _taken(adapter, payload, graph, node_id, marks)
    needs_all = uses in _NEEDS_ALL or any(graph.edges[i].transform for _, i in taken)
    keys = None if needs_all else [INPUTS + node_id, *(OUTPUTS + s for s, _ in taken)]
    if keys is not None:
        keys += _input_keys(spec)
    data = await _data(adapter, run_id, keys, prefetch)
    if not taken:
        return data.get(INPUTS + node_id), data, [], taken
    value = input_from_edges(adapter.evaluator, graph.edges, spec, data, taken)
    return value, data, [{"op": "set", "key": INPUTS + node_id, "value": value}], taken


def announcer(adapter: Operations, run_id: str) -> ChangeListener | None:
    """What emits ``context:change`` for the run's writes, when the event bus wants them."""
    bus = adapter.event_bus
    if bus is None or not bus.wants("context:change"):
        return None

    def changed(op: str, key: str, value: Any) -> None:
        if not key.startswith(INTERNAL):  # the adapter's own bookkeeping
            announce.context_change(bus, run_id, op, key, value)

    return changed


def as_error(payload: JobPayload, exc: BaseException) -> FlowcraftError:
    """``exc`` as the typed error a failed job reports (ids filled in from the job)."""
    if isinstance(exc, FlowcraftError):
        exc.node_id = exc.node_id or payload.node_id
        exc.blueprint_id = exc.blueprint_id or payload.blueprint_id
        exc.run_id = exc.run_id or payload.run_id
        return exc
    error = NodeExecutionError(
        f"node '{payload.node_id}' failed: {type(exc).__name__}: {exc}",
        node_id=payload.node_id,
        blueprint_id=payload.blueprint_id,
        run_id=payload.run_id,
    )
    error.__cause__ = exc
    return error


async def execute_node(
    adapter: Operations,
    payload: JobPayload,
    graph: Graph,
    spec: NodeSpec,
    role: str,
    prefetch: Prefetch | None = None,
) -> Outcome | Deferred | None:
    """Run the job's node; None when it paused or failed (both already recorded), DEFERRED
    when a failed attempt will be retried by a timer (the job is not done).

    ``prefetch`` is what was read for the job when it arrived.
    """
    node_id = payload.node_id
    if role == "resume" and is_subflow(adapter, spec):
        try:
            result, writes = await child_outcome(adapter, payload, spec)
        except NodeExecutionError as exc:
            error = as_error(payload, exc)
            # The child's attempt is the subflow node's: its retry starts a new child.
            attempt = child_attempt(str((payload.resume or {}).get("subflow") or ""))
            if attempt < spec.max_attempts and not error.is_fatal:
                await adapter.coordination.delete(
                    adapter.keys.resumed(payload.run_id, node_id, payload.iteration)
                )
                return await _retry_later(adapter, payload, spec, "", attempt, error)
            await _failed(adapter, payload, spec, error, role)
            return None
        return Outcome(result, writes)
    if role == "resume":
        resume = payload.resume or {}
        if "output" in resume:
            output = resume["output"]
        elif spec.definition.uses == "sleep":
            output = (await _input(adapter, payload, graph, node_id))[0]
        else:
            output = None
        await adapter.unpark(payload.run_id, node_id)
        action = resume.get("action")
        return Outcome(NodeResult(output=output, action=None if action is None else str(action)))
    # A fallback receives what its failed primary received.
    input_node = role[3:] if role.startswith("fb:") else node_id
    ops: list[PatchOperation] = []
    taken: list[tuple[str, int]] | None = None
    if input_node != node_id:
        value, data, _, _ = await _input(adapter, payload, graph, input_node)
    else:
        value, data, ops, taken = await _input(adapter, payload, graph, node_id, prefetch)
    run = adapter.job_run(payload.run_id, data)
    attempt = payload.attempt
    if spec.max_attempts > 1:
        # Counted in the store, not per delivery: a redelivered or retried job continues
        # the count.
        key = adapter.keys.attempts(payload.run_id, node_id, payload.iteration, role)
        attempt = await adapter.coordination.increment(key, adapter.ttl)
    signal = asyncio.Event()
    bus = adapter.event_bus
    if bus is not None:
        announce.node_start(bus, payload.run_id, payload.blueprint_id, node_id, value)
    ctx = NodeContext(
        input=value,
        context=StoreContext(adapter.context, payload.run_id, announcer(adapter, payload.run_id)),
        params=spec.definition.params or {},
        dependencies=adapter.dependencies,
        signal=signal,
        node_id=node_id,
        run_id=payload.run_id,
        blueprint_id=payload.blueprint_id,
        attempt=attempt,
        run=run,
    )

    async def predecessors() -> list[str]:
        marks = None if prefetch is None else prefetch.marks
        return [source for source, _ in await _taken(adapter, payload, graph, node_id, marks)]

    job = CurrentJob(
        payload,
        adapter.context,
        predecessors,
        None if taken is None else [source for source, _ in taken],
    )
    final = adapter.keys.final(payload.run_id)

    async def watch() -> None:
        if not signal.is_set() and await adapter.coordination.get(final) is not None:
            signal.set()

    watching = adapter.watches.add(watch)
    try:
        with running_job(job):
            result = await _invoke(adapter, ctx, spec, payload)
    except WorkflowCancelled:
        return None
    except Exception as exc:
        error = as_error(payload, exc)
        if attempt < spec.max_attempts and not error.is_fatal:
            return await _retry_later(adapter, payload, spec, role, attempt, error)
        await _failed(adapter, payload, spec, error, role)
        return None
    finally:
        adapter.watches.remove(watching)
    if run.child is not None and run.paused is not None:
        await start_child(adapter, payload, run.paused, *run.child, attempt)
        return None
    if run.paused is not None:
        await adapter.park(payload, run.paused)
        return None
    return Outcome(result, [*run.changes(), *ops])


async def _invoke(
    adapter: Operations, ctx: NodeContext, spec: NodeSpec, payload: JobPayload
) -> NodeResult:
    uses = spec.definition.uses
    try:
        implementation = adapter.registry[uses]
    except KeyError:
        raise ImplementationNotFound(
            f"node '{payload.node_id}' uses '{uses}', which is in no registry of this worker",
            node_id=payload.node_id,
        ) from None
    invoker = invoker_for(implementation)
    # One attempt per job: a retry is a job of its own, after a durable timer.
    attempts = Attempts(ctx.attempt, 0.0, spec.timeout, adapter.event_bus, first=ctx.attempt)
    if not adapter.middleware:
        return await invoker(ctx, attempts)

    async def core() -> NodeResult:
        try:
            return await invoker(ctx, attempts)
        except Exception as exc:
            raise as_error(payload, exc) from exc

    return await run_with_middleware(adapter.middleware, ctx, core)


class Deferred:
    """What :func:`execute_node` returns for a failed attempt a timer will retry."""


DEFERRED = Deferred()


async def _retry_later(
    adapter: Operations,
    payload: JobPayload,
    spec: NodeSpec,
    role: str,
    attempt: int,
    error: FlowcraftError,
) -> Deferred:
    """Schedule attempt ``attempt + 1`` as a durable timer; the worker's slot is free
    meanwhile, and a worker that dies during the back-off loses nothing."""
    run_id = payload.run_id
    announce_retry(adapter.event_bus, run_id, payload.blueprint_id, payload.node_id, attempt, error)
    delay = backoff(spec.retry_delay, attempt)
    job = JobPayload(
        run_id=run_id,
        blueprint_id=payload.blueprint_id,
        node_id=payload.node_id,
        attempt=attempt + 1,
        iteration=payload.iteration,
        trace_context=payload.trace_context,
        resume=None if role != "resume" or is_subflow(adapter, spec) else payload.resume,
        extra=payload.extra,
    )
    # The job stays counted in flight; held, the reconciler leaves its run alone meanwhile.
    await adapter.coordination.add_to_set(
        adapter.keys.held(run_id), member_of(payload), delay + 2 * adapter.lease
    )
    await adapter.schedule_retry(job, time.time() + delay)
    return DEFERRED


async def _failed(
    adapter: Operations,
    payload: JobPayload,
    spec: NodeSpec,
    error: FlowcraftError,
    role: str,
) -> None:
    bus = adapter.event_bus
    fallback = spec.fallback
    if fallback is not None and not error.is_fatal and not role.startswith("fb:"):
        _log.warning("node %s failed (%s); running fallback %s", payload.node_id, error, fallback)
        if bus is not None:
            announce.node_fallback(
                bus, payload.run_id, payload.blueprint_id, payload.node_id, fallback, error
            )
        job = JobPayload(
            run_id=payload.run_id,
            blueprint_id=payload.blueprint_id,
            node_id=fallback,
            iteration=payload.iteration,
            trace_context=payload.trace_context,
            # The primary's error travels with the job: should the fallback fail too, the run
            # fails with both.
            extra={"rescues": payload.node_id, RESCUED_ERROR: error.to_dict()},
        )
        fence = adapter.keys.fallback(payload.run_id, payload.node_id, payload.iteration)
        member = job_id(fallback, payload.iteration, f"fb:{payload.node_id}")
        await adapter.enqueue_job(job, member, fence=fence, by=member_of(payload))
        return
    if bus is not None:
        announce.node_error(bus, payload.run_id, payload.blueprint_id, payload.node_id, error)
    _log.error("run %s failed at node %s: %s", payload.run_id, payload.node_id, error)
    rescued = payload.extra.get(RESCUED_ERROR) if role.startswith("fb:") else None
    errors = [error_from_dict(rescued), error] if isinstance(rescued, Mapping) else [error]
    await adapter.publish_final(payload.run_id, "failed", errors)
