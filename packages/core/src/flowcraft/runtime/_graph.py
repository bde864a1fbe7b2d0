"""A blueprint indexed once for execution: adjacency, joins, fallbacks and loop bodies."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flowcraft.blueprint import Blueprint, EdgeDefinition, NodeDefinition
from flowcraft.errors import BlueprintError, ExpressionError, FlowcraftError
from flowcraft.evaluator import Evaluator

__all__ = ["Expression", "Graph", "NodeSpec", "graph_for"]

LOOP_CONTROLLER = "loop-controller"


@dataclass(frozen=True, slots=True)
class Expression:
    """One expression of a blueprint the runtime will evaluate, and where it is."""

    text: str
    where: str
    node_id: str

    def error(self, exc: BaseException, blueprint_id: str) -> ExpressionError:
        """The typed error reporting that the evaluator rejected this expression."""
        reason = exc.message if isinstance(exc, FlowcraftError) else f"{type(exc).__name__}: {exc}"
        return ExpressionError(
            f"blueprint '{blueprint_id}': {self.where}: {reason}",
            expression=self.text,
            node_id=self.node_id,
            blueprint_id=blueprint_id,
        )


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
    rescue_routes: dict[str, tuple[tuple[int, EdgeDefinition], ...]] = field(default_factory=dict)
    unconditional: bool = True
    has_in_transform: bool = False
    prepared: tuple[Any, Any, Any] | None = None
    """(implementation, invoker, attempts) cached by the in-memory engine."""
    prefetch: tuple[list[str] | None] | None = None
    """(the context keys its input can need,) cached by distributed workers (static graph)."""


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
    expressions: list[Expression] = field(default_factory=list)
    checked_by: list[Evaluator] = field(default_factory=list)

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
            expressions=list(self.expressions),
            checked_by=list(self.checked_by),
        )

    def check_expressions(self, evaluator: Evaluator) -> None:
        """Have ``evaluator`` check every condition, transform and loop condition, once.

        Raises:
            ExpressionError: One is rejected; the message names the edge (``source -> target``)
                or the loop controller, and ``node_id`` is the edge's source or the controller.
        """
        if any(checked is evaluator for checked in self.checked_by):
            return
        # A custom evaluator without check() is trusted until it evaluates.
        check = getattr(evaluator, "check", None)
        if check is not None:
            for expression in self.expressions:
                try:
                    check(expression.text)
                except Exception as exc:
                    raise expression.error(exc, self.blueprint.id) from exc
        self.checked_by.append(evaluator)

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
        # A fallback routes along its primary's edges when it rescues it.
        fallback = self.nodes[edge.source].fallback
        if fallback is not None and fallback in self.nodes:
            self._refresh(fallback)

    def _refresh(self, node_id: str) -> None:
        spec = self.nodes[node_id]
        own = tuple((i, self.edges[i]) for i in self.out_edges[node_id])
        spec.routing_edges = own
        spec.unconditional = all(e.action is None and e.condition is None for _, e in own)
        # When it stands in for one primary, a fallback routes along its own edges and that
        # primary's — never along the edges of its other primaries.
        spec.rescue_routes = {
            primary: own + tuple((i, self.edges[i]) for i in self.out_edges[primary])
            for primary in self.primaries.get(node_id, ())
        }

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
        rescue_routes=spec.rescue_routes,
        unconditional=spec.unconditional,
        has_in_transform=spec.has_in_transform,
        prepared=spec.prepared,
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
    _index_loops(graph)
    graph.expressions = _expressions(blueprint)
    return graph


def _expressions(blueprint: Blueprint) -> list[Expression]:
    found: list[Expression] = []
    for index, edge in enumerate(blueprint.edges):
        where = f"edges[{index}] ({edge.source} -> {edge.target})"
        for kind, text in (("condition", edge.condition), ("transform", edge.transform)):
            if text is not None:
                found.append(Expression(text, f"{where} {kind}", edge.source))
    for node in blueprint.nodes:
        condition = (node.params or {}).get("condition")
        if node.uses == LOOP_CONTROLLER and isinstance(condition, str):
            found.append(Expression(condition, f"loop controller '{node.id}' condition", node.id))
    return found


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


def _index_loops(graph: Graph) -> None:
    """The body and entries of every loop controller.

    The body of controller ``c`` is what its ``continue`` edges lead to before coming back to
    ``c``: every node reachable from a continue target without passing through ``c``. Another
    controller ``d`` met on the way is *nested* in ``c`` when ``c`` cannot be reached from
    ``d``'s own continue targets (without passing through ``d``); then ``d``, its body and what
    follows its exit edges (up to ``c``) belong to ``c``'s body too, so that ``c``'s
    ``continue`` re-arms the whole inner loop. A controller that is not nested (an enclosing
    loop) ends the search.
    """
    controllers = [node_id for node_id, spec in graph.nodes.items() if spec.is_loop]
    continues: dict[str, list[str]] = {}
    for controller in controllers:
        targets = [
            graph.edges[i].target
            for i in graph.out_edges[controller]
            if graph.edges[i].action == "continue"
        ]
        if not targets:
            raise BlueprintError(
                f"blueprint '{graph.blueprint.id}': loop controller '{controller}' has no"
                " 'continue' edge to its first body node",
                node_id=controller,
                blueprint_id=graph.blueprint.id,
            )
        continues[controller] = targets
    reach = {c: _reachable(graph, continues[c], c, None) for c in controllers}
    for controller in controllers:
        nested = {
            other
            for other in controllers
            if other != controller and other in reach[controller] and controller not in reach[other]
        }
        body = _reachable(graph, continues[controller], controller, nested)
        graph.loop_bodies[controller] = frozenset(body)
        graph.loop_entries[controller] = frozenset(
            graph.edges[i].source
            for i in graph.in_edges[controller]
            if graph.edges[i].source not in body
        )


def _reachable(
    graph: Graph, starts: Iterable[str], stop: str, controllers: set[str] | None
) -> set[str]:
    # Nodes reachable from ``starts`` without passing through ``stop``, nor through a loop
    # controller outside ``controllers`` (``None``: through any).
    seen: set[str] = set()
    queue = deque(starts)
    while queue:
        current = queue.popleft()
        if current in seen or current == stop:
            continue
        if controllers is not None and graph.nodes[current].is_loop and current not in controllers:
            continue
        seen.add(current)
        queue.extend(graph.edges[i].target for i in graph.out_edges[current])
    return seen


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
