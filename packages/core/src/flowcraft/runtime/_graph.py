"""A blueprint indexed once for execution: adjacency, joins, fallbacks and loop bodies."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flowcraft.blueprint import Blueprint, EdgeDefinition, NodeDefinition
from flowcraft.errors import BlueprintError

__all__ = ["Graph", "NodeSpec", "graph_for"]

LOOP_CONTROLLER = "loop-controller"


@dataclass(slots=True)
class NodeSpec:
    """Execution facts of one node, precomputed so the hot path does no lookups."""

    definition: NodeDefinition
    join_any: bool
    max_attempts: int
    retry_delay: float
    timeout: float | None
    fallback: str | None
    is_loop: bool
    preds: tuple[str, ...] = ()
    routing_edges: tuple[tuple[int, EdgeDefinition], ...] = ()
    has_in_transform: bool = False


@dataclass(slots=True)
class Graph:
    """The indexed graph of one blueprint (plus a run's dynamic nodes, in a private copy)."""

    blueprint: Blueprint
    nodes: dict[str, NodeSpec]
    edges: list[EdgeDefinition]
    out_edges: dict[str, list[int]]
    in_edges: dict[str, list[int]]
    start_nodes: list[str]
    primaries: dict[str, list[str]]
    loop_bodies: dict[str, frozenset[str]] = field(default_factory=dict)
    loop_entries: dict[str, frozenset[str]] = field(default_factory=dict)
    dynamic: list[tuple[dict[str, Any], list[str]]] = field(default_factory=list)

    def copy(self) -> Graph:
        """A private copy that may receive dynamic nodes."""
        return Graph(
            blueprint=self.blueprint,
            nodes={k: _copy_spec(v) for k, v in self.nodes.items()},
            edges=list(self.edges),
            out_edges={k: list(v) for k, v in self.out_edges.items()},
            in_edges={k: list(v) for k, v in self.in_edges.items()},
            start_nodes=list(self.start_nodes),
            primaries={k: list(v) for k, v in self.primaries.items()},
            loop_bodies=dict(self.loop_bodies),
            loop_entries=dict(self.loop_entries),
            dynamic=list(self.dynamic),
        )

    def add_node(self, definition: NodeDefinition, preds: Iterable[str]) -> None:
        """Splice a dynamic node after ``preds`` (each gets an unconditional edge to it)."""
        if definition.id not in self.nodes:
            self.nodes[definition.id] = _spec(definition)
            self.out_edges[definition.id] = []
            self.in_edges[definition.id] = []
        for pred in preds:
            self.add_edge(EdgeDefinition(source=pred, target=definition.id))

    def add_edge(self, edge: EdgeDefinition) -> None:
        """Add an edge unless one with the same ends and no action/condition exists."""
        for index in self.in_edges[edge.target]:
            if self.edges[index].source == edge.source:
                return
        self.edges.append(edge)
        index = len(self.edges) - 1
        self.out_edges[edge.source].append(index)
        self.in_edges[edge.target].append(index)
        self._refresh(edge.source)
        self._refresh_target(edge.target)
        for primary in self.primaries.get(edge.source, ()):
            self._refresh(primary)

    def _refresh(self, node_id: str) -> None:
        spec = self.nodes[node_id]
        own = [(i, self.edges[i]) for i in self.out_edges[node_id]]
        inherited: list[tuple[int, EdgeDefinition]] = []
        for primary in self.primaries.get(node_id, ()):
            inherited.extend((i, self.edges[i]) for i in self.out_edges[primary])
        spec.routing_edges = tuple(own + inherited)

    def _refresh_target(self, node_id: str) -> None:
        spec = self.nodes[node_id]
        sources = dict.fromkeys(self.edges[i].source for i in self.in_edges[node_id])
        spec.preds = tuple(sources)
        spec.has_in_transform = any(
            self.edges[i].transform is not None for i in self.in_edges[node_id]
        )


def _copy_spec(spec: NodeSpec) -> NodeSpec:
    return NodeSpec(
        definition=spec.definition,
        join_any=spec.join_any,
        max_attempts=spec.max_attempts,
        retry_delay=spec.retry_delay,
        timeout=spec.timeout,
        fallback=spec.fallback,
        is_loop=spec.is_loop,
        preds=spec.preds,
        routing_edges=spec.routing_edges,
        has_in_transform=spec.has_in_transform,
    )


def _spec(node: NodeDefinition) -> NodeSpec:
    config = node.config
    attempts = 1
    delay = 0.0
    timeout = None
    fallback = None
    if config is not None:
        attempts = max(1, config.max_retries or 1)
        delay = (config.retry_delay or 0.0) / 1000.0
        timeout = None if config.timeout is None else config.timeout / 1000.0
        fallback = config.fallback
    return NodeSpec(
        definition=node,
        join_any=node.join_strategy == "any",
        max_attempts=attempts,
        retry_delay=delay,
        timeout=timeout,
        fallback=fallback,
        is_loop=node.uses == LOOP_CONTROLLER,
    )


def _build(blueprint: Blueprint) -> Graph:
    blueprint.check()
    nodes = {n.id: _spec(n) for n in blueprint.nodes}
    edges = list(blueprint.edges)
    out_edges: dict[str, list[int]] = {n: [] for n in nodes}
    in_edges: dict[str, list[int]] = {n: [] for n in nodes}
    for index, edge in enumerate(edges):
        out_edges[edge.source].append(index)
        in_edges[edge.target].append(index)
    primaries: dict[str, list[str]] = {}
    for node_id, spec in nodes.items():
        if spec.fallback is not None:
            if spec.fallback == node_id:
                raise BlueprintError(
                    f"blueprint '{blueprint.id}': node '{node_id}' names itself as its fallback",
                    node_id=node_id,
                    blueprint_id=blueprint.id,
                )
            primaries.setdefault(spec.fallback, []).append(node_id)
    graph = Graph(
        blueprint=blueprint,
        nodes=nodes,
        edges=edges,
        out_edges=out_edges,
        in_edges=in_edges,
        start_nodes=[],
        primaries=primaries,
    )
    for node_id in nodes:
        graph._refresh(node_id)
        graph._refresh_target(node_id)
    graph.start_nodes = [
        n for n in nodes if not in_edges[n] and n not in primaries
    ] or _cycle_entries(graph)
    for node_id, spec in nodes.items():
        if spec.is_loop:
            _index_loop(graph, node_id)
    return graph


def _cycle_entries(graph: Graph) -> list[str]:
    # A graph without start nodes is all cycles: enter each strongly connected region once,
    # preferring the ids listed in metadata.cycleEntryPoints.
    metadata = graph.blueprint.metadata
    preferred = list(metadata.cycle_entry_points or []) if metadata else []
    entries: list[str] = []
    covered: set[str] = set()
    for node_id in [p for p in preferred if p in graph.nodes] + list(graph.nodes):
        if node_id in covered or node_id in graph.primaries:
            continue
        entries.append(node_id)
        queue = deque([node_id])
        while queue:
            current = queue.popleft()
            if current in covered:
                continue
            covered.add(current)
            queue.extend(graph.edges[i].target for i in graph.out_edges[current])
    return entries


def _index_loop(graph: Graph, controller: str) -> None:
    continue_targets = [
        graph.edges[i].target
        for i in graph.out_edges[controller]
        if graph.edges[i].action == "continue"
    ]
    if not continue_targets:
        raise BlueprintError(
            f"blueprint '{graph.blueprint.id}': loop controller '{controller}' has no"
            " 'continue' edge to its first body node",
            node_id=controller,
            blueprint_id=graph.blueprint.id,
        )
    body: set[str] = set()
    queue = deque(continue_targets)
    while queue:
        current = queue.popleft()
        if current in body or current == controller or graph.nodes[current].is_loop:
            continue
        body.add(current)
        queue.extend(graph.edges[i].target for i in graph.out_edges[current])
    graph.loop_bodies[controller] = frozenset(body)
    graph.loop_entries[controller] = frozenset(
        graph.edges[i].source
        for i in graph.in_edges[controller]
        if graph.edges[i].source not in body
    )


_CACHE: OrderedDict[int, tuple[Blueprint, Graph]] = OrderedDict()
_CACHE_SIZE = 256


def graph_for(blueprint: Blueprint) -> Graph:
    """The indexed graph of ``blueprint``, built once and cached per blueprint object.

    Raises:
        BlueprintError: The blueprint's references are inconsistent.
    """
    key = id(blueprint)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is blueprint:
        _CACHE.move_to_end(key)
        return hit[1]
    graph = _build(blueprint)
    _CACHE[key] = (blueprint, graph)
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return graph
