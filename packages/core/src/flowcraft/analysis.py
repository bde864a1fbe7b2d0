"""Static analysis of blueprints: graph structure, a linter and Mermaid diagrams.

Everything here is iterative (no recursion), so graphs with tens of thousands of nodes work.
Functions accept a :class:`~flowcraft.blueprint.Blueprint` or a raw mapping; a raw mapping is
validated for shape only, so that reference problems (duplicate ids, dangling edges) can be
reported by :func:`lint_blueprint` instead of raised.
"""

from __future__ import annotations

import heapq
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from flowcraft.blueprint import Blueprint, EdgeDefinition, NodeDefinition, load_blueprint
from flowcraft.errors import BlueprintError, ExpressionError

__all__ = [
    "BUILTIN_USES_KEYS",
    "BlueprintAnalysis",
    "LintCode",
    "LintIssue",
    "LintResult",
    "Severity",
    "analyze_blueprint",
    "lint_blueprint",
    "to_mermaid",
]

BUILTIN_USES_KEYS: frozenset[str] = frozenset(
    {"wait", "sleep", "webhook", "subflow", "batch-scatter", "batch-gather", "loop-controller"}
)
"""Uses keys the runtime always provides; the linter never reports them as missing."""

Severity = Literal["error", "warning"]
LintCode = Literal[
    "DUPLICATE_NODE_ID",
    "INVALID_EDGE_SOURCE",
    "INVALID_EDGE_TARGET",
    "INVALID_FALLBACK",
    "MISSING_NODE_IMPLEMENTATION",
    "INVALID_BATCH_WORKER_KEY",
    "INVALID_SUBFLOW_BLUEPRINT_ID",
    "INVALID_EXPRESSION",
    "ORPHAN_NODE",
    "EXITLESS_LOOP",
    "UNSATISFIABLE_JOIN",
]

_WARNINGS: frozenset[str] = frozenset({"EXITLESS_LOOP", "UNSATISFIABLE_JOIN"})


def _coerce(blueprint: Blueprint | Mapping[str, Any]) -> Blueprint:
    if isinstance(blueprint, Blueprint):
        return blueprint
    try:
        # Shape only: Blueprint.check() would raise on the very problems the linter reports.
        return Blueprint.model_validate(dict(blueprint))
    except ValidationError:
        # load_blueprint fails the same way and words the error with the bad node's id.
        load_blueprint(blueprint)
        raise BlueprintError("invalid blueprint") from None


class _Graph:
    """Adjacency over unique node ids (first definition wins) and edges whose ends both exist."""

    def __init__(self, blueprint: Blueprint) -> None:
        self.nodes: dict[str, NodeDefinition] = {}
        for node in blueprint.nodes:
            self.nodes.setdefault(node.id, node)
        self.ids = list(self.nodes)
        self.index = {node_id: i for i, node_id in enumerate(self.ids)}
        self.outgoing: dict[str, list[EdgeDefinition]] = {node_id: [] for node_id in self.ids}
        self.incoming: dict[str, list[EdgeDefinition]] = {node_id: [] for node_id in self.ids}
        for edge in blueprint.edges:
            if edge.source in self.nodes and edge.target in self.nodes:
                self.outgoing[edge.source].append(edge)
                self.incoming[edge.target].append(edge)
        self.successors = {n: [e.target for e in edges] for n, edges in self.outgoing.items()}
        self.fallbacks: dict[str, str] = {}
        for node_id, node in self.nodes.items():
            fallback = node.config.fallback if node.config else None
            if fallback is not None and fallback != node_id and fallback in self.nodes:
                self.fallbacks[node_id] = fallback


@dataclass(frozen=True, slots=True)
class BlueprintAnalysis:
    """The structure of a blueprint.

    Attributes:
        cycles: Node-id paths closed by repeating their first node (``["a", "b", "a"]``); one per
            back edge found by a depth-first search in blueprint order.
        start_node_ids: Nodes without incoming edges, in blueprint order, excluding nodes named as
            another node's ``config.fallback`` (the runtime never starts those on their own).
        terminal_node_ids: Nodes without outgoing edges, in blueprint order.
        node_count: Number of node definitions.
        edge_count: Number of edge definitions.
        is_dag: Whether there are no cycles.
        topological_order: Every node once, each after all its predecessors, preferring blueprint
            order; ``None`` when the graph has a cycle.
    """

    cycles: list[list[str]]
    start_node_ids: list[str]
    terminal_node_ids: list[str]
    node_count: int
    edge_count: int
    is_dag: bool
    topological_order: list[str] | None


def _find_cycles(graph: _Graph) -> list[list[str]]:
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph.ids, white)
    cycles: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for root in graph.ids:
        if colour[root] != white:
            continue
        colour[root] = grey
        path = [root]
        position = {root: 0}
        stack = [(root, 0)]
        while stack:
            node, next_child = stack[-1]
            children = graph.successors[node]
            if next_child == len(children):
                stack.pop()
                path.pop()
                del position[node]
                colour[node] = black
                continue
            stack[-1] = (node, next_child + 1)
            child = children[next_child]
            if colour[child] == grey:
                cycle = (*path[position[child] :], child)
                # Parallel edges would report the same cycle twice.
                if cycle not in seen:
                    seen.add(cycle)
                    cycles.append(list(cycle))
            elif colour[child] == white:
                colour[child] = grey
                position[child] = len(path)
                path.append(child)
                stack.append((child, 0))
    return cycles


def _topological_order(graph: _Graph) -> list[str] | None:
    indegree = {node_id: len(edges) for node_id, edges in graph.incoming.items()}
    # A heap of blueprint positions keeps the order stable: an ordered blueprint comes back as is.
    ready = [graph.index[node_id] for node_id in graph.ids if indegree[node_id] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        node_id = graph.ids[heapq.heappop(ready)]
        order.append(node_id)
        for child in graph.successors[node_id]:
            indegree[child] -= 1
            if indegree[child] == 0:
                heapq.heappush(ready, graph.index[child])
    return order if len(order) == len(graph.ids) else None


def _analyze(blueprint: Blueprint, graph: _Graph) -> BlueprintAnalysis:
    cycles = _find_cycles(graph)
    fallback_ids = set(graph.fallbacks.values())
    return BlueprintAnalysis(
        cycles=cycles,
        start_node_ids=[n for n in graph.ids if not graph.incoming[n] and n not in fallback_ids],
        terminal_node_ids=[n for n in graph.ids if not graph.successors[n]],
        node_count=len(blueprint.nodes),
        edge_count=len(blueprint.edges),
        is_dag=not cycles,
        topological_order=None if cycles else _topological_order(graph),
    )


def analyze_blueprint(blueprint: Blueprint | Mapping[str, Any]) -> BlueprintAnalysis:
    """Describe a blueprint's graph: cycles, start and terminal nodes, a topological order.

    Edges naming a missing node are counted in ``edge_count`` but otherwise ignored; a repeated
    node id counts once (its first definition).

    Args:
        blueprint: A blueprint or its JSON mapping.

    Returns:
        The analysis.

    Raises:
        BlueprintError: A raw mapping does not have the shape of a blueprint.
    """
    bp = _coerce(blueprint)
    return _analyze(bp, _Graph(bp))


@dataclass(frozen=True, slots=True)
class LintIssue:
    """One problem found by :func:`lint_blueprint`.

    Attributes:
        code: What kind of problem (``"ORPHAN_NODE"``, ...).
        message: A sentence naming the node, edge or key concerned.
        node_id: The node concerned, if any.
        related_id: A second node involved (the other end of an edge, a fallback, a source).
        severity: ``"error"`` makes the blueprint invalid; ``"warning"`` does not.
    """

    code: LintCode
    message: str
    node_id: str | None = None
    related_id: str | None = None
    severity: Severity = "error"

    def to_dict(self) -> dict[str, Any]:
        """The camelCase JSON shape of the TypeScript linter's issue, plus ``severity``."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.node_id is not None:
            out["nodeId"] = self.node_id
        if self.related_id is not None:
            out["relatedId"] = self.related_id
        out["severity"] = self.severity
        return out


@dataclass(frozen=True, slots=True)
class LintResult:
    """The linter's verdict: ``is_valid`` is false iff some issue is an error."""

    is_valid: bool
    issues: list[LintIssue] = field(default_factory=list)

    @property
    def errors(self) -> list[LintIssue]:
        """The issues of severity ``"error"``."""
        return [issue for issue in self.issues if issue.severity == "error"]

    @property
    def warnings(self) -> list[LintIssue]:
        """The issues of severity ``"warning"``."""
        return [issue for issue in self.issues if issue.severity == "warning"]


def _issue(
    code: LintCode, message: str, node_id: str | None = None, related_id: str | None = None
) -> LintIssue:
    severity: Severity = "warning" if code in _WARNINGS else "error"
    return LintIssue(code, message, node_id, related_id, severity)


def _lint_references(bp: Blueprint, graph: _Graph) -> Iterable[LintIssue]:
    first_index: dict[str, int] = {}
    for index, node in enumerate(bp.nodes):
        if node.id in first_index:
            yield _issue(
                "DUPLICATE_NODE_ID",
                f"nodes[{index}] repeats the id '{node.id}' of nodes[{first_index[node.id]}]",
                node.id,
            )
        else:
            first_index[node.id] = index
    for index, edge in enumerate(bp.edges):
        for end, other, kind in (
            (edge.source, edge.target, "source"),
            (edge.target, edge.source, "target"),
        ):
            if end not in graph.nodes:
                code: LintCode = (
                    "INVALID_EDGE_SOURCE" if kind == "source" else "INVALID_EDGE_TARGET"
                )
                where = f"edges[{index}] ({edge.source} -> {edge.target})"
                yield _issue(code, f"{where}: {kind} '{end}' is not a node", end, other)
    for node in bp.nodes:
        fallback = node.config.fallback if node.config else None
        if fallback is None:
            continue
        if fallback == node.id:
            yield _issue(
                "INVALID_FALLBACK", f"node '{node.id}' names itself as fallback", node.id, fallback
            )
        elif fallback not in graph.index:
            yield _issue(
                "INVALID_FALLBACK",
                f"node '{node.id}' names fallback '{fallback}', which is not a node",
                node.id,
                fallback,
            )


def _lint_implementations(
    bp: Blueprint, registry: Mapping[str, Any] | None, blueprints: Mapping[str, Any] | None
) -> Iterable[LintIssue]:
    for node in bp.nodes:
        params = node.params or {}
        if registry is not None:
            if node.uses not in registry and node.uses not in BUILTIN_USES_KEYS:
                yield _issue(
                    "MISSING_NODE_IMPLEMENTATION",
                    f"node '{node.id}' uses '{node.uses}', which is not registered",
                    node.id,
                )
            worker = params.get("workerUsesKey")
            if node.uses == "batch-scatter" and (
                not isinstance(worker, str)
                or (worker not in registry and worker not in BUILTIN_USES_KEYS)
            ):
                yield _issue(
                    "INVALID_BATCH_WORKER_KEY",
                    f"batch node '{node.id}' has workerUsesKey {worker!r}, which is not registered",
                    node.id,
                )
        if blueprints is not None and node.uses == "subflow":
            child = params.get("blueprintId")
            if not isinstance(child, str) or child not in blueprints:
                yield _issue(
                    "INVALID_SUBFLOW_BLUEPRINT_ID",
                    f"subflow node '{node.id}' has blueprintId {child!r}, which is not a known"
                    " blueprint",
                    node.id,
                )


def _lint_expressions(bp: Blueprint) -> Iterable[LintIssue]:
    try:
        from flowcraft.evaluator import SafeEvaluator
    except ImportError:  # pragma: no cover - the evaluator ships with the core package
        return
    evaluator = SafeEvaluator()
    # (expression, where, node_id, related_id) for every expression the runtime will evaluate.
    checks: list[tuple[Any, str, str, str | None]] = []
    for index, edge in enumerate(bp.edges):
        where = f"edges[{index}] ({edge.source} -> {edge.target})"
        for kind, text in (("condition", edge.condition), ("transform", edge.transform)):
            if text is not None:
                checks.append((text, f"{where} {kind}", edge.source, edge.target))
    for node in bp.nodes:
        if node.uses == "loop-controller":
            condition = (node.params or {}).get("condition")
            checks.append((condition, f"loop controller '{node.id}' condition", node.id, None))
    for expression, where, node_id, related_id in checks:
        if not isinstance(expression, str):
            yield _issue("INVALID_EXPRESSION", f"{where} is missing", node_id, related_id)
            continue
        try:
            evaluator.check(expression)
        except ExpressionError as exc:
            yield _issue("INVALID_EXPRESSION", f"{where}: {exc.message}", node_id, related_id)


def _roots(bp: Blueprint, graph: _Graph, analysis: BlueprintAnalysis) -> list[str]:
    roots = list(analysis.start_node_ids)
    entry_points = (bp.metadata.cycle_entry_points if bp.metadata else None) or []
    roots += [node_id for node_id in entry_points if node_id in graph.index]
    if not analysis.start_node_ids:
        # With no start node the runtime enters each cycle at its first node.
        roots += [cycle[0] for cycle in analysis.cycles]
    return roots


def _lint_reachability(graph: _Graph, roots: list[str]) -> list[str]:
    if len(graph.ids) <= 1:
        return []
    reached = set(roots)
    pending = list(roots)
    while pending:
        node_id = pending.pop()
        # A fallback runs whenever its primary can run (and fails), so it is reachable through it.
        nexts = list(graph.successors[node_id])
        if node_id in graph.fallbacks:
            nexts.append(graph.fallbacks[node_id])
        for child in nexts:
            if child not in reached:
                reached.add(child)
                pending.append(child)
    return [node_id for node_id in graph.ids if node_id not in reached]


def _lint_flow(graph: _Graph, roots: list[str], orphans: set[str]) -> Iterable[LintIssue]:
    for node_id, node in graph.nodes.items():
        # Any outgoing edge without the "continue" action is taken on "break" (or by default).
        if node.uses == "loop-controller" and all(
            edge.action == "continue" for edge in graph.outgoing[node_id]
        ):
            yield _issue(
                "EXITLESS_LOOP",
                f"loop controller '{node_id}' has no exit edge besides 'continue'; when its"
                " condition turns false the run ends there",
                node_id,
            )
    yield from _lint_joins(graph, roots, orphans)


def _is_all_join(node: NodeDefinition) -> bool:
    # A loop controller runs on any taken edge, whatever its joinStrategy says.
    return node.join_strategy == "all" and node.uses != "loop-controller"


def _lint_joins(graph: _Graph, roots: list[str], orphans: set[str]) -> Iterable[LintIssue]:
    """``UNSATISFIABLE_JOIN``: an ``all`` join that waits for a predecessor which cannot
    resolve before the join itself has run.

    The runtime resolves a node (runs or skips it) once every predecessor has resolved
    (``all``), on its first taken edge (``any`` and loop controllers), or, for a fallback, with
    a primary; dead-path elimination resolves untaken branches, so exclusive actions or
    conditions never block a join. Assuming every edge may be taken, the nodes that can
    resolve are the least fixpoint of those rules from the start nodes. A reachable ``all``
    join outside it that lies on a cycle with one of its unresolved predecessors waits for
    itself.
    """
    preds = {n: list(dict.fromkeys(e.source for e in graph.incoming[n])) for n in graph.ids}
    waiting = {n: len(preds[n]) for n in graph.ids}
    resolved = set(roots)
    pending = list(resolved)
    while pending:
        node_id = pending.pop()
        for child in dict.fromkeys(graph.successors[node_id]):
            if child in resolved:
                continue
            if _is_all_join(graph.nodes[child]):
                waiting[child] -= 1
                if waiting[child] > 0:
                    continue
            resolved.add(child)
            pending.append(child)
        fallback = graph.fallbacks.get(node_id)
        if fallback is not None and fallback not in resolved:
            resolved.add(fallback)
            pending.append(fallback)
    stuck = {n for n in graph.ids if n not in resolved}
    if not stuck:
        return
    component = _components(graph, stuck)
    for node_id in graph.ids:
        if node_id not in stuck or node_id in orphans or not _is_all_join(graph.nodes[node_id]):
            continue
        blocker = next(
            (p for p in preds[node_id] if p in stuck and component[p] == component[node_id]),
            None,
        )
        if blocker is not None and len(preds[node_id]) > 1:
            yield _issue(
                "UNSATISFIABLE_JOIN",
                f"node '{node_id}' joins (all) on '{blocker}', which can only run after"
                f" '{node_id}' itself, so the join never runs (enter the cycle through a loop"
                " controller, or make the join 'any')",
                node_id,
                blocker,
            )


def _components(graph: _Graph, members: set[str]) -> dict[str, int]:
    """Strongly connected components of the subgraph induced by ``members``: node id ->
    component number (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    component: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = 0
    for root in graph.ids:
        if root not in members or root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, 0)]
        while work:
            node_id, next_child = work[-1]
            children = graph.successors[node_id]
            if next_child < len(children):
                work[-1] = (node_id, next_child + 1)
                child = children[next_child]
                if child not in members:
                    continue
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, 0))
                elif child in on_stack:
                    low[node_id] = min(low[node_id], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node_id])
            if low[node_id] == index[node_id]:
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component[member] = components
                    if member == node_id:
                        break
                components += 1
    return component


def lint_blueprint(
    blueprint: Blueprint | Mapping[str, Any],
    registry: Mapping[str, Any] | None = None,
    blueprints: Mapping[str, Any] | None = None,
) -> LintResult:
    """Find problems in a blueprint without running it.

    Errors: ``DUPLICATE_NODE_ID``, ``INVALID_EDGE_SOURCE``/``INVALID_EDGE_TARGET`` (``node_id`` is
    the dangling end), ``INVALID_FALLBACK`` (missing or self), ``MISSING_NODE_IMPLEMENTATION`` and
    ``INVALID_BATCH_WORKER_KEY`` (built-in keys such as ``wait`` always count as registered),
    ``INVALID_SUBFLOW_BLUEPRINT_ID``, ``INVALID_EXPRESSION`` (rejected by the safe evaluator) and
    ``ORPHAN_NODE`` (with two or more nodes, one that no start node, cycle entry point or
    fallback leads to). Warnings: ``EXITLESS_LOOP`` (a loop controller with only ``continue``
    edges) and ``UNSATISFIABLE_JOIN``.

    ``UNSATISFIABLE_JOIN`` follows the runtime's join semantics (dead-path elimination): an
    ``all`` join runs once every predecessor has resolved (completed or been skipped) and one
    of its edges was taken, so edges that exclude each other (distinct actions of one source,
    conditions, exclusive branches) never block it. The warning is given only for a join that
    can *never* resolve: it waits for a predecessor that can only run after the join itself
    (a cycle not entered through a loop controller, such as a loop entered at its first body
    node instead of its controller). Data-dependent outcomes (a join whose edges all go
    untaken is skipped) are not reported.

    Args:
        blueprint: A blueprint or its raw mapping, which may hold the reference errors that
            :meth:`Blueprint.check` raises on; they are reported as issues instead.
        registry: Uses key → implementation; ``None`` skips the implementation checks.
        blueprints: Blueprint id → blueprint; ``None`` skips the subflow check.

    Returns:
        The issues in check order; ``is_valid`` is false iff one is an error.

    Raises:
        BlueprintError: A raw mapping does not have the shape of a blueprint.
    """
    bp = _coerce(blueprint)
    graph = _Graph(bp)
    analysis = _analyze(bp, graph)
    issues = [
        *_lint_references(bp, graph),
        *_lint_implementations(bp, registry, blueprints),
        *_lint_expressions(bp),
    ]
    roots = _roots(bp, graph, analysis)
    orphans = _lint_reachability(graph, roots)
    issues += [
        _issue("ORPHAN_NODE", f"node '{node_id}' is not reachable from any start node", node_id)
        for node_id in orphans
    ]
    issues += _lint_flow(graph, roots, set(orphans))
    return LintResult(is_valid=all(issue.severity != "error" for issue in issues), issues=issues)


_SAFE_MERMAID_ID = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# Words the flowchart grammar reads as keywords; as bare node ids they break the diagram.
_MERMAID_KEYWORD = re.compile(
    "end|graph|flowchart|subgraph|direction|style|class|classdef|click|linkstyle|call|href"
    "|default|interpolate|acctitle|accdescr",
    re.IGNORECASE,
)
# Mermaid decodes "#name;" / "#code;" entities inside quoted labels; translate() is single-pass,
# so the '#' of an inserted entity is never escaped again.
_LABEL_ESCAPES = str.maketrans(
    {c: f"#{ord(c)};" for c in "#&<>`"} | {'"': "#quot;", "\n": "<br/>", "\r": ""}
)
_STATE_STYLES: dict[str, str] = {
    "completed": "fill:#d4edda,stroke:#28a745,color:#155724",
    "failed": "fill:#f8d7da,stroke:#dc3545,color:#721c24",
    "skipped": "fill:#e2e3e5,stroke:#6c757d,color:#383d41,stroke-dasharray:5 5",
    "running": "fill:#cce5ff,stroke:#007bff,color:#004085",
    "awaiting": "fill:#fff3cd,stroke:#ffc107,color:#856404",
}


def _escape_label(text: str) -> str:
    return text.translate(_LABEL_ESCAPES)


def _mermaid_ids(ids: Iterable[str]) -> dict[str, str]:
    unique = list(dict.fromkeys(ids))
    safe = {
        i for i in unique if _SAFE_MERMAID_ID.fullmatch(i) and not _MERMAID_KEYWORD.fullmatch(i)
    }
    names: dict[str, str] = {}
    counter = 0
    for node_id in unique:
        if node_id in safe:
            names[node_id] = node_id
            continue
        while f"n{counter}" in safe:
            counter += 1
        names[node_id] = f"n{counter}"
        counter += 1
    return names


def to_mermaid(
    blueprint: Blueprint | Mapping[str, Any], *, node_states: Mapping[str, str] | None = None
) -> str:
    """Render a blueprint as a Mermaid ``flowchart TD``.

    Node ids that are not plain identifiers (or are Mermaid keywords such as ``end``) are drawn
    as ``n0``, ``n1``, ...; every label shows the real id. Labels are escaped with Mermaid
    entities (``#quot;``, ``#lt;``, ...), so quotes, brackets and HTML cannot break the diagram.

    Args:
        blueprint: A blueprint or its raw JSON mapping.
        node_states: Node id → ``"completed"``, ``"failed"``, ``"skipped"``, ``"running"`` or
            ``"awaiting"``; styles those nodes. Ids that are not in the blueprint are ignored.

    Returns:
        The Mermaid source, lines separated by ``\\n``.

    Raises:
        ValueError: A node state is not one of the five above.
        BlueprintError: A raw mapping does not have the shape of a blueprint.
    """
    bp = _coerce(blueprint)
    lines = ["flowchart TD"]
    if not bp.nodes:
        lines.append('    empty["(empty blueprint)"]')
        return "\n".join(lines)
    names = _mermaid_ids(
        [n.id for n in bp.nodes] + [end for e in bp.edges for end in (e.source, e.target)]
    )
    drawn: set[str] = set()
    for node in bp.nodes:
        if node.id in drawn:
            continue
        drawn.add(node.id)
        label = _escape_label(node.id)
        if node.params:
            # Compact like JSON.stringify; stdlib json also copes with integers beyond 64 bits.
            params = json.dumps(node.params, default=str, ensure_ascii=False, separators=(",", ":"))
            label += "<br/>params: " + _escape_label(params)
        lines.append(f'    {names[node.id]}["{label}"]')
    for edge in bp.edges:
        source, target = names[edge.source], names[edge.target]
        parts = [p for p in (edge.action, edge.condition, edge.transform) if p is not None]
        if parts:
            lines.append(f'    {source} -- "{_escape_label(" | ".join(parts))}" --> {target}')
        else:
            lines.append(f"    {source} --> {target}")
    if node_states:
        by_state: dict[str, list[str]] = {}
        for node_id, state in node_states.items():
            if state not in _STATE_STYLES:
                raise ValueError(
                    f"node '{node_id}' has state {state!r}; expected one of"
                    f" {', '.join(_STATE_STYLES)}"
                )
            if node_id in drawn:
                by_state.setdefault(state, []).append(names[node_id])
        for state, style in _STATE_STYLES.items():
            if state in by_state:
                lines.append(f"    classDef {state} {style}")
                lines.append(f"    class {','.join(by_state[state])} {state}")
    return "\n".join(lines)
