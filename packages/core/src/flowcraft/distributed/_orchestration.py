"""Routing, joins, dead paths and run termination for the distributed adapter.

This is the half of :class:`~flowcraft.distributed.BaseDistributedAdapter` that decides what
happens after a node's result is stored; ``adapter.py`` is the half that gets there. The rules
are those of the in-memory engine (and use its helpers in ``runtime/_routing.py``), restated
over the coordination store:

* a node marks each routing edge *resolved* for its target (set membership keyed by run, target,
  iteration and source, never a counter) and, if taken, also *taken*;
* a target fires when every predecessor resolved and one edge was taken (``all``) or on the
  first taken edge (``any``); with none taken it is skipped, which resolves its own edges; a
  per-target-and-iteration fence makes firing and skipping happen once;
* every job is added to the run's *enqueued* set before it is enqueued and to its *done* set
  after its effects are stored; the job that makes both sets equal ends the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson

from flowcraft import errors as _errors
from flowcraft.blueprint import Blueprint, EdgeDefinition, NodeDefinition
from flowcraft.distributed._jobrun import JobRun
from flowcraft.distributed._keys import AWAITING, DYNAMIC, INTERNAL, TRACE, Keys
from flowcraft.distributed._protocols import ContextStore, CoordinationStore, JobPayload
from flowcraft.errors import BlueprintError, ExpressionError, FlowcraftError
from flowcraft.evaluator import Evaluator
from flowcraft.events import EventBus
from flowcraft.hooks import RunHooks, RunInfo, call_after_run
from flowcraft.node import NodeResult
from flowcraft.result import WorkflowResult, WorkflowStatus
from flowcraft.runtime import _announce as announce
from flowcraft.runtime._graph import Graph, graph_for
from flowcraft.runtime._routing import condition_holds, routing_edges, select_edges
from flowcraft.serializer import JsonSerializer

__all__ = ["Orchestration", "error_from_dict", "job_id", "parse_job_id"]

_log = logging.getLogger("flowcraft.distributed")
STATUS = INTERNAL + "status"
RESUME = INTERNAL + "resume."


def job_id(node_id: str, iteration: int, role: str = "") -> str:
    """The member naming one job in a run's enqueued/done sets."""
    return orjson.dumps([node_id, iteration, role]).decode()


def parse_job_id(value: str) -> tuple[str, int, str]:
    """Inverse of :func:`job_id`."""
    node_id, iteration, role = orjson.loads(value)
    return str(node_id), int(iteration), str(role)


class Orchestration:
    """State-store side of the base adapter; see the module docstring for the rules."""

    coordination: CoordinationStore
    context: ContextStore
    keys: Keys
    ttl: float
    evaluator: Evaluator
    event_bus: EventBus | None
    blueprints: dict[str, Blueprint]
    registry: dict[str, Any]
    hooks: list[RunHooks]
    _graphs: dict[tuple[str, frozenset[str]], Graph]

    async def _enqueue(self, body: str, delay: float = 0.0) -> None:
        raise NotImplementedError

    async def _publish_result(
        self, run_id: str, status: str, errors: list[FlowcraftError] | None = None
    ) -> None:
        raise NotImplementedError

    async def _meta(self, run_id: str) -> tuple[str, str | None] | None:
        raise NotImplementedError

    async def resume_node(
        self, run_id: str, node_id: str, iteration: int, data: Mapping[str, Any]
    ) -> bool:
        raise NotImplementedError

    # ----------------------------------------------------------------- graph of a run

    async def graph_of(
        self, run_id: str, blueprint: Blueprint, emitters: set[str] | None = None
    ) -> Graph:
        """The run's graph: the blueprint plus the dynamic nodes its results spliced in.

        ``emitters`` is the run's set of splicing nodes when the caller just read it.
        """
        if emitters is None:
            emitters = await self.coordination.members(self.keys.dynamic(run_id))
        base = graph_for(blueprint)
        if not emitters:
            return base
        cache_key = (run_id, frozenset(emitters))
        cached = self._graphs.get(cache_key)
        if cached is not None:
            return cached
        graph = base.copy()
        # Sorted so every worker splices in the same order and edge positions agree.
        stored = await self.context.get_many(run_id, [DYNAMIC + e for e in sorted(emitters)])
        for emitter in sorted(emitters):
            splice = stored.get(DYNAMIC + emitter) or {}
            _splice(graph, emitter, splice.get("nodes") or [], splice.get("gather"))
        if len(self._graphs) > 256:
            self._graphs.clear()
        self._graphs[cache_key] = graph
        return graph

    @staticmethod
    def target_iteration(graph: Graph, source: str, target: str, iteration: int) -> int:
        """The iteration of ``target`` reached from ``source`` in ``iteration``.

        A controller's edge into its body starts the next iteration, edges inside one loop
        keep it, and anything else (entering or leaving a loop) is the outer iteration 0.
        """
        bodies = graph.loop_bodies
        if source in bodies and target in bodies[source]:
            return iteration + 1
        for controller, body in bodies.items():
            source_in = source == controller or source in body
            if source_in and (target == controller or target in body):
                return iteration
        return 0

    # ----------------------------------------------------------------- routing

    async def route(
        self,
        payload: JobPayload,
        graph: Graph,
        node_id: str,
        result: NodeResult,
        data: Mapping[str, Any],
        rescues: str | None = None,
    ) -> None:
        """Resolve every routing edge of ``node_id`` and fire or skip the targets.

        ``rescues`` names the primary a fallback completed for: the fallback routes along its
        own edges and that primary's (the in-memory rule, ``runtime._routing.routing_edges``).

        Raises:
            ExpressionError: A condition could not be evaluated (names the edge).
        """
        run_id, iteration = payload.run_id, payload.iteration
        spec = graph.nodes[node_id]
        edges = routing_edges(spec, rescues)
        if not edges:
            return

        bus = self.event_bus

        def passes(edge: EdgeDefinition) -> bool:
            passed = condition_holds(self.evaluator, edge, data, result)
            if bus is not None and edge.condition is not None:
                announce.condition(bus, run_id, payload.blueprint_id, node_id, edge, passed)
            return passed

        chosen = select_edges(edges, result, passes)
        work: list[tuple[str, int]] = []
        for index, edge in edges:
            target_iter = self.target_iteration(graph, edge.source, edge.target, iteration)
            if index in chosen:
                position = graph.out_edges[edge.source].index(index)
                await self.coordination.add_to_set(
                    self.keys.taken(run_id, edge.target, target_iter),
                    f"{edge.source}|{position}",
                    self.ttl,
                )
            elif spec.is_loop:
                # A controller comes back: the edges it did not take are not dead paths.
                continue
            await self.coordination.add_to_set(
                self.keys.resolved(run_id, edge.target, target_iter), edge.source, self.ttl
            )
            work.append((edge.target, target_iter))
        await self._settle(payload, graph, work)

    async def _settle(self, payload: JobPayload, graph: Graph, work: list[tuple[str, int]]) -> None:
        run_id = payload.run_id
        keys, store = self.keys, self.coordination
        while work:
            target, iteration = work.pop(0)
            spec = graph.nodes[target]
            resolved = await store.members(keys.resolved(run_id, target, iteration))
            taken = await store.members(keys.taken(run_id, target, iteration))
            if spec.is_loop:
                body = graph.loop_bodies[target]
                relevant = (
                    set(graph.loop_entries[target])
                    if iteration == 0
                    else {p for p in spec.preds if p in body}
                )
                if taken:
                    await self._fire(payload, target, iteration)
                elif relevant and relevant <= resolved:
                    await self._skip(payload, graph, target, iteration, work)
                continue
            if spec.join_any and taken:
                await self._fire(payload, target, iteration)
            elif set(spec.preds) <= resolved:
                if taken:
                    graph = await self._current_graph(payload, graph)
                    if not set(graph.nodes[target].preds) <= resolved:
                        continue
                    await self._fire(payload, target, iteration)
                else:
                    await self._skip(payload, graph, target, iteration, work)
            elif taken:
                member = job_id(target, iteration)
                await store.add_to_set(keys.pending(run_id), member, self.ttl)

    async def _current_graph(self, payload: JobPayload, graph: Graph) -> Graph:
        # A batch may have spliced workers in front of this join since the graph was loaded;
        # the splice is stored before its emitter routes, so a fresh read sees it.
        blueprint = self.blueprints[payload.blueprint_id]
        return await self.graph_of(payload.run_id, blueprint)

    def successor_payload(self, payload: JobPayload, target: str, iteration: int) -> JobPayload:
        """The job that runs ``target`` after the job ``payload`` routed to it."""
        return JobPayload(
            run_id=payload.run_id,
            blueprint_id=payload.blueprint_id,
            node_id=target,
            iteration=iteration,
            trace_context=payload.trace_context,
        )

    async def _fire(self, payload: JobPayload, target: str, iteration: int) -> None:
        job = self.successor_payload(payload, target, iteration)
        fence = self.keys.fire(payload.run_id, target, iteration)
        await self.enqueue_job(job, job_id(target, iteration), fence=fence)

    async def enqueue_job(
        self, job: JobPayload, member: str, *, fence: str | None = None, delay: float = 0.0
    ) -> bool:
        """Count ``job`` as in flight, then enqueue it unless ``fence`` was already taken."""
        await self.coordination.add_to_set(self.keys.enqueued(job.run_id), member, self.ttl)
        if fence is not None and not await self.coordination.set_if_not_exist(
            fence, "fired", self.ttl
        ):
            if await self.coordination.get(fence) == "skipped":
                # The target was skipped before (so no job of it will ever count itself
                # done): settle the count this call just raised.
                await self.job_done(job.run_id, member)
            return False
        await self._enqueue(job.to_json(), delay)
        bus = self.event_bus
        if bus is not None and bus.wants("job:enqueued"):
            bus.emit("job:enqueued", job.to_dict())
        return True

    async def _skip(
        self,
        payload: JobPayload,
        graph: Graph,
        node_id: str,
        iteration: int,
        work: list[tuple[str, int]],
    ) -> None:
        run_id = payload.run_id
        fence = self.keys.fire(run_id, node_id, iteration)
        if not await self.coordination.set_if_not_exist(fence, "skipped", self.ttl):
            return
        body = graph.loop_bodies.get(node_id, frozenset())
        for index in graph.out_edges[node_id]:
            edge = graph.edges[index]
            if edge.target in body:
                continue
            target_iter = self.target_iteration(graph, node_id, edge.target, iteration)
            await self.coordination.add_to_set(
                self.keys.resolved(run_id, edge.target, target_iter), node_id, self.ttl
            )
            work.append((edge.target, target_iter))
        await self.skip_unused_fallback(payload, graph, node_id, iteration, work)

    async def skip_unused_fallback(
        self,
        payload: JobPayload,
        graph: Graph,
        primary: str,
        iteration: int,
        work: list[tuple[str, int]],
    ) -> None:
        """Skip ``primary``'s fallback once none of its primaries can fail any more.

        As in memory, a fallback without incoming edges that never ran resolves its own
        outgoing edges as not taken when each of its primaries completed or was skipped.
        """
        fallback = graph.nodes[primary].fallback
        spec = graph.nodes.get(fallback) if fallback is not None else None
        if fallback is None or spec is None or graph.in_edges[fallback]:
            return
        if not spec.routing_edges and spec.fallback is None:
            return  # skipping it would change nothing
        run_id, store, keys = payload.run_id, self.coordination, self.keys
        for other in graph.primaries.get(fallback, ()):
            if await store.get(keys.fallback(run_id, other, iteration)) is not None:
                return  # it runs (or ran) for this one
            if await store.get(keys.result(run_id, other, iteration)) is not None:
                continue
            if await store.get(keys.fire(run_id, other, iteration)) != "skipped":
                return
        await self._skip(payload, graph, fallback, iteration, work)

    # ----------------------------------------------------------------- ending a run

    async def job_done(self, run_id: str, member: str) -> None:
        """Count a job's effects as stored; the job that empties the run's frontier ends it."""
        done = await self.coordination.add_to_set(self.keys.done(run_id), member, self.ttl)
        enqueued = await self.coordination.add_to_set(self.keys.enqueued(run_id), member, self.ttl)
        if done >= enqueued:
            await self._quiescent(run_id)

    async def _quiescent(self, run_id: str) -> None:
        _, (parked, pending) = await self.coordination.read(
            [], [self.keys.parked(run_id), self.keys.pending(run_id)]
        )
        if parked:
            from flowcraft.distributed._subflow import waits_for_human, wake_parent

            names = {m: parse_job_id(m)[0] for m in parked}
            details = await self.context.get_many(run_id, [AWAITING + n for n in names.values()])
            human = [
                m
                for m, n in names.items()
                if await waits_for_human(self, run_id, m, details.get(AWAITING + n) or {})
            ]
            if human:
                await self.context.set(run_id, STATUS, "awaiting")
                await self._publish_result(run_id, "awaiting")
                await self._after_run(run_id, "awaiting", [])
                await wake_parent(self, run_id)
            return
        fences, _ = await self.coordination.read(
            [self.keys.fire(run_id, *parse_job_id(member)[:2]) for member in pending], []
        )
        await self.publish_final(run_id, "stalled" if None in fences else "completed")

    async def publish_final(
        self, run_id: str, status: WorkflowStatus, errors: list[FlowcraftError] | None = None
    ) -> bool:
        """Write the run's final status unless one exists (the first terminal status wins)."""
        record = {"status": status, "errors": [e.to_dict() for e in errors or []]}
        won = await self.coordination.set_if_not_exist(
            self.keys.final(run_id), orjson.dumps(record).decode(), self.ttl
        )
        if not won:
            return False
        await self._publish_result(run_id, status, list(errors or []))
        bus = self.event_bus
        if bus is not None and bus.wants("workflow:finish"):
            bus.emit("workflow:finish", {"executionId": run_id, "status": status})
        await self._after_run(run_id, status, list(errors or []))
        await self.end_links(run_id)
        return True

    async def end_links(self, run_id: str) -> None:
        """Finish what a final result starts: cancel the run's subflow children, resume the
        node of its parent run, then drop the run from the unfinished-runs set.

        The run stays in that set until this is done, so a crash in between is repaired by
        :meth:`~flowcraft.distributed.BaseDistributedAdapter.reconcile`, which calls this again.
        """
        from flowcraft.distributed._subflow import end_links

        await end_links(self, run_id)
        await self.coordination.remove_from_set(self.keys.runs, run_id)

    async def _after_run(
        self, run_id: str, status: WorkflowStatus, errors: list[FlowcraftError]
    ) -> None:
        # Only with hooks: building the result reads the whole context.
        if not self.hooks:
            return
        meta = await self._meta(run_id)
        blueprint_id = meta[0] if meta else ""
        trace = await self.context.get(run_id, TRACE)
        info = RunInfo(
            run_id=run_id,
            blueprint_id=blueprint_id,
            blueprint=self.blueprints.get(blueprint_id),
            registry=self.registry,
            distributed=True,
            trace_context=dict(trace) if isinstance(trace, Mapping) else {},
        )
        result = await self._result(run_id, status, errors)
        await call_after_run(self.hooks, info, result)

    async def final_result(self, run_id: str) -> WorkflowResult | None:
        """The run's result if it is finished or awaiting, else None."""
        raw = await self.coordination.get(self.keys.final(run_id))
        if raw is not None:
            record = orjson.loads(raw)
            errors = [error_from_dict(e) for e in record.get("errors") or []]
            return await self._result(run_id, record["status"], errors)
        # Parked nodes first: a waiting client polls this, and reading the run's context
        # would keep it looking busy to a backend that detects stalls by its idle time.
        if await self.coordination.members(self.keys.parked(run_id)) and (
            await self.context.get(run_id, STATUS) == "awaiting"
        ):
            return await self._result(run_id, "awaiting", [])
        return None

    async def _result(
        self, run_id: str, status: WorkflowStatus, errors: list[FlowcraftError]
    ) -> WorkflowResult:
        raw = await self.context.to_dict(run_id)
        context = {k: v for k, v in raw.items() if not k.startswith(INTERNAL)}
        awaiting = {k[len(AWAITING) :]: v for k, v in raw.items() if k.startswith(AWAITING)}
        if status == "awaiting" and awaiting:
            context["_awaitingNodeIds"] = list(awaiting)
            context["_awaitingDetails"] = awaiting
        return WorkflowResult(
            status=status,
            context=context,
            serialized_context=JsonSerializer().dumps(context),
            errors=errors,
            run_id=run_id,
        )

    async def job_run_data(self, run_id: str, keys: list[str] | None) -> dict[str, Any]:
        """The context keys a job needs (``None``: all of them)."""
        if keys is None:
            return await self.context.to_dict(run_id)
        return await self.context.get_many(run_id, keys)

    def job_run(self, run_id: str, data: dict[str, Any]) -> JobRun:
        """The ``ctx._run`` shim for built-in nodes."""
        return JobRun(run_id, data, self.evaluator, self.event_bus, self.blueprints)

    @staticmethod
    def wake_time(details: Mapping[str, Any]) -> float:
        """Epoch seconds at which a sleeping node wakes."""
        from datetime import datetime

        try:
            return datetime.fromisoformat(str(details["wakeUpAt"])).timestamp()
        except (KeyError, ValueError):
            return time.time()


def _splice(graph: Graph, emitter: str, nodes: list[dict[str, Any]], gather: Any) -> None:
    # The same splice as the in-memory engine's Run._splice.
    for raw in nodes:
        preds = list(raw.get("predecessors") or [emitter])
        definition = NodeDefinition.model_validate(
            {k: v for k, v in raw.items() if k != "predecessors"}
        )
        graph.add_node(definition, preds)
        graph.dynamic.append((raw, []))
        if isinstance(gather, str) and gather in graph.nodes:
            graph.add_node(graph.nodes[gather].definition, [definition.id])


def error_from_dict(raw: Mapping[str, Any]) -> FlowcraftError:
    """A :class:`FlowcraftError` rebuilt from its ``to_dict()`` record."""
    # The stored record names the error's class: rebuild that type when the core defines it
    # (ExpressionError, NodeExecutionError, ...), so results are typed as in memory.
    name = raw.get("name")
    cls = getattr(_errors, name, None) if name in _errors.__all__ else None
    if not (isinstance(cls, type) and issubclass(cls, FlowcraftError)):
        cls = FlowcraftError
    error = cls.__new__(cls)
    FlowcraftError.__init__(
        error,
        str(raw.get("message")),
        node_id=raw.get("nodeId"),
        blueprint_id=raw.get("blueprintId"),
        run_id=raw.get("executionId"),
        is_fatal=bool(raw.get("isFatal")),
    )
    if isinstance(error, ExpressionError):
        error.expression = str(raw.get("expression") or "")
    if isinstance(error, BlueprintError):
        error.field = raw.get("field")
    return error
