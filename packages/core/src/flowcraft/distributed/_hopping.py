"""The hop step's side of job handling: what a finished node changes, planned for the
backend's one-step :class:`~flowcraft.distributed.HopCommitter` (see ``_hop.py``), and the
pieces the generic path shares with it (the context writes a result makes, the data its
conditions see, the events of a finished node)."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import orjson

from flowcraft.blueprint import Blueprint, EdgeDefinition
from flowcraft.context import OUTPUTS
from flowcraft.distributed._execute import Outcome, Prefetch, announcer, prefetch_keys
from flowcraft.distributed._hop import ArrivalRead, Hop, HopTarget
from flowcraft.distributed._keys import DYNAMIC, PROGRESS
from flowcraft.distributed._operations import Operations
from flowcraft.distributed._payload import JobPayload, job_id
from flowcraft.distributed._protocols import Delivery
from flowcraft.distributed._splithop import SplitHop
from flowcraft.node import NodeResult, PatchOperation
from flowcraft.runtime import _announce as announce
from flowcraft.runtime._graph import Graph, NodeSpec, graph_for
from flowcraft.runtime._routing import condition_holds, routing_edges, select_edges

__all__ = ["HopSteps", "Job", "context_keys_of"]


class HopSteps(Operations):
    """Planning and committing hops in one step, over the operations layer."""

    def _arrival_read(
        self,
        blueprint: Blueprint,
        run_id: str,
        node_id: str,
        iteration: int,
        result_key: str,
        role: str,
    ) -> ArrivalRead:
        return ArrivalRead(
            keys=(self.keys.final(run_id), self.keys.meta(run_id), result_key),
            set_keys=(self.keys.dynamic(run_id), self.keys.taken(run_id, node_id, iteration)),
            context_keys=context_keys_of(blueprint, node_id, role),
        )

    def _finished(self, payload: JobPayload, outcome: Outcome, rescues: str | None) -> None:
        """``node:finish``, and ``context:change`` for the writes stored with the result."""
        bus = self.event_bus
        if bus is None:
            return
        result = outcome.result
        announce.node_finish(bus, payload.run_id, payload.blueprint_id, payload.node_id, result)
        changed = announcer(self, payload.run_id)
        if changed is not None:
            for op in self._effect_ops(payload, result, outcome.ops, rescues):
                changed(str(op["op"]), str(op["key"]), op.get("value"))

    async def _fast_hop(self, job: Job, outcome: Outcome, record: str) -> bool:
        """Finish the job in the backend's one atomic step, if it has one and the hop allows;
        whether it did (see ``_hop.py`` for which hops qualify)."""
        hops = self.hops
        if hops is None:
            return False
        payload, delivery = job.payload, job.delivery
        hop = await self._plan_hop(job, outcome, record, hops.reads_ahead)
        if hop is None:
            return False
        if isinstance(hops, SplitHop):
            # Its successors run before the commit returns: the node's events go first.
            finished = functools.partial(self._finished, payload, outcome, None)
            commit = await hops.commit(delivery, hop, finished)
            if commit.outcome == "slow":
                return False
        else:
            commit = await hops.commit(delivery, hop)
            if commit.outcome == "slow":
                return False
            # Before the run may end below: a node's events precede the run's finish.
            self._finished(payload, outcome, None)
        delivery.next = commit.next
        bus = self.event_bus
        if bus is not None and bus.wants("job:enqueued"):
            fired = set(commit.fired)
            for target in hop.targets:
                if target.member in fired:
                    bus.emit("job:enqueued", orjson.loads(target.body))
        if commit.outcome == "quiescent":
            await self.quiescent(payload.run_id)
        elif commit.outcome == "committed":
            delivery.settled = True
        return True

    async def _plan_hop(
        self, job: Job, outcome: Outcome, record: str, reads_ahead: bool
    ) -> Hop | None:
        payload, graph, spec = job.payload, job.graph, job.spec
        result = outcome.result
        if spec.is_loop or spec.fallback is not None or graph.dynamic or result.dynamic_nodes:
            return None
        run_id, node_id, iteration = payload.run_id, payload.node_id, payload.iteration
        ops = self._effect_ops(payload, result, outcome.ops, None)
        edges = routing_edges(spec, None)
        if edges:
            data = await self._routing_data(run_id, graph, node_id, result, None, ops)
            evaluated: list[EdgeDefinition] = []

            def passes(edge: EdgeDefinition) -> bool:
                if edge.condition is not None:
                    evaluated.append(edge)
                return condition_holds(self.evaluator, edge, data, result)

            if len(select_edges(edges, result, passes)) != len(edges):
                return None  # a dead path to eliminate: the generic path walks (and announces) it
            bus = self.event_bus
            if bus is not None:
                for edge in evaluated:
                    announce.condition(bus, run_id, payload.blueprint_id, node_id, edge, True)
        targets: list[HopTarget] = []
        for index, edge in edges:
            target = graph.nodes[edge.target]
            if target.is_loop:
                return None
            target_iter = self.target_iteration(graph, node_id, edge.target, iteration)
            position = graph.out_edges[node_id].index(index)
            successor = self.successor_payload(payload, edge.target, target_iter)
            reserve = job.follow and not targets
            arrival = None
            if reserve or reads_ahead:
                result_key = self.keys.result(run_id, edge.target, target_iter)
                arrival = self._arrival_read(
                    job.blueprint, run_id, edge.target, target_iter, result_key, ""
                )
            targets.append(
                HopTarget(
                    member=job_id(edge.target, target_iter),
                    fence=self.keys.fire(run_id, edge.target, target_iter),
                    resolved=self.keys.resolved(run_id, edge.target, target_iter),
                    taken=self.keys.taken(run_id, edge.target, target_iter),
                    source=node_id,
                    mark=f"{node_id}|{position}",
                    preds=() if target.join_any else tuple(target.preds),
                    body=successor.to_json(),
                    arrival=arrival,
                    reserve=reserve,
                )
            )
        return Hop(
            run_id=run_id,
            member=job_id(node_id, iteration),
            result_key=self.keys.result(run_id, node_id, iteration),
            result_record=record,
            context_ops=ops,
            targets=targets,
            enqueued=self.keys.enqueued(run_id),
            done=self.keys.done(run_id),
            pending=self.keys.pending(run_id),
            dynamic=self.keys.dynamic(run_id),
            ttl=self.ttl,
            follow=job.follow,
        )

    @staticmethod
    def _effect_ops(
        payload: JobPayload, result: NodeResult, ops: list[Any], rescues: str | None
    ) -> list[PatchOperation]:
        node_id = payload.node_id
        out: list[PatchOperation] = [
            *ops,
            {"op": "set", "key": OUTPUTS + node_id, "value": result.output},
            {"op": "set", "key": PROGRESS, "value": time.time()},
        ]
        if rescues is not None:
            out.append({"op": "set", "key": OUTPUTS + rescues, "value": result.output})
        if result.dynamic_nodes:
            gather = result.output.get("gatherNodeId") if isinstance(result.output, dict) else None
            splice = {"nodes": result.dynamic_nodes, "gather": gather}
            out.append({"op": "set", "key": DYNAMIC + node_id, "value": splice})
        return out

    async def _routing_data(
        self,
        run_id: str,
        graph: Graph,
        node_id: str,
        result: NodeResult,
        rescues: str | None,
        unstored: list[PatchOperation] | None = None,
    ) -> dict[str, Any]:
        # Conditions may read any key; without conditions routing needs no context at all.
        if any(e.condition for _, e in routing_edges(graph.nodes[node_id], rescues)):
            data = await self.context.to_dict(run_id)
            # Conditions see the node's own writes even before they are stored.
            for op in unstored or ():
                if op["op"] == "set":
                    data[op["key"]] = op.get("value")
                else:
                    data.pop(op["key"], None)
        else:
            data = {}
        data[OUTPUTS + node_id] = result.output
        return data


@dataclass(slots=True)  # not frozen, as the hop's classes (see _hop.py)
class Job:
    """One delivery being handled, with what was read about its run when it arrived."""

    delivery: Delivery
    payload: JobPayload
    blueprint: Blueprint
    graph: Graph
    spec: NodeSpec
    role: str
    member: str
    rescues: str | None
    result_key: str
    stored: str | None
    prefetch: Prefetch
    follow: bool
    """Whether the worker takes a successor the backend reserves for it (``Delivery.next``)."""


def context_keys_of(blueprint: Blueprint, node_id: str, role: str) -> list[str] | None:
    # What a job reads of the context when it arrives: its input's keys in the static graph.
    static = graph_for(blueprint).nodes.get(node_id)
    return prefetch_keys(static) if static is not None and not role else None
