"""The fluent builder: blueprint shape, batch and loop rewiring, deterministic uses keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flowcraft.blueprint import Blueprint, NodeConfig, load_blueprint
from flowcraft.errors import BlueprintError
from flowcraft.flow import Flow, create_flow, uses_key_for
from flowcraft.node import Node, NodeContext
from flowcraft.runtime import FlowRuntime

# --------------------------------------------------------------------------- helpers
# These are also imported by a subprocess (see test_uses_keys_agree_across_processes); pytest
# rewrites assert statements, so none of them may contain one, or their bytecode would differ.


async def fetch(ctx: NodeContext) -> str:
    return "fetched"


def shout(ctx: NodeContext) -> str:
    return str(ctx.input).upper()


class Greeter(Node):
    def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
        return f"hello {prep_result}"


LAMBDAS = (
    lambda ctx: 1,
    lambda ctx: 2,
    lambda ctx: ctx.params.get("k") in {"alpha", "beta", "gamma", "delta", "epsilon"},
)
SAME_CODE_LAMBDAS = (lambda ctx: 0, lambda ctx: 0)


def make_local(n: int) -> Any:
    async def local(ctx: NodeContext) -> int:
        return n

    return local


def make_local_class() -> type[Node]:
    class Local(Node):
        def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
            return {"tags": frozenset({"x", "y", "z"})}

    return Local


def helper_keys() -> dict[str, str]:
    """The uses keys of every helper; printed by the subprocess."""
    return {
        "fetch": uses_key_for(fetch),
        "shout": uses_key_for(shout),
        "Greeter": uses_key_for(Greeter),
        "lambda0": uses_key_for(LAMBDAS[0]),
        "lambda1": uses_key_for(LAMBDAS[1]),
        "lambda2": uses_key_for(LAMBDAS[2]),
        "local": uses_key_for(make_local(1)),
        "local_class": uses_key_for(make_local_class()),
    }


def registry_keys_built_backwards() -> list[str]:
    """A flow built in the opposite order; its keys must not depend on the order."""
    flow = create_flow("order")
    flow.node("l2", LAMBDAS[2]).node("l1", LAMBDAS[1]).node("l0", LAMBDAS[0])
    flow.node("g", Greeter).node("s", shout).node("f", fetch)
    return sorted(flow.function_registry)


def registry_keys_built_forwards() -> list[str]:
    flow = create_flow("order")
    flow.node("f", fetch).node("s", shout).node("g", Greeter)
    flow.node("l0", LAMBDAS[0]).node("l1", LAMBDAS[1]).node("l2", LAMBDAS[2])
    return sorted(flow.function_registry)


# --------------------------------------------------------------------------- shape


def test_builder_output_matches_the_typescript_json() -> None:
    flow = (
        create_flow("shape")
        .node("start", fetch, params={"a": 1})
        .batch("b", shout, input_key="start", output_key="results")
        .node("body", "body-key", inputs={"x": "start"})
        .node("done", "done-key", config={"maxRetries": 3})
        .loop("lp", start_node_id="body", end_node_id="body", condition='context["n"] < 3')
        .edge("start", "b")
        .edge("b", "lp")
        .edge("lp", "done")
    )
    assert flow.to_blueprint().to_dict() == {
        "id": "shape",
        "nodes": [
            {"id": "start", "uses": f"{__name__}:fetch", "params": {"a": 1}},
            {
                "id": "b_scatter",
                "uses": "batch-scatter",
                "inputs": "start",
                "params": {
                    "workerUsesKey": f"{__name__}:shout",
                    "outputKey": "results",
                    "gatherNodeId": "b_gather",
                },
            },
            {
                "id": "b_gather",
                "uses": "batch-gather",
                "params": {"outputKey": "results", "gatherNodeId": "b_gather"},
                "config": {"joinStrategy": "all"},
            },
            {"id": "body", "uses": "body-key", "inputs": {"x": "start"}},
            {"id": "done", "uses": "done-key", "config": {"maxRetries": 3}},
            {
                "id": "lp",
                "uses": "loop-controller",
                "params": {"condition": 'context["n"] < 3'},
                "config": {"joinStrategy": "any"},
            },
        ],
        "edges": [
            # rewired loop exits
            {"source": "lp", "target": "done", "action": "break", "transform": 'context["body"]'},
            # rewired batch edges
            {"source": "start", "target": "b_scatter"},
            {"source": "b_gather", "target": "lp"},
            # untouched edges, in the order they were added
            {"source": "b_scatter", "target": "b_gather"},
            {"source": "body", "target": "lp"},
            {
                "source": "lp",
                "target": "body",
                "action": "continue",
                "transform": 'context["body"]',
            },
        ],
    }
    assert flow.function_registry == {f"{__name__}:fetch": fetch, f"{__name__}:shout": shout}


def test_batch_with_chunk_size_and_no_output_key() -> None:
    bp = create_flow("f").batch("b", "worker-key", input_key="items", chunk_size=5).to_blueprint()
    scatter, gather = bp.nodes
    assert scatter.params == {
        "workerUsesKey": "worker-key",
        "gatherNodeId": "b_gather",
        "chunkSize": 5,
    }
    assert gather.params == {"gatherNodeId": "b_gather"}
    assert create_flow("f").batch("b", "w", input_key="i").function_registry == {}


@pytest.mark.parametrize("chunk_size", [0, -1, True])
def test_batch_rejects_a_bad_chunk_size(chunk_size: int) -> None:
    with pytest.raises(BlueprintError, match="chunk_size"):
        create_flow("f").batch("b", "w", input_key="i", chunk_size=chunk_size)


def test_loop_exit_keeps_a_user_action_and_transform() -> None:
    bp = (
        create_flow("f")
        .node("a", "k")
        .node("x", "k")
        .node("y", "k")
        .loop("lp", start_node_id="a", end_node_id="a", condition="true")
        .edge("lp", "x", action="done", transform="input")
        .edge("lp", "y")
        .to_blueprint()
    )
    exits = [e.model_dump(by_alias=True, exclude_none=True) for e in bp.edges[:2]]
    assert exits == [
        {"source": "lp", "target": "x", "action": "done", "transform": "input"},
        {"source": "lp", "target": "y", "action": "break", "transform": 'context["a"]'},
    ]


def test_loop_around_a_batch_uses_the_gather_node() -> None:
    bp = (
        create_flow("f")
        .batch("b", "w", input_key="items")
        .loop("lp", start_node_id="b", end_node_id="b", condition="false")
        .node("out", "k")
        .edge("lp", "out")
        .to_blueprint()
    )
    edges = {(e.source, e.target): e for e in bp.edges}
    assert edges[("lp", "out")].transform == 'context["b_gather"]'
    assert edges[("lp", "b_scatter")].action == "continue"
    assert edges[("lp", "b_scatter")].transform == 'context["b_gather"]'
    assert ("b_gather", "lp") in edges


def test_loop_transform_quotes_odd_ids() -> None:
    bp = (
        create_flow("f")
        .node('we"ird', "k")
        .loop("lp", start_node_id='we"ird', end_node_id='we"ird', condition="true")
        .to_blueprint()
    )
    assert bp.edges[-1].transform == 'context["we\\"ird"]'


@pytest.mark.parametrize("missing", ["start", "end"])
def test_loop_with_a_missing_node_fails_to_build(missing: str) -> None:
    flow = create_flow("f").node("a", "k")
    if missing == "start":
        flow.loop("lp", start_node_id="nope", end_node_id="a", condition="true")
    else:
        flow.loop("lp", start_node_id="a", end_node_id="nope", condition="true")
    with pytest.raises(BlueprintError, match=f"{missing} node 'nope'"):
        flow.to_blueprint()


def test_builtin_node_helpers() -> None:
    bp = (
        create_flow("f")
        .sleep("nap", duration="5s")
        .wait("approve", params={"eventName": "ok"}, config={"timeout": 10})
        .webhook("hook", path="/in")
        .webhook("bare")
        .subflow("child", "child-bp", inputs={"c": "p"}, outputs={"p": "c"})
        .subflow("plain", "other")
        .to_blueprint()
    )
    assert bp.to_dict()["nodes"] == [
        {"id": "nap", "uses": "sleep", "params": {"duration": "5s"}},
        {"id": "approve", "uses": "wait", "params": {"eventName": "ok"}, "config": {"timeout": 10}},
        {"id": "hook", "uses": "webhook", "params": {"path": "/in"}},
        {"id": "bare", "uses": "webhook"},
        {
            "id": "child",
            "uses": "subflow",
            "params": {"blueprintId": "child-bp", "inputs": {"c": "p"}, "outputs": {"p": "c"}},
        },
        {"id": "plain", "uses": "subflow", "params": {"blueprintId": "other"}},
    ]


@pytest.mark.parametrize(
    "config",
    [
        {"maxRetries": 2, "retryDelay": 10, "fallback": "fb", "joinStrategy": "any"},
        {"max_retries": 2, "retry_delay": 10, "fallback": "fb", "join_strategy": "any"},
        NodeConfig(max_retries=2, retry_delay=10, fallback="fb", join_strategy="any"),
    ],
)
def test_config_accepts_camel_snake_and_model(config: Any) -> None:
    bp = create_flow("f").node("a", "k", config=config).node("fb", "k").to_blueprint()
    assert bp.to_dict()["nodes"][0]["config"] == {
        "maxRetries": 2,
        "retryDelay": 10,
        "fallback": "fb",
        "joinStrategy": "any",
    }


@pytest.mark.parametrize("config", [{"max_retry": 2}, {"maxRetries": -1}, {"joinStrategy": "some"}])
def test_invalid_config_is_rejected_and_the_id_stays_free(config: dict[str, Any]) -> None:
    flow = create_flow("f")
    with pytest.raises(BlueprintError, match="node 'a' has an invalid config"):
        flow.node("a", "k", config=config)
    flow.node("a", "k")
    assert [n.id for n in flow.to_blueprint().nodes] == ["a"]


def test_metadata_version_and_cycle_entry_points() -> None:
    bp = (
        create_flow("f")
        .node("a", "k")
        .batch("b", "w", input_key="a")
        .edge("a", "b")
        .edge("b", "a")
        .set_cycle_entry_point("a")
        .set_cycle_entry_point("b")
        .set_cycle_entry_point("a")
        .version("1.2")
        .metadata(owner="team")
        .to_blueprint()
    )
    assert bp.to_dict()["metadata"] == {
        "owner": "team",
        "version": "1.2",
        "cycleEntryPoints": ["a", "b_scatter"],
    }
    assert bp.version == "1.2"
    assert create_flow("f").node("a", "k").metadata(version="2").to_blueprint().version == "2"
    assert "metadata" not in create_flow("f").node("a", "k").to_blueprint().to_dict()


def test_cycle_entry_point_must_exist() -> None:
    with pytest.raises(BlueprintError, match="cycle entry point 'x'"):
        create_flow("f").node("a", "k").set_cycle_entry_point("x").to_blueprint()


def test_to_blueprint_returns_a_new_independent_blueprint() -> None:
    params = {"nested": {"v": 1}}
    flow = create_flow("f").node("a", fetch, params=params)
    first, second = flow.to_blueprint(), flow.to_blueprint()
    assert first is not second
    assert first == second
    assert first.nodes[0].params is not None
    first.nodes[0].params["nested"]["v"] = 99
    params["nested"]["v"] = 42
    assert flow.to_blueprint().nodes[0].params == {"nested": {"v": 1}}
    assert isinstance(first, Blueprint)


def test_to_json_round_trips() -> None:
    flow = create_flow("f").node("a", fetch).node("b", Greeter).edge("a", "b", condition="result")
    text = flow.to_json()
    assert load_blueprint(text) == flow.to_blueprint()
    assert json.loads(flow.to_json(indent=True)) == json.loads(text)


# --------------------------------------------------------------------------- errors


def test_zero_nodes_is_an_error() -> None:
    with pytest.raises(BlueprintError, match="no nodes"):
        create_flow("empty").to_blueprint()


def test_empty_flow_id_is_an_error() -> None:
    with pytest.raises(BlueprintError):
        create_flow("")


@pytest.mark.parametrize(
    "build",
    [
        lambda f: f.node("a", "k").node("a", "k"),
        lambda f: f.node("b_gather", "k").batch("b", "w", input_key="i"),
        lambda f: f.batch("b", "w", input_key="i").node("b", "k"),
        lambda f: f.node("lp", "k").loop("lp", start_node_id="x", end_node_id="x", condition="1"),
        lambda f: f.node("s", "k").sleep("s", duration=1),
        lambda f: f.node("a", ""),
        lambda f: f.node("", "k"),
    ],
)
def test_bad_nodes_are_rejected_when_added(build: Any) -> None:
    with pytest.raises(BlueprintError):
        build(create_flow("f"))


def test_edge_to_a_missing_node_fails_to_build() -> None:
    flow = create_flow("f").node("a", "k").edge("a", "ghost")
    with pytest.raises(BlueprintError, match="ghost"):
        flow.to_blueprint()


def test_non_callable_implementation_is_rejected() -> None:
    with pytest.raises(BlueprintError, match="needs a function"):
        create_flow("f").node("a", 42)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- uses keys


def test_uses_keys_are_module_and_qualified_name() -> None:
    assert uses_key_for(fetch) == f"{__name__}:fetch"
    assert uses_key_for(Greeter) == f"{__name__}:Greeter"
    flow = create_flow("f").node("a", fetch).node("b", Greeter).node("c", "registered-elsewhere")
    assert [n.uses for n in flow.to_blueprint().nodes] == [
        f"{__name__}:fetch",
        f"{__name__}:Greeter",
        "registered-elsewhere",
    ]
    assert flow.function_registry == {f"{__name__}:fetch": fetch, f"{__name__}:Greeter": Greeter}


def test_lambdas_and_locals_get_a_code_hash() -> None:
    keys = helper_keys()
    for name in ("lambda0", "lambda1", "lambda2", "local", "local_class"):
        prefix, _, digest = keys[name].partition("#")
        assert prefix.startswith(f"{__name__}:")
        assert len(digest) == 8
        assert int(digest, 16) >= 0
    assert keys["lambda0"] != keys["lambda1"] != keys["lambda2"]
    assert keys["local"].startswith(f"{__name__}:make_local.<locals>.local#")
    # Same code, same key: recreating a local function does not change it.
    assert uses_key_for(make_local(1)) == uses_key_for(make_local(2))
    assert uses_key_for(make_local_class()) == keys["local_class"]


def test_same_implementation_twice_reuses_its_key() -> None:
    flow = create_flow("f").node("a", fetch).node("b", fetch).batch("c", fetch, input_key="i")
    assert flow.function_registry == {f"{__name__}:fetch": fetch}
    uses = {n.id: n.uses for n in flow.to_blueprint().nodes}
    assert uses["a"] == uses["b"] == f"{__name__}:fetch"


@pytest.mark.parametrize(
    ("first", "second"),
    [(SAME_CODE_LAMBDAS[0], SAME_CODE_LAMBDAS[1]), (make_local(1), make_local(2))],
)
def test_different_implementations_with_one_key_are_an_error(first: Any, second: Any) -> None:
    flow = create_flow("f").node("a", first)
    with pytest.raises(BlueprintError, match="same uses key") as info:
        flow.node("b", second)
    # Both are named, with where they were defined.
    assert info.value.message.count(__file__) == 2
    # The failed call left nothing behind.
    assert len(flow.function_registry) == 1
    flow.node("b", "other")


def test_uses_keys_agree_across_processes() -> None:
    tests_dir = str(Path(__file__).resolve().parent)
    root = str(Path(__file__).resolve().parent.parent)
    script = (
        "import importlib, json, sys\n"
        f"sys.path[:0] = [{tests_dir!r}, {root!r}]\n"
        f"m = importlib.import_module({__name__!r})\n"
        "print(json.dumps([m.helper_keys(), m.registry_keys_built_backwards()]))\n"
    )
    expected = [helper_keys(), registry_keys_built_forwards()]
    for seed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
        )
        assert json.loads(out.stdout) == expected


# --------------------------------------------------------------------------- run / resume


class FakeRuntime:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    async def run(self, *args: Any, **kwargs: Any) -> str:
        self.calls.append(("run", args, kwargs))
        return "ran"

    async def resume(self, *args: Any, **kwargs: Any) -> str:
        self.calls.append(("resume", args, kwargs))
        return "resumed"


async def test_run_and_resume_pass_the_blueprint_and_registry() -> None:
    flow = create_flow("f").node("a", fetch)
    runtime = FakeRuntime()
    assert await flow.run(runtime, {"x": 1}, concurrency=2) == "ran"
    assert await flow.resume(runtime, "{}", {"output": 1}, "a", signal=None) == "resumed"
    (_, run_args, run_kwargs), (_, resume_args, resume_kwargs) = runtime.calls
    assert run_args == (flow.to_blueprint(), {"x": 1})
    assert run_kwargs == {"function_registry": flow.function_registry, "concurrency": 2}
    assert resume_args == (flow.to_blueprint(), "{}", {"output": 1}, "a")
    assert resume_kwargs == {"function_registry": flow.function_registry, "signal": None}


async def test_runs_on_the_in_memory_runtime() -> None:
    flow = create_flow("greet").node("a", fetch).node("b", shout).edge("a", "b")
    result = await flow.run(FlowRuntime())
    assert result.status == "completed"
    assert result.context["_outputs.b"] == "FETCHED"


def test_flow_repr_and_id() -> None:
    flow = create_flow("f").node("a", "k")
    assert flow.id == "f"
    assert isinstance(flow, Flow)
    assert "f" in repr(flow)
