"""OpenTelemetry middleware: run and attempt spans, links, propagation (SDK in-memory exporter)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="opentelemetry-sdk is a test dependency")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from flowcraft import FlowRuntime, NodeContext, NodeResult, create_flow
from flowcraft.context import MemoryContext
from flowcraft.telemetry import (
    OpenTelemetryMiddleware,
    attached_trace_context,
    extract_trace_context,
    inject_trace_context,
)


@pytest.fixture
def tracing() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _runtime(
    provider: TracerProvider, **kwargs: Any
) -> tuple[FlowRuntime, OpenTelemetryMiddleware]:
    runtime = FlowRuntime(**kwargs)
    otel = OpenTelemetryMiddleware(provider)
    otel.install(runtime)
    return runtime, otel


def _nodes(spans: tuple[ReadableSpan, ...], node_id: str) -> list[ReadableSpan]:
    found = [s for s in spans if (s.attributes or {}).get("flowcraft.node_id") == node_id]
    return sorted(found, key=lambda s: (s.attributes or {}).get("flowcraft.attempt", 0))


def _runs(spans: tuple[ReadableSpan, ...]) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith("flowcraft.run ")]


async def test_one_run_span_with_a_child_span_per_node(tracing: Any) -> None:
    provider, exporter = tracing
    runtime, _ = _runtime(provider)
    flow = create_flow("lin").node("a", lambda ctx: 1).node("b", lambda ctx: 2).edge("a", "b")
    result = await flow.run(runtime)
    assert result.status == "completed"
    spans = exporter.get_finished_spans()
    (run,) = _runs(spans)
    assert run.name == "flowcraft.run lin"
    assert run.attributes is not None
    assert run.attributes["flowcraft.run_id"] == result.run_id
    assert run.attributes["flowcraft.status"] == "completed"
    for node_id in ("a", "b"):
        (span,) = _nodes(spans, node_id)
        assert span.name == f"flowcraft.node {node_id}"
        assert span.parent is not None and span.parent.span_id == run.context.span_id
        assert span.context.trace_id == run.context.trace_id
        assert dict(span.attributes or {}) == {
            "flowcraft.run_id": result.run_id,
            "flowcraft.blueprint_id": "lin",
            "flowcraft.node_id": node_id,
            "flowcraft.attempt": 1,
            "flowcraft.status": "completed",
        }
        assert span.status.status_code == StatusCode.OK


async def test_join_span_links_every_predecessor(tracing: Any) -> None:
    provider, exporter = tracing
    runtime, _ = _runtime(provider)

    def one(ctx: NodeContext) -> int:
        return 1

    flow = create_flow("join").node("start", lambda ctx: 0)
    for branch in ("x", "y", "z"):
        flow.node(branch, one).edge("start", branch)
    flow.node("j", lambda ctx: sorted(ctx.input))
    for branch in ("x", "y", "z"):
        flow.edge(branch, "j")
    result = await flow.run(runtime)
    assert result.status == "completed"
    spans = exporter.get_finished_spans()
    (join,) = _nodes(spans, "j")
    linked = {link.context.span_id for link in join.links}
    expected = {_nodes(spans, b)[0].context.span_id for b in ("x", "y", "z")}
    assert linked == expected


async def test_each_attempt_gets_its_own_span(tracing: Any) -> None:
    provider, exporter = tracing
    runtime, _ = _runtime(provider)
    calls = {"n": 0}
    tracer = provider.get_tracer("user")

    async def flaky(ctx: NodeContext) -> str:
        calls["n"] += 1
        with tracer.start_as_current_span(f"user-work-{calls['n']}"):
            if calls["n"] < 3:
                raise RuntimeError(f"boom {calls['n']}")
        return "ok"

    result = await create_flow("retry").node("f", flaky, config={"maxRetries": 3}).run(runtime)
    assert result.status == "completed"
    spans = exporter.get_finished_spans()
    attempts = _nodes(spans, "f")
    assert [(s.attributes or {})["flowcraft.attempt"] for s in attempts] == [1, 2, 3]
    assert [(s.attributes or {})["flowcraft.status"] for s in attempts] == [
        "failed",
        "failed",
        "completed",
    ]
    assert [s.status.status_code for s in attempts] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.OK,
    ]
    # The user's spans nest under the attempt that was live when they ran.
    for n, attempt in enumerate(attempts, start=1):
        (user,) = [s for s in spans if s.name == f"user-work-{n}"]
        assert user.parent is not None and user.parent.span_id == attempt.context.span_id


async def test_spans_opened_by_sync_nodes_nest_under_their_attempt(tracing: Any) -> None:
    provider, exporter = tracing
    runtime = FlowRuntime(middleware=[OpenTelemetryMiddleware(provider)])
    tracer = provider.get_tracer("user")

    def work(ctx: NodeContext) -> None:
        with tracer.start_as_current_span(f"user-work-{ctx.node_id}"):
            pass

    flow = create_flow("sync-spans").node("a", work).node("b", work).edge("a", "b")
    result = await flow.run(runtime)
    assert result.status == "completed"
    spans = exporter.get_finished_spans()
    for node_id in ("a", "b"):
        (attempt,) = _nodes(spans, node_id)
        (user,) = [s for s in spans if s.name == f"user-work-{node_id}"]
        assert user.parent is not None and user.parent.span_id == attempt.context.span_id


async def test_failed_run_marks_spans_as_errors(tracing: Any) -> None:
    provider, exporter = tracing
    runtime, _ = _runtime(provider)

    def broken(ctx: NodeContext) -> None:
        raise ValueError("bad input")

    result = await create_flow("fail").node("a", broken).run(runtime)
    assert result.status == "failed"
    spans = exporter.get_finished_spans()
    (run,) = _runs(spans)
    (node,) = _nodes(spans, "a")
    assert run.status.status_code == StatusCode.ERROR
    assert (run.attributes or {})["flowcraft.status"] == "failed"
    assert node.status.status_code == StatusCode.ERROR
    assert (node.attributes or {})["flowcraft.status"] == "failed"
    assert any(event.name == "exception" for event in node.events)


async def test_paused_and_resumed_run_is_one_trace(tracing: Any) -> None:
    provider, exporter = tracing
    runtime, _ = _runtime(provider)
    flow = create_flow("hitl").node("ask", "wait").node("after", lambda ctx: ctx.input)
    flow.edge("ask", "after")
    paused = await flow.run(runtime)
    assert paused.status == "awaiting"
    resumed = await flow.resume(runtime, paused.serialized_context, {"output": "yes"}, "ask")
    assert resumed.status == "completed"
    spans = exporter.get_finished_spans()
    first, second = _runs(spans)
    assert (first.attributes or {})["flowcraft.status"] == "awaiting"
    assert (second.attributes or {})["flowcraft.status"] == "completed"
    assert second.context.trace_id == first.context.trace_id
    assert second.parent is not None and second.parent.span_id == first.context.span_id
    (wait,) = _nodes(spans, "ask")
    assert (wait.attributes or {})["flowcraft.status"] == "awaiting"
    (after,) = _nodes(spans, "after")
    assert after.parent is not None and after.parent.span_id == second.context.span_id


def test_trace_context_round_trips(tracing: Any) -> None:
    provider, _ = tracing
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("producer") as span:
        carrier = inject_trace_context()
    assert set(carrier) >= {"traceparent"}
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert carrier["traceparent"].split("-")[1] == trace_id
    extracted = trace.get_current_span(extract_trace_context(carrier)).get_span_context()
    assert extracted.trace_id == span.get_span_context().trace_id
    assert extracted.is_remote
    assert inject_trace_context(extract_trace_context({"traceparent": "garbage"})) == {}


async def test_node_without_local_run_span_joins_the_attached_context(tracing: Any) -> None:
    # What a distributed worker does: no run span in this process, only the carried context.
    provider, exporter = tracing
    otel = OpenTelemetryMiddleware(provider)
    tracer = provider.get_tracer("client")
    with tracer.start_as_current_span("client start") as root:
        carrier = inject_trace_context()
    ctx = NodeContext(
        input=None,
        context=MemoryContext({}),
        params={},
        dependencies={},
        signal=asyncio.Event(),
        node_id="a",
        run_id="elsewhere",
        blueprint_id="remote",
    )

    async def node() -> NodeResult:
        return NodeResult(output=1)

    with attached_trace_context(carrier):
        assert await otel.around_node(ctx, "a", node) == NodeResult(output=1)
    (span,) = _nodes(exporter.get_finished_spans(), "a")
    assert span.context.trace_id == root.get_span_context().trace_id
    assert span.parent is not None and span.parent.span_id == root.get_span_context().span_id


async def test_middleware_passed_to_the_runtime_traces_like_install(tracing: Any) -> None:
    # Issue 16 (5): FlowRuntime(middleware=[otel]) gave node spans in two traces, no run span.
    provider, exporter = tracing
    runtime = FlowRuntime(middleware=[OpenTelemetryMiddleware(provider)])
    calls = {"n": 0}

    def flaky(ctx: NodeContext) -> int:
        calls["n"] += 1
        if calls["n"] < 2:
            raise RuntimeError("boom")
        return 1

    flow = create_flow("passed").node("a", flaky, config={"maxRetries": 2})
    flow.node("b", lambda ctx: 2).edge("a", "b")
    result = await flow.run(runtime)
    assert result.status == "completed"
    spans = exporter.get_finished_spans()
    (run,) = _runs(spans)
    assert (run.attributes or {})["flowcraft.status"] == "completed"
    assert {s.context.trace_id for s in spans} == {run.context.trace_id}
    attempts = _nodes(spans, "a")
    assert [(s.attributes or {})["flowcraft.attempt"] for s in attempts] == [1, 2]
    for span in [*attempts, *_nodes(spans, "b")]:
        assert span.parent is not None and span.parent.span_id == run.context.span_id


async def test_middleware_added_later_traces_and_listens_once(tracing: Any) -> None:
    provider, exporter = tracing
    runtime = FlowRuntime()
    otel = OpenTelemetryMiddleware(provider)
    runtime.middleware.append(otel)
    calls = {"n": 0}

    def fails_in_third_run(ctx: NodeContext) -> int:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return 1

    flow = create_flow("later").node("a", fails_in_third_run, config={"maxRetries": 2})
    results = [await flow.run(runtime), await flow.run(runtime)]
    otel.install(runtime)
    results.append(await flow.run(runtime))
    spans = exporter.get_finished_spans()
    runs = _runs(spans)
    assert [(s.attributes or {})["flowcraft.run_id"] for s in runs] == [r.run_id for r in results]
    assert len({s.context.trace_id for s in runs}) == 3
    assert runtime.middleware == [otel]
    # Listening to the bus twice would split the retried attempt once per subscription.
    third = [s for s in _nodes(spans, "a") if s.context.trace_id == runs[2].context.trace_id]
    assert [(s.attributes or {})["flowcraft.status"] for s in third] == ["failed", "completed"]


async def test_trace_context_of_a_running_run(tracing: Any) -> None:
    provider, _ = tracing
    runtime, otel = _runtime(provider)
    seen: dict[str, dict[str, str]] = {}

    async def peek(ctx: NodeContext) -> None:
        seen["carrier"] = otel.trace_context(ctx.run_id)

    result = await create_flow("peek").node("a", peek).run(runtime)
    assert seen["carrier"]["traceparent"].startswith("00-")
    assert otel.trace_context(result.run_id) == {}
