"""Graph analysis (cycles, start/terminal nodes, topological order) and Mermaid diagrams."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowcraft.analysis import analyze_blueprint, to_mermaid
from flowcraft.blueprint import Blueprint
from flowcraft.errors import BlueprintError


def blueprint(
    nodes: Sequence[str | dict[str, Any]], edges: Sequence[tuple[str, str] | dict[str, Any]]
) -> Blueprint:
    """A blueprint from ids (uses ``"k"``) or node dicts, and (source, target) pairs or dicts."""
    return Blueprint.model_validate(
        {
            "id": "bp",
            "nodes": [n if isinstance(n, dict) else {"id": n, "uses": "k"} for n in nodes],
            "edges": [
                e if isinstance(e, dict) else {"source": e[0], "target": e[1]} for e in edges
            ],
        }
    )


def is_topological(order: list[str], nodes: list[str], edges: list[tuple[str, str]]) -> bool:
    position = {node: i for i, node in enumerate(order)}
    return sorted(order) == sorted(nodes) and all(position[s] < position[t] for s, t in edges)


# --------------------------------------------------------------------------- known graphs


def test_empty_blueprint() -> None:
    analysis = analyze_blueprint(blueprint([], []))
    assert analysis.cycles == []
    assert analysis.start_node_ids == analysis.terminal_node_ids == []
    assert (analysis.node_count, analysis.edge_count) == (0, 0)
    assert analysis.is_dag
    assert analysis.topological_order == []


def test_diamond() -> None:
    analysis = analyze_blueprint(
        blueprint(["a", "b", "c", "d"], [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
    )
    assert analysis.start_node_ids == ["a"]
    assert analysis.terminal_node_ids == ["d"]
    assert (analysis.node_count, analysis.edge_count) == (4, 4)
    assert analysis.is_dag
    assert analysis.topological_order == ["a", "b", "c", "d"]


def test_topological_order_prefers_blueprint_order() -> None:
    # d and b are both ready after a; b comes first in the blueprint.
    analysis = analyze_blueprint(blueprint(["c", "b", "a", "d"], [("a", "d"), ("a", "b")]))
    assert analysis.topological_order == ["c", "a", "b", "d"]
    assert analysis.start_node_ids == ["c", "a"]
    assert analysis.terminal_node_ids == ["c", "b", "d"]


def test_cycle_is_reported_closed() -> None:
    analysis = analyze_blueprint(
        blueprint(["s", "a", "b", "c"], [("s", "a"), ("a", "b"), ("b", "c"), ("c", "a")])
    )
    assert analysis.cycles == [["a", "b", "c", "a"]]
    assert not analysis.is_dag
    assert analysis.topological_order is None
    assert analysis.start_node_ids == ["s"]
    assert analysis.terminal_node_ids == []


def test_self_loop_and_parallel_edges() -> None:
    analysis = analyze_blueprint(
        blueprint(["a", "b"], [("a", "a"), ("a", "b"), ("b", "a"), ("b", "a")])
    )
    # The two parallel b -> a edges close the same cycle; it is reported once.
    assert analysis.cycles == [["a", "a"], ["a", "b", "a"]]
    assert analysis.start_node_ids == []


def test_fallback_nodes_are_not_start_nodes() -> None:
    analysis = analyze_blueprint(
        blueprint(
            [
                {"id": "a", "uses": "k", "config": {"fallback": "rescue"}},
                {"id": "rescue", "uses": "k"},
                {"id": "b", "uses": "k"},
            ],
            [("a", "b")],
        )
    )
    assert analysis.start_node_ids == ["a"]
    assert analysis.terminal_node_ids == ["rescue", "b"]


def test_raw_mapping_with_dangling_edges_and_duplicates() -> None:
    raw = {
        "id": "bp",
        "nodes": [{"id": "a", "uses": "k"}, {"id": "a", "uses": "k"}, {"id": "b", "uses": "k"}],
        "edges": [{"source": "a", "target": "b"}, {"source": "ghost", "target": "a"}],
    }
    analysis = analyze_blueprint(raw)
    assert (analysis.node_count, analysis.edge_count) == (3, 2)
    assert analysis.start_node_ids == ["a"]
    assert analysis.topological_order == ["a", "b"]


def test_raw_mapping_of_the_wrong_shape_raises() -> None:
    with pytest.raises(BlueprintError, match="nodes"):
        analyze_blueprint({"id": "bp", "nodes": [{"id": "a"}]})


def test_ten_thousand_node_chain_and_cycle() -> None:
    ids = [f"n{i}" for i in range(10_000)]
    chain = list(itertools.pairwise(ids))
    analysis = analyze_blueprint(blueprint(ids, chain))
    assert analysis.is_dag
    assert analysis.topological_order == ids
    cyclic = analyze_blueprint(blueprint(ids, [*chain, (ids[-1], ids[0])]))
    assert cyclic.cycles == [[*ids, ids[0]]]


# --------------------------------------------------------------------------- properties


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[str], list[tuple[str, str]]]:
    """n nodes, edges only from a lower to a higher index, then the node order shuffled."""
    n = draw(st.integers(min_value=1, max_value=25))
    ids = [f"v{i}" for i in range(n)]
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    chosen = draw(st.lists(st.sampled_from(pairs), max_size=60)) if pairs else []
    return draw(st.permutations(ids)), [(ids[i], ids[j]) for i, j in chosen]


@settings(max_examples=200)
@given(dags())
def test_random_dags_have_a_valid_topological_order(
    graph: tuple[list[str], list[tuple[str, str]]],
) -> None:
    nodes, edges = graph
    analysis = analyze_blueprint(blueprint(nodes, edges))
    assert analysis.is_dag
    assert analysis.cycles == []
    assert analysis.topological_order is not None
    assert is_topological(analysis.topological_order, nodes, edges)
    targets = {t for _, t in edges}
    assert analysis.start_node_ids == [n for n in nodes if n not in targets]


@settings(max_examples=200)
@given(dags(), st.data())
def test_random_graphs_with_a_back_edge_report_real_cycles(
    graph: tuple[list[str], list[tuple[str, str]]], data: st.DataObject
) -> None:
    nodes, edges = graph
    # Close a cycle: an edge from some node back to itself or to one of its ancestors.
    target = data.draw(st.sampled_from(sorted(nodes)))
    descendants, frontier = {target}, [target]
    while frontier:
        current = frontier.pop()
        for s, t in edges:
            if s == current and t not in descendants:
                descendants.add(t)
                frontier.append(t)
    source = data.draw(st.sampled_from(sorted(descendants)))
    all_edges = [*edges, (source, target)]
    analysis = analyze_blueprint(blueprint(nodes, all_edges))
    assert not analysis.is_dag
    assert analysis.topological_order is None
    assert analysis.cycles
    edge_set = set(all_edges)
    for cycle in analysis.cycles:
        assert len(cycle) >= 2
        assert cycle[0] == cycle[-1]
        assert len(set(cycle[:-1])) == len(cycle) - 1
        assert all(pair in edge_set for pair in itertools.pairwise(cycle))


# --------------------------------------------------------------------------- mermaid


def test_mermaid_basic_shape() -> None:
    bp = blueprint(
        [{"id": "a", "uses": "k", "params": {"n": 1}}, "b"],
        [{"source": "a", "target": "b", "action": "ok", "condition": "result.output"}],
    )
    assert to_mermaid(bp) == "\n".join(
        [
            "flowchart TD",
            '    a["a<br/>params: {#quot;n#quot;:1}"]',
            '    b["b"]',
            '    a -- "ok | result.output" --> b',
        ]
    )
    assert to_mermaid(blueprint(["a", "b"], [("a", "b")])).endswith("    a --> b")


def test_mermaid_empty_blueprint_has_a_placeholder() -> None:
    lines = to_mermaid(blueprint([], [])).splitlines()
    assert lines[0] == "flowchart TD"
    assert len(lines) == 2
    assert re.fullmatch(r'    \w+\["[^"]*"\]', lines[1])


def test_mermaid_escapes_labels() -> None:
    bp = blueprint(
        [{"id": "a", "uses": "k", "params": {"q": 'say "hi" <b>#1</b> & `x`\nnext'}}, "b"],
        [{"source": "a", "target": "b", "transform": 'context["a"]', "condition": "x > 1"}],
    )
    text = to_mermaid(bp)
    node_line, edge_line = text.splitlines()[1], text.splitlines()[3]
    label = node_line[len('    a["') : -len('"]')]
    assert '"' not in label and "<b>" not in label and "`" not in label and "\n" not in label
    assert "#quot;" in label and "#60;b#62;" in label and "#35;1" in label and "#38;" in label
    # json.dumps escapes the newline as \n; the quotes inside it are entities.
    assert "#quot;say \\#quot;hi\\#quot;" in label
    assert edge_line == '    a -- "x #62; 1 | context[#quot;a#quot;]" --> b'


def test_mermaid_sanitises_odd_and_reserved_ids() -> None:
    bp = blueprint(["n0", "my node", "end", 'x"y', "ok_1"], [("my node", "end"), ('x"y', "ok_1")])
    lines = to_mermaid(bp).splitlines()
    assert lines[1:6] == [
        '    n0["n0"]',
        '    n1["my node"]',
        '    n2["end"]',
        '    n3["x#quot;y"]',
        '    ok_1["ok_1"]',
    ]
    assert lines[6:] == ["    n1 --> n2", "    n3 --> ok_1"]


def test_mermaid_node_states() -> None:
    bp = blueprint(["a", "b", "c", "d"], [("a", "b")])
    text = to_mermaid(
        bp,
        node_states={"a": "completed", "b": "failed", "c": "completed", "gone": "skipped"},
    )
    lines = text.splitlines()
    assert "    class a,c completed" in lines
    assert "    class b failed" in lines
    assert any(line.startswith("    classDef completed fill:") for line in lines)
    assert any(line.startswith("    classDef failed fill:") for line in lines)
    assert not any("skipped" in line for line in lines)
    with pytest.raises(ValueError, match="'exploded'"):
        to_mermaid(bp, node_states={"a": "exploded"})
