"""Routing, joins and dead paths of distributed runs.

The rules are those of the in-memory engine (and use its helpers in ``runtime/_routing.py``),
restated over the coordination store:

* a node marks each routing edge *resolved* for its target (set membership keyed by run, target,
  iteration and source, never a counter) and, if taken, also *taken*;
* a target fires when every predecessor resolved and one edge was taken (``all``) or on the
  first taken edge (``any``); with none taken it is skipped, which resolves its own edges; a
  per-target-and-iteration fence makes firing and skipping happen once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowcraft.blueprint import EdgeDefinition
from flowcraft.distributed._payload import JobPayload, job_id, member_of
from flowcraft.distributed._runs import Runs
from flowcraft.node import NodeResult
from flowcraft.runtime import _announce as announce
from flowcraft.runtime._graph import Graph
from flowcraft.runtime._routing import condition_holds, routing_edges, select_edges

__all__ = ["LEVEL", "Routing"]

_BITS = 20
LEVEL = 1 << _BITS
"""Iterations one loop counts before its digit would spill into the next nesting level's."""


class Routing(Runs):
    """Routing over the run ledger (see the module docstring for the rules)."""

    @staticmethod
    def target_iteration(graph: Graph, source: str, target: str, iteration: int) -> int:
        """The iteration of ``target`` reached from ``source`` in ``iteration``.

        An iteration is the path of the loops around a node, one counter per nesting level:
        the outermost loop's counter in the lowest digit of base ``LEVEL``, each inner loop's
        one digit higher. A controller's edge into its body counts its own digit up; an edge
        leaving loops drops their digits (it goes back to the iteration of the loop around
        it, 0 outside every loop); every other edge keeps the path. So a join in an outer
        loop's body sees its branches at the same iteration whether or not one of them went
        through an inner loop. A graph without nested loops counts 0, 1, 2, ... as before.
        """
        bodies = graph.loop_bodies
        if source in bodies and target in bodies[source]:
            return iteration + _unit(_depth(graph, source))
        left = [
            controller
            for controller, body in bodies.items()
            if (source == controller or source in body)
            and not (target == controller or target in body)
        ]
        if left:
            return iteration % _unit(min(_depth(graph, c) for c in left))
        return iteration

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
        await self.settle(payload, graph, work)

    async def settle(self, payload: JobPayload, graph: Graph, work: list[tuple[str, int]]) -> None:
        run_id = payload.run_id
        keys, store = self.keys, self.coordination
        # A job re-fires a target whose fence it holds (a redelivery), so one that reaches a
        # target twice here (two edges into it) must fire it once.
        fired: set[tuple[str, int]] = set()
        while work:
            target, iteration = work.pop(0)
            if (target, iteration) in fired:
                continue
            spec = graph.nodes[target]
            resolved = await store.members(keys.resolved(run_id, target, iteration))
            taken = await store.members(keys.taken(run_id, target, iteration))
            if spec.is_loop:
                body = graph.loop_bodies[target]
                relevant = (
                    set(graph.loop_entries[target])
                    if _count(graph, target, iteration) == 0
                    else {p for p in spec.preds if p in body}
                )
                if taken:
                    fired.add((target, iteration))
                    await self._fire(payload, target, iteration)
                elif relevant and relevant <= resolved:
                    await self._skip(payload, graph, target, iteration, work)
                continue
            if spec.join_any and taken:
                fired.add((target, iteration))
                await self._fire(payload, target, iteration)
            elif set(spec.preds) <= resolved:
                if taken:
                    graph = await self._current_graph(payload, graph)
                    if not set(graph.nodes[target].preds) <= resolved:
                        continue
                    fired.add((target, iteration))
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
        await self.enqueue_job(job, job_id(target, iteration), fence=fence, by=member_of(payload))

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


def _depth(graph: Graph, controller: str) -> int:
    """1 for an outermost loop, one more for each loop around ``controller``."""
    return 1 + sum(
        1 for other, body in graph.loop_bodies.items() if other != controller and controller in body
    )


def _count(graph: Graph, controller: str, iteration: int) -> int:
    """The counter of ``controller``'s loop in ``iteration``: 0 while entering it."""
    return (iteration // _unit(_depth(graph, controller))) % LEVEL


def _unit(depth: int) -> int:
    """One iteration of a loop at nesting ``depth`` (1: outermost)."""
    return 1 << (_BITS * (depth - 1))
