"""Golden blueprints in the TypeScript JSON shape: each runs to its expected context and survives a
JSON round trip.

Every ``fixtures/blueprints/<name>.json`` has a sibling ``<name>.expected.json``::

    {
      "initialState": {...},           # the run's initial context
      "status": "completed",           # the expected WorkflowResult status
      "context": {...},                # keys that must be present with exactly these values
      "exact": true,                   # optional: the whole final context must equal "context"
      "errors": [{"nodeId": "x", "messageContains": "..."}]   # optional, for failing runs
    }

Every ``_outputs.*`` key of the final context must be listed in ``context`` (no unexpected node
ran). Values are compared as JSON, so ``1``, ``1.0`` and ``true`` are all different.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from fixtures.registry import REGISTRY

from flowcraft import Blueprint, FlowRuntime, WorkflowResult, load_blueprint

BLUEPRINT_DIR = Path(__file__).parent / "fixtures" / "blueprints"
EXPECTED_SUFFIX = ".expected.json"
BLUEPRINTS = sorted(
    path for path in BLUEPRINT_DIR.glob("*.json") if not path.name.endswith(EXPECTED_SUFFIX)
)
EXPECTATIONS = sorted(BLUEPRINT_DIR.glob(f"*{EXPECTED_SUFFIX}"))
OUTPUTS = "_outputs."
# Structural levels of a blueprint whose ``null`` members mean "absent" (params are user data).
_STRUCTURAL = ("config",)


def _expected_path(path: Path) -> Path:
    return path.with_name(path.stem + EXPECTED_SUFFIX)


def _expected(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_expected_path(path).read_text())
    return data


def _canonical(value: Any) -> str:
    """JSON text that tells ``1``, ``1.0`` and ``true`` apart and ignores key order."""
    return json.dumps(value, sort_keys=True)


def _without_nulls(item: dict[str, Any]) -> dict[str, Any]:
    out = {key: value for key, value in item.items() if value is not None}
    for key in _STRUCTURAL:
        if isinstance(out.get(key), dict):
            out[key] = {k: v for k, v in out[key].items() if v is not None}
    return out


def _normalise(raw: dict[str, Any]) -> dict[str, Any]:
    """A blueprint's JSON with absent and ``null`` optional members treated alike."""
    out = _without_nulls(raw)
    out["nodes"] = [_without_nulls(node) for node in raw.get("nodes") or []]
    out["edges"] = [_without_nulls(edge) for edge in raw.get("edges") or []]
    if isinstance(raw.get("metadata"), dict):
        out["metadata"] = _without_nulls(raw["metadata"])
    return out


async def _run(path: Path, concurrency: int | None = None) -> tuple[WorkflowResult, dict[str, Any]]:
    expected = _expected(path)
    blueprint = load_blueprint(path)
    state = copy.deepcopy(expected["initialState"])
    result = await FlowRuntime(registry=REGISTRY).run(blueprint, state, concurrency=concurrency)
    return result, expected


def test_every_blueprint_has_an_expectation_and_there_are_enough() -> None:
    assert len(BLUEPRINTS) >= 10
    assert {_expected_path(p) for p in BLUEPRINTS} == set(EXPECTATIONS)


def test_fixtures_cover_the_documented_features() -> None:
    raws = [json.loads(path.read_text()) for path in BLUEPRINTS]
    nodes = [node for raw in raws for node in raw["nodes"]]
    edges = [edge for raw in raws for edge in raw.get("edges", [])]
    uses = {node["uses"] for node in nodes}
    assert {"loop-controller", "batch-scatter", "batch-gather", "wait"} <= uses
    assert uses - {"loop-controller", "batch-scatter", "batch-gather", "wait"} <= set(REGISTRY)
    configs = [node.get("config") or {} for node in nodes]
    assert any(c.get("joinStrategy") == "any" for c in configs)
    assert any("fallback" in c for c in configs)
    assert any(c.get("maxRetries", 1) > 1 and "retryDelay" in c for c in configs)
    assert any(isinstance(node.get("inputs"), dict) for node in nodes)
    conditions = " ".join(edge.get("condition", "") for edge in edges)
    assert "===" in conditions and "&&" in conditions
    assert any("transform" in edge for edge in edges)
    assert {"continue", "break"} <= {edge.get("action") for edge in edges}
    assert {"completed", "awaiting", "failed"} <= {_expected(p)["status"] for p in BLUEPRINTS}


@pytest.mark.parametrize("concurrency", [None, 1], ids=["default-concurrency", "concurrency-1"])
@pytest.mark.parametrize("path", BLUEPRINTS, ids=lambda p: p.stem)
async def test_fixture_runs_to_the_expected_context(path: Path, concurrency: int | None) -> None:
    result, expected = await _run(path, concurrency)
    context = result.context
    want: dict[str, Any] = expected["context"]

    assert result.status == expected["status"], [e.message for e in result.errors]
    for key, value in want.items():
        assert key in context, f"missing context key {key!r}"
        assert context[key] == value, key
        assert _canonical(context[key]) == _canonical(value), key
    unexpected = sorted(k for k in context if k.startswith(OUTPUTS) and k not in want)
    assert unexpected == [], "nodes ran that the expectation does not list"
    if expected.get("exact"):
        assert _canonical(context) == _canonical(want)

    want_errors: list[dict[str, str]] = expected.get("errors", [])
    assert [e.node_id for e in result.errors] == [e["nodeId"] for e in want_errors]
    for error, want_error in zip(result.errors, want_errors, strict=True):
        assert want_error["messageContains"] in error.message
    if result.status in ("completed", "awaiting"):
        assert result.errors == []
    assert json.loads(result.serialized_context) == context


@pytest.mark.parametrize("path", BLUEPRINTS, ids=lambda p: p.stem)
def test_fixture_round_trips_through_to_json(path: Path) -> None:
    raw = json.loads(path.read_text())
    blueprint = load_blueprint(path)
    text = blueprint.to_json()
    again = load_blueprint(text)
    assert again == blueprint
    assert _normalise(json.loads(text)) == _normalise(raw)
    assert json.loads(blueprint.to_json(indent=True)) == json.loads(text)
    # The dict and the mapping loaders agree with the file loader.
    assert load_blueprint(raw) == blueprint
    assert isinstance(Blueprint.model_validate(json.loads(text)), Blueprint)


async def test_wait_fixture_resumes_by_action() -> None:
    path = BLUEPRINT_DIR / "wait_for_review.json"
    blueprint = load_blueprint(path)
    runtime = FlowRuntime(registry=REGISTRY)
    paused = await runtime.run(blueprint, _expected(path)["initialState"])
    assert paused.status == "awaiting"

    approved = await runtime.resume(
        blueprint, paused.serialized_context, {"output": "final text", "action": "approve"}
    )
    assert approved.status == "completed", approved.errors
    assert approved.context["_outputs.review"] == "final text"
    assert approved.context["_outputs.publish"] == "published: final text"
    assert "_outputs.discard" not in approved.context
    assert "_awaitingNodeIds" not in approved.context

    rejected = await runtime.resume(blueprint, paused.serialized_context, {"action": "reject"})
    assert rejected.status == "completed", rejected.errors
    assert rejected.context["_outputs.discard"] == "discarded"
    assert "_outputs.publish" not in rejected.context
