"""The blueprint linter: one test per issue code, plus the cases it must not flag."""

from __future__ import annotations

from typing import Any

import pytest

from flowcraft.analysis import BUILTIN_USES_KEYS, LintIssue, LintResult, lint_blueprint
from flowcraft.blueprint import Blueprint
from flowcraft.errors import BlueprintError
from flowcraft.flow import create_flow


def node(node_id: str, uses: str = "k", **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "uses": uses, **extra}


def edge(source: str, target: str, **extra: Any) -> dict[str, Any]:
    return {"source": source, "target": target, **extra}


def raw(nodes: list[dict[str, Any]], edges: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"id": "bp", "nodes": nodes, "edges": edges or []}


def codes(result: LintResult) -> list[str]:
    return [issue.code for issue in result.issues]


def only(result: LintResult, code: str) -> LintIssue:
    matching = [issue for issue in result.issues if issue.code == code]
    assert len(matching) == 1, result.issues
    return matching[0]


def test_a_clean_blueprint_is_valid() -> None:
    result = lint_blueprint(raw([node("a"), node("b")], [edge("a", "b")]), {"k": object()})
    assert result == LintResult(is_valid=True, issues=[])


def test_duplicate_node_id() -> None:
    result = lint_blueprint(raw([node("a"), node("b"), node("a")], [edge("a", "b")]))
    issue = only(result, "DUPLICATE_NODE_ID")
    assert (issue.node_id, issue.severity) == ("a", "error")
    assert "nodes[2]" in issue.message and "nodes[0]" in issue.message
    assert not result.is_valid


def test_dangling_edge_ends() -> None:
    result = lint_blueprint(raw([node("a")], [edge("ghost", "a"), edge("a", "void")]))
    source = only(result, "INVALID_EDGE_SOURCE")
    target = only(result, "INVALID_EDGE_TARGET")
    assert (source.node_id, source.related_id) == ("ghost", "a")
    assert (target.node_id, target.related_id) == ("void", "a")
    assert "edges[0]" in source.message and "edges[1]" in target.message
    assert not result.is_valid


@pytest.mark.parametrize("fallback", ["missing", "a"])
def test_invalid_fallback(fallback: str) -> None:
    result = lint_blueprint(raw([node("a", config={"fallback": fallback})]))
    issue = only(result, "INVALID_FALLBACK")
    assert (issue.node_id, issue.related_id) == ("a", fallback)
    assert not result.is_valid


def test_missing_node_implementation_ignores_builtins() -> None:
    nodes = [node("a", "mine"), node("b", "unknown")]
    nodes += [node(f"builtin{i}", key) for i, key in enumerate(sorted(BUILTIN_USES_KEYS))]
    result = lint_blueprint(raw(nodes), {"mine": object()})
    issue = only(result, "MISSING_NODE_IMPLEMENTATION")
    assert issue.node_id == "b"
    assert "'unknown'" in issue.message


def test_implementation_checks_need_a_registry() -> None:
    result = lint_blueprint(raw([node("a", "unknown")]))
    assert result.is_valid
    assert codes(result) == []


def test_invalid_batch_worker_key() -> None:
    flow = (
        create_flow("f")
        .batch("good", "known", input_key="items")
        .batch("bad", "unknown", input_key="items")
    )
    result = lint_blueprint(flow.to_blueprint(), {"known": object()})
    issue = only(result, "INVALID_BATCH_WORKER_KEY")
    assert issue.node_id == "bad_scatter"
    # A builder-registered worker is found through the flow's registry.
    builder = create_flow("g").batch("b", lambda ctx: ctx.input, input_key="items")
    assert lint_blueprint(builder.to_blueprint(), builder.function_registry).is_valid


def test_invalid_subflow_blueprint_id() -> None:
    bp = create_flow("f").subflow("known", "child").subflow("unknown", "nope").to_blueprint()
    assert codes(lint_blueprint(bp)) == []
    result = lint_blueprint(bp, blueprints={"child": bp})
    issue = only(result, "INVALID_SUBFLOW_BLUEPRINT_ID")
    assert issue.node_id == "unknown"
    assert not result.is_valid
    missing_param = raw([node("s", "subflow")])
    assert codes(lint_blueprint(missing_param, blueprints={})) == ["INVALID_SUBFLOW_BLUEPRINT_ID"]


def test_invalid_expressions() -> None:
    blueprint = raw(
        [node("a"), node("b"), node("lp", "loop-controller", params={"condition": "x >"})],
        [
            edge("a", "b", condition='result.output == "ok"', transform='context["a"]'),
            edge("a", "lp", condition="__import__('os')"),
            edge("lp", "b", transform="input.__class__"),
            edge("lp", "a", action="continue"),
        ],
    )
    result = lint_blueprint(blueprint)
    issues = [i for i in result.issues if i.code == "INVALID_EXPRESSION"]
    assert [(i.node_id, i.related_id) for i in issues] == [
        ("a", "lp"),
        ("lp", "b"),
        ("lp", None),
    ]
    assert "condition" in issues[0].message and "transform" in issues[1].message
    assert not result.is_valid


def test_loop_controller_without_condition_is_an_invalid_expression() -> None:
    result = lint_blueprint(
        raw([node("lp", "loop-controller"), node("a")], [edge("lp", "a", action="continue")])
    )
    assert only(result, "INVALID_EXPRESSION").node_id == "lp"


def test_builder_loops_lint_clean() -> None:
    flow = (
        create_flow("f")
        .node("init", "k")
        .node("body", "k")
        .node("after", "k")
        .loop("lp", start_node_id="body", end_node_id="body", condition='context["n"] < 3')
        .edge("init", "lp")
        .edge("lp", "after")
    )
    result = lint_blueprint(flow.to_blueprint(), {"k": object()})
    assert result.issues == []


def test_orphan_nodes() -> None:
    blueprint = raw(
        [node("a"), node("b"), node("island1"), node("island2")],
        [edge("a", "b"), edge("island1", "island2"), edge("island2", "island1")],
    )
    result = lint_blueprint(blueprint)
    assert [i.node_id for i in result.issues if i.code == "ORPHAN_NODE"] == ["island1", "island2"]
    assert not result.is_valid


def test_not_orphans_lone_node_fallbacks_and_cycle_entries() -> None:
    assert lint_blueprint(raw([node("solo")])).is_valid
    assert lint_blueprint(raw([node("solo")], [edge("solo", "solo")])).is_valid
    with_fallback = raw(
        [node("a", config={"fallback": "rescue"}), node("rescue"), node("after")],
        [edge("rescue", "after")],
    )
    assert lint_blueprint(with_fallback).issues == []
    # A start-less cycle is entered at its first node, or at the declared entry point.
    ring = raw([node("x"), node("y")], [edge("x", "y"), edge("y", "x")])
    assert lint_blueprint(ring).issues == []
    assert lint_blueprint({**ring, "metadata": {"cycleEntryPoints": ["y"]}}).issues == []


def test_fallback_of_an_orphan_is_an_orphan() -> None:
    blueprint = raw(
        [node("a"), node("b"), node("c", config={"fallback": "d"}), node("d")],
        [edge("a", "b"), edge("c", "c")],
    )
    assert [i.node_id for i in lint_blueprint(blueprint).issues] == ["c", "d"]


def test_exitless_loop_is_a_warning() -> None:
    blueprint = raw(
        [node("start"), node("body"), node("lp", "loop-controller", params={"condition": "true"})],
        [edge("start", "lp"), edge("lp", "body", action="continue"), edge("body", "lp")],
    )
    result = lint_blueprint(blueprint)
    issue = only(result, "EXITLESS_LOOP")
    assert (issue.node_id, issue.severity) == ("lp", "warning")
    assert result.is_valid
    assert result.warnings == [issue]
    assert result.errors == []


def test_unsatisfiable_join_is_a_warning() -> None:
    # 'j' waits (all) for 'b', which only runs after 'j': the runtime stalls there.
    blueprint = raw(
        [node("start"), node("j"), node("b")],
        [edge("start", "j"), edge("j", "b"), edge("b", "j")],
    )
    result = lint_blueprint(blueprint)
    issue = only(result, "UNSATISFIABLE_JOIN")
    assert (issue.node_id, issue.related_id, issue.severity) == ("j", "b", "warning")
    assert result.is_valid
    # A loop entered at its first body node instead of its controller waits for the controller.
    entered_at_body = raw(
        [
            node("s"),
            node("body"),
            node("lp", "loop-controller", params={"condition": "true"}),
            node("after"),
        ],
        [
            edge("s", "body"),
            edge("body", "lp"),
            edge("lp", "body", action="continue"),
            edge("lp", "after", action="break"),
        ],
    )
    issue = only(lint_blueprint(entered_at_body), "UNSATISFIABLE_JOIN")
    assert (issue.node_id, issue.related_id) == ("body", "lp")
    # A join downstream of the stuck one is not reported again.
    downstream = raw(
        [node("start"), node("j"), node("b"), node("x"), node("k")],
        [
            edge("start", "j"),
            edge("j", "b"),
            edge("b", "j"),
            edge("start", "x"),
            edge("x", "k"),
            edge("b", "k"),
        ],
    )
    assert [(i.code, i.node_id) for i in lint_blueprint(downstream).issues] == [
        ("UNSATISFIABLE_JOIN", "j")
    ]


@pytest.mark.parametrize(
    "blueprint",
    [
        # one source, distinct actions: one structural predecessor, so the join fires on any
        raw(
            [node("route"), node("join")],
            [edge("route", "join", action="left"), edge("route", "join", action="right")],
        ),
        # a default edge and an action edge of one source
        raw([node("r"), node("j")], [edge("r", "j"), edge("r", "j", action="x")]),
        # an `any` join
        raw(
            [node("r"), node("j", config={"joinStrategy": "any"})],
            [edge("r", "j", action="a"), edge("r", "j", action="b")],
        ),
        # edges with the same action both fire
        raw([node("r"), node("j")], [edge("r", "j", action="a"), edge("r", "j", action="a")]),
        # predecessors from two sources
        raw(
            [node("r"), node("s"), node("j")],
            [edge("r", "s"), edge("r", "j", action="a"), edge("s", "j", action="b")],
        ),
        # exclusive branches joined (dead-path elimination resolves the untaken one)
        raw(
            [node("r"), node("a"), node("b"), node("j")],
            [
                edge("r", "a", action="x"),
                edge("r", "b", action="y"),
                edge("a", "j"),
                edge("b", "j"),
            ],
        ),
        # a predecessor reachable only through a fallback
        raw(
            [node("a", config={"fallback": "fb"}), node("fb"), node("j")],
            [edge("a", "j"), edge("fb", "j")],
        ),
        # a loop entered through its controller, with an all join in its body
        raw(
            [
                node("s"),
                node("lp", "loop-controller", params={"condition": "true"}),
                node("p"),
                node("q"),
                node("body"),
                node("after"),
            ],
            [
                edge("s", "lp"),
                edge("lp", "p", action="continue"),
                edge("lp", "q", action="continue"),
                edge("p", "body"),
                edge("q", "body"),
                edge("body", "lp"),
                edge("lp", "after", action="break"),
            ],
        ),
        # a cycle entered at the join (cycleEntryPoints)
        {
            **raw([node("j"), node("b")], [edge("j", "b"), edge("b", "j")]),
            "metadata": {"cycleEntryPoints": ["j"]},
        },
    ],
)
def test_satisfiable_joins_are_not_flagged(blueprint: dict[str, Any]) -> None:
    assert "UNSATISFIABLE_JOIN" not in codes(lint_blueprint(blueprint))


def test_raw_mapping_shape_errors_raise() -> None:
    with pytest.raises(BlueprintError, match=r"nodes\[0\]"):
        lint_blueprint({"id": "bp", "nodes": [{"id": "a"}]})
    with pytest.raises(BlueprintError):
        lint_blueprint({"nodes": []})


def test_accepts_a_blueprint_object_and_reports_issue_json() -> None:
    bp = Blueprint.model_validate(raw([node("a")], [edge("a", "b")]))
    issue = only(lint_blueprint(bp), "INVALID_EDGE_TARGET")
    assert issue.to_dict() == {
        "code": "INVALID_EDGE_TARGET",
        "message": issue.message,
        "nodeId": "b",
        "relatedId": "a",
        "severity": "error",
    }
