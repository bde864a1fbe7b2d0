"""One trace per distributed run: client, two workers sharing the jobs, joins linking spans."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="opentelemetry-sdk is a test dependency")

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from flowcraft import NodeContext, create_flow
from flowcraft.distributed import Client, Worker
from flowcraft.flow import Flow
from flowcraft.memory import MemoryAdapter, MemoryBackend
from flowcraft.telemetry import OpenTelemetryMiddleware, inject_trace_context

INSTANCE = "service.instance.id"


async def slow(ctx: NodeContext) -> str:
    # Long enough that the other worker takes the next branch.
    await asyncio.sleep(0.1)
    return ctx.node_id


def gather(ctx: NodeContext) -> list[str]:
    return sorted(ctx.input)


def echo(ctx: NodeContext) -> Any:
    return ctx.input


FLAKY_CALLS: list[int] = []


def flaky(ctx: NodeContext) -> str:
    FLAKY_CALLS.append(ctx.attempt)
    if len(FLAKY_CALLS) < 3:
        raise RuntimeError(f"attempt {len(FLAKY_CALLS)}")
    return "ok"


def fan_in_flow() -> Flow:
    flow = create_flow("fan").node("start", lambda ctx: 0)
    for branch in ("x", "y", "z"):
        flow.node(branch, slow).edge("start", branch)
        flow.edge(branch, "j")
    flow.node("j", gather).node("end", echo).edge("j", "end")
    return flow


@dataclass
class Deployment:
    client: Client
    exporter: InMemorySpanExporter
    workers: list[Worker]
    provider: TracerProvider

    async def stop(self) -> None:
        # Stopping waits for running jobs, so spans of after_run hooks are exported too.
        for worker in self.workers:
            await worker.stop()

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()


def _provider(exporter: InMemorySpanExporter, name: str) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({INSTANCE: name}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
async def deploy() -> AsyncIterator[Any]:
    made: list[Deployment] = []

    async def make(flow: Flow) -> Deployment:
        exporter = InMemorySpanExporter()
        backend = MemoryBackend()
        blueprint = flow.to_blueprint()
        blueprints = {blueprint.id: blueprint}
        workers = []
        for name in ("worker-1", "worker-2"):
            adapter = MemoryAdapter(backend, registry=flow.function_registry, blueprints=blueprints)
            OpenTelemetryMiddleware(_provider(exporter, name)).install(adapter)
            worker = Worker(adapter, concurrency=1, receive_wait=0.02)
            worker.start()
            workers.append(worker)
        client_provider = _provider(exporter, "client")
        client_adapter = MemoryAdapter(backend, blueprints=blueprints)
        OpenTelemetryMiddleware(client_provider).install(client_adapter)
        deployment = Deployment(Client(client_adapter), exporter, workers, client_provider)
        made.append(deployment)
        return deployment

    yield make
    for deployment in made:
        await deployment.stop()


def _node(spans: tuple[ReadableSpan, ...], node_id: str) -> list[ReadableSpan]:
    found = [s for s in spans if (s.attributes or {}).get("flowcraft.node_id") == node_id]
    return sorted(found, key=lambda s: (s.attributes or {}).get("flowcraft.attempt", 0))


def _named(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    (span,) = [s for s in spans if s.name == name]
    return span


async def test_a_run_on_two_workers_is_one_trace_and_the_join_links_every_branch(
    deploy: Any,
) -> None:
    deployment: Deployment = await deploy(fan_in_flow())
    tracer = deployment.provider.get_tracer("app")
    with tracer.start_as_current_span("POST /orders") as request:
        run_id = await deployment.client.start("fan", {})
    result = await deployment.client.wait(run_id, timeout=10)
    await deployment.stop()
    assert result.status == "completed"
    assert result.context["_outputs.end"] == ["x", "y", "z"]
    assert not any(key.startswith("_flowcraft.") for key in result.context)

    spans = deployment.spans()
    run = _named(spans, "flowcraft.run fan")
    trace_id = request.get_span_context().trace_id
    assert run.context.trace_id == trace_id
    assert run.parent is not None and run.parent.span_id == request.get_span_context().span_id
    assert (run.attributes or {})["flowcraft.run_id"] == run_id

    node_spans = {n: _node(spans, n) for n in ("start", "x", "y", "z", "j", "end")}
    for node_id, (span,) in node_spans.items():
        assert span.context.trace_id == trace_id, node_id
        assert span.parent is not None and span.parent.span_id == run.context.span_id, node_id
        assert (span.attributes or {})["flowcraft.status"] == "completed"
    # The two workers shared the jobs, and the trace does not care.
    instances = {s.resource.attributes[INSTANCE] for spans_ in node_spans.values() for s in spans_}
    assert instances == {"worker-1", "worker-2"}

    def linked(node_id: str) -> set[int]:
        return {link.context.span_id for link in node_spans[node_id][0].links}

    def span_id(node_id: str) -> int:
        return node_spans[node_id][0].context.span_id

    assert linked("j") == {span_id("x"), span_id("y"), span_id("z")}
    assert linked("end") == {span_id("j")}
    assert {span_id("start")} == linked("x") == linked("y") == linked("z")
    assert linked("start") == set()

    finish = _named(spans, "flowcraft.finish fan")
    assert finish.context.trace_id == trace_id
    assert finish.parent is not None and finish.parent.span_id == run.context.span_id
    assert (finish.attributes or {})["flowcraft.status"] == "completed"
    assert finish.status.status_code == StatusCode.OK


async def test_retries_are_sibling_attempt_spans_under_the_run(deploy: Any) -> None:
    FLAKY_CALLS.clear()
    flow = create_flow("retry").node("f", flaky, config={"maxRetries": 3})
    deployment: Deployment = await deploy(flow)
    run_id = await deployment.client.start("retry", {})
    result = await deployment.client.wait(run_id, timeout=10)
    await deployment.stop()
    assert result.status == "completed"
    spans = deployment.spans()
    run = _named(spans, "flowcraft.run retry")
    attempts = _node(spans, "f")
    assert [(s.attributes or {})["flowcraft.attempt"] for s in attempts] == [1, 2, 3]
    assert [(s.attributes or {})["flowcraft.status"] for s in attempts] == [
        "failed",
        "failed",
        "completed",
    ]
    for attempt in attempts:
        assert attempt.parent is not None and attempt.parent.span_id == run.context.span_id


async def test_a_resumed_run_stays_in_its_trace(deploy: Any) -> None:
    flow = create_flow("hitl").node("ask", "wait").node("after", echo).node("last", echo)
    flow.edge("ask", "after").edge("after", "last")
    deployment: Deployment = await deploy(flow)
    run_id = await deployment.client.start("hitl", {})
    paused = await deployment.client.wait(run_id, timeout=10)
    assert paused.status == "awaiting"
    # Resume jobs are made without the run's trace context: it is found in the run's store.
    await deployment.client.adapter.resume_with_action(run_id, output="yes")
    result = await deployment.client.wait(run_id, timeout=10)
    await deployment.stop()
    assert result.status == "completed" and result.context["_outputs.last"] == "yes"
    spans = deployment.spans()
    run = _named(spans, "flowcraft.run hitl")
    for node_id, status in (("ask", "awaiting"), ("after", "completed"), ("last", "completed")):
        (span,) = _node(spans, node_id)
        assert span.context.trace_id == run.context.trace_id, node_id
        assert span.parent is not None and span.parent.span_id == run.context.span_id
        assert (span.attributes or {})["flowcraft.status"] == status
    (after,) = _node(spans, "after")
    (last,) = _node(spans, "last")
    assert {link.context.span_id for link in last.links} == {after.context.span_id}
    finishes = [s for s in spans if s.name == "flowcraft.finish hitl"]
    assert sorted((s.attributes or {})["flowcraft.status"] for s in finishes) == [
        "awaiting",
        "completed",
    ]


async def test_failed_run_records_the_error_in_its_finish_span(deploy: Any) -> None:
    def broken(ctx: NodeContext) -> None:
        raise ValueError("bad input")

    flow = create_flow("broken").node("a", broken)
    deployment: Deployment = await deploy(flow)
    run_id = await deployment.client.start("broken", {})
    result = await deployment.client.wait(run_id, timeout=10)
    await deployment.stop()
    assert result.status == "failed"
    spans = deployment.spans()
    finish = _named(spans, "flowcraft.finish broken")
    assert finish.status.status_code == StatusCode.ERROR
    assert "bad input" in (finish.status.description or "")
    (node,) = _node(spans, "a")
    assert node.status.status_code == StatusCode.ERROR


async def test_start_run_continues_a_given_trace_context(deploy: Any) -> None:
    deployment: Deployment = await deploy(create_flow("child").node("only", echo))
    tracer = deployment.provider.get_tracer("parent")
    with tracer.start_as_current_span("parent run") as parent:
        carrier = inject_trace_context()
    # Not current any more: the run continues the carried context (a subflow's parent run's).
    run_id = await deployment.client.adapter.start_run("child", {}, trace_context=carrier)
    assert (await deployment.client.wait(run_id, timeout=10)).status == "completed"
    await deployment.stop()
    spans = deployment.spans()
    run = _named(spans, "flowcraft.run child")
    assert run.parent is not None and run.parent.span_id == parent.get_span_context().span_id
    (node,) = _node(spans, "only")
    assert node.context.trace_id == parent.get_span_context().trace_id
