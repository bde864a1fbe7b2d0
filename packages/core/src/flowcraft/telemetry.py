"""OpenTelemetry tracing for Flowcraft runs (needs the ``otel`` extra: ``opentelemetry-api``).

Only the OpenTelemetry *API* is used; which SDK and exporter record the spans is the user's
choice (without an SDK every span is a no-op and costs next to nothing).

Spans:

* ``flowcraft.run <blueprintId>``: one per run, opened on ``workflow:start`` (or the first node)
  and ended on ``workflow:finish`` with the run's status. A run that pauses ends its span with
  status ``awaiting``; the span of its resumption is a child of the first one, so a run that
  waits for days is still one trace.
* ``flowcraft.node <nodeId>``: one per node *attempt*, a child of the run span, with attributes
  ``flowcraft.run_id``, ``flowcraft.blueprint_id``, ``flowcraft.node_id``, ``flowcraft.attempt``
  and ``flowcraft.status`` (``completed``, ``failed``, ``awaiting``, ``cancelled``). A node's span
  links the spans of the predecessors whose edges fed it, so a join links every predecessor.

Usage::

    runtime = FlowRuntime(middleware=[OpenTelemetryMiddleware()])
    # or: OpenTelemetryMiddleware().install(runtime), which puts it first among the middleware

Either way the runtime has it subscribe to the runtime's event bus before each run (creating a
bus if there is none), which is how it learns when runs start and end.

Across processes the W3C trace context travels as a plain ``dict`` (:func:`inject_trace_context`
on the producer, :func:`attached_trace_context` around the consumer's work). A node attempt
whose run span is not in this process becomes a child of the current (attached) context.

Distributed runs are one trace too: install the middleware on the client's adapter and on every
worker's (``OpenTelemetryMiddleware().install(adapter)``). ``start_run`` then opens the run span
(a child of the caller's current span) and every job carries its context, so each node attempt
on any worker is a child of it; each node stores its span context in the run's context store
(``_flowcraft.trace.<nodeId>``), so a join links every predecessor's span wherever it ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextvars import Token
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "flowcraft.telemetry needs opentelemetry-api: pip install 'flowcraft-core[otel]'"
    ) from exc

from flowcraft.distributed import DistributedAdapter, current_job
from flowcraft.errors import WorkflowCancelled
from flowcraft.events import EventBus, FlowEvent
from flowcraft.hooks import RunHooks, RunInfo
from flowcraft.middleware import Middleware, NextFn
from flowcraft.node import NodeContext, NodeResult
from flowcraft.result import WorkflowResult

if TYPE_CHECKING:
    from flowcraft.runtime.runtime import FlowRuntime

_Target = TypeVar("_Target", "FlowRuntime", DistributedAdapter)

__all__ = [
    "ATTR_ATTEMPT",
    "ATTR_BLUEPRINT_ID",
    "ATTR_NODE_ID",
    "ATTR_RUN_ID",
    "ATTR_STATUS",
    "InMemorySpanStore",
    "OpenTelemetryMiddleware",
    "SpanStore",
    "attached_trace_context",
    "extract_trace_context",
    "inject_trace_context",
]

_log = logging.getLogger("flowcraft.telemetry")

ATTR_RUN_ID = "flowcraft.run_id"
ATTR_BLUEPRINT_ID = "flowcraft.blueprint_id"
ATTR_NODE_ID = "flowcraft.node_id"
ATTR_ATTEMPT = "flowcraft.attempt"
ATTR_STATUS = "flowcraft.status"

_PROPAGATOR = TraceContextTextMapPropagator()
_INSTRUMENTATION = "flowcraft"


# --------------------------------------------------------------------------- W3C trace context


def inject_trace_context(
    context: otel_context.Context | None = None, *, span: Span | None = None
) -> dict[str, str]:
    """The W3C trace context (``traceparent`` and, if any, ``tracestate``) as a plain dict.

    Args:
        context: The context to serialise; defaults to the current one.
        span: Serialise this span's context instead.

    Returns:
        ``{"traceparent": "00-<trace>-<span>-<flags>", ...}``, or ``{}`` when there is no valid
        span (for instance without an SDK).
    """
    if span is not None:
        context = trace.set_span_in_context(span)
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return carrier


def extract_trace_context(carrier: Mapping[str, str] | None) -> otel_context.Context:
    """The context described by a carrier from :func:`inject_trace_context`.

    A missing or malformed carrier gives an empty context (spans then start new traces).
    """
    return _PROPAGATOR.extract(dict(carrier or {}))


@contextlib.contextmanager
def attached_trace_context(carrier: Mapping[str, str] | None) -> Iterator[otel_context.Context]:
    """Make the carried trace context current for the ``with`` block.

    A distributed worker wraps the handling of one job in it so that the node's span joins the
    run's trace::

        with attached_trace_context(job.get("traceContext")):
            await handle(job)
    """
    ctx = extract_trace_context(carrier)
    token = otel_context.attach(ctx)
    try:
        yield ctx
    finally:
        otel_context.detach(token)


def _span_context_of(carrier: Mapping[str, str]) -> SpanContext | None:
    span_context = trace.get_current_span(extract_trace_context(carrier)).get_span_context()
    return span_context if span_context.is_valid else None


# --------------------------------------------------------------------------- span store


class SpanStore(Protocol):
    """Where node spans are remembered so that successors can link them.

    The in-memory runtime uses :class:`InMemorySpanStore`; a distributed deployment passes one
    backed by its shared store, so a join running on one worker links predecessors' spans made
    on others.
    """

    async def save(self, run_id: str, node_id: str, carrier: dict[str, str]) -> None:
        """Remember the (last) span of ``node_id`` in ``run_id`` as a W3C carrier."""

    async def load(self, run_id: str, node_ids: list[str]) -> list[dict[str, str]]:
        """The carriers of those of ``node_ids`` that have one, in order."""

    async def forget(self, run_id: str) -> None:
        """Drop everything remembered for ``run_id`` (the run has ended)."""


class InMemorySpanStore:
    """A :class:`SpanStore` in a dict, bounded to the ``max_runs`` most recent runs."""

    def __init__(self, max_runs: int = 10_000) -> None:
        self._runs: OrderedDict[str, dict[str, dict[str, str]]] = OrderedDict()
        self._max_runs = max_runs

    async def save(self, run_id: str, node_id: str, carrier: dict[str, str]) -> None:
        """See :meth:`SpanStore.save`."""
        spans = self._runs.get(run_id)
        if spans is None:
            spans = self._runs[run_id] = {}
            while len(self._runs) > self._max_runs:
                self._runs.popitem(last=False)
        spans[node_id] = carrier

    async def load(self, run_id: str, node_ids: list[str]) -> list[dict[str, str]]:
        """See :meth:`SpanStore.load`."""
        spans = self._runs.get(run_id) or {}
        return [spans[node_id] for node_id in node_ids if node_id in spans]

    async def forget(self, run_id: str) -> None:
        """See :meth:`SpanStore.forget`."""
        self._runs.pop(run_id, None)


# --------------------------------------------------------------------------- the middleware


@dataclass(slots=True)
class _Attempt:
    """The open span of one node execution and the context token that made it current."""

    span: Span
    token: Token[otel_context.Context]
    attempt: int
    links: list[Link]
    parent: otel_context.Context | None


class OpenTelemetryMiddleware(Middleware, RunHooks):
    """Traces runs and node attempts with the OpenTelemetry API.

    Args:
        tracer_provider: The provider to take the tracer from; the global one by default.
        span_store: Where node spans of in-memory runs are kept for successors' links (default:
            in memory). Distributed jobs keep theirs in the run's context store instead.
        max_open_runs: Bound on runs whose span is kept open or suspended in this process.

    Pass it in a runtime's ``middleware`` (the runtime then calls :meth:`bind_runtime` before
    each run), or call :meth:`install` on a runtime or a distributed adapter: the event bus tells
    it when runs start, retry and finish; on an adapter, its run hooks open the run span when a
    run is started.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        span_store: SpanStore | None = None,
        max_open_runs: int = 10_000,
    ) -> None:
        self.tracer = trace.get_tracer(_INSTRUMENTATION, tracer_provider=tracer_provider)
        self.span_store: SpanStore = span_store if span_store is not None else InMemorySpanStore()
        self._max_open_runs = max_open_runs
        self._runs: OrderedDict[str, Span] = OrderedDict()
        self._suspended: OrderedDict[str, SpanContext] = OrderedDict()
        self._attempts: dict[tuple[str, str, str], _Attempt] = {}
        self._buses: weakref.WeakSet[EventBus] = weakref.WeakSet()

    # ----------------------------------------------------------------- wiring

    def install(self, target: _Target) -> _Target:
        """Add this middleware to a runtime or distributed adapter and return it.

        It goes first in ``target.middleware`` (so it wraps all others) and is attached to the
        target's event bus, which is created if there is none. On a distributed adapter it is
        also added to ``target.hooks``: the client's ``start_run`` then opens the run span and
        the run's jobs carry its context to the workers.
        """
        if self not in target.middleware:
            target.middleware.insert(0, self)
        self.bind_runtime(target)
        if isinstance(target, DistributedAdapter) and self not in target.hooks:
            target.hooks.append(self)
        return target

    def bind_runtime(self, target: _Target) -> None:
        """Listen to ``target``'s event bus, creating one if it has none.

        A :class:`~flowcraft.runtime.FlowRuntime` calls it before each run for every middleware
        in its list; calling it again is harmless.
        """
        if target.event_bus is None:
            target.event_bus = EventBus()
        self.attach(target.event_bus)

    def attach(self, bus: EventBus) -> None:
        """Listen to run start/resume/finish and retries on ``bus`` (inline, never queued).

        Attaching to a bus already attached to does nothing.
        """
        if bus in self._buses:
            return
        self._buses.add(bus)
        bus.subscribe(
            self.on_event,
            ["workflow:start", "workflow:resume", "workflow:finish", "node:retry"],
            inline=True,
        )

    def on_event(self, event: FlowEvent) -> None:
        """Handle one bus event (public so that other transports can forward events)."""
        payload = event.payload
        run_id = str(payload.get("executionId", ""))
        blueprint_id = str(payload.get("blueprintId", ""))
        if event.type in ("workflow:start", "workflow:resume"):
            self._run_span(run_id, blueprint_id, resumed=event.type == "workflow:resume")
        elif event.type == "workflow:finish":
            self._end_run(run_id, str(payload.get("status", "")), payload.get("errors"))
        elif event.type == "node:retry":
            self._next_attempt(
                (run_id, blueprint_id, str(payload.get("nodeId", ""))),
                int(payload.get("attempt", 0)) + 1,
                str(payload.get("error", "")),
            )

    def trace_context(self, run_id: str) -> dict[str, str]:
        """The W3C carrier of ``run_id``'s run span (for job payloads); ``{}`` if unknown."""
        span = self._runs.get(run_id)
        if span is not None:
            return inject_trace_context(span=span)
        suspended = self._suspended.get(run_id)
        if suspended is not None:
            return inject_trace_context(span=trace.NonRecordingSpan(suspended))
        return {}

    # ----------------------------------------------------------------- distributed runs

    def before_run(self, run: RunInfo) -> None:
        """Open the span of a distributed run being started and give its context to the jobs.

        The span is a child of ``run.trace_context`` if another hook set one, else of the
        current span. It ends at once: no process outlives a distributed run to end it later,
        so the run's outcome is recorded by :meth:`after_run`. In-memory runs are traced
        through the event bus instead.
        """
        if not run.distributed:
            return
        parent = extract_trace_context(run.trace_context) if run.trace_context else None
        span = self.tracer.start_span(
            f"flowcraft.run {run.blueprint_id}",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes={
                ATTR_RUN_ID: run.run_id,
                ATTR_BLUEPRINT_ID: run.blueprint_id,
                "flowcraft.distributed": True,
            },
        )
        run.trace_context = inject_trace_context(span=span)
        span.end()

    def after_run(self, run: RunInfo, result: WorkflowResult) -> None:
        """Record how a distributed run ended or paused: a ``flowcraft.finish <blueprintId>``
        span, child of the run span, with ``flowcraft.status``."""
        if not run.distributed or not run.trace_context:
            return
        span = self.tracer.start_span(
            f"flowcraft.finish {run.blueprint_id}",
            context=extract_trace_context(run.trace_context),
            kind=SpanKind.INTERNAL,
            attributes={ATTR_RUN_ID: run.run_id, ATTR_BLUEPRINT_ID: run.blueprint_id},
        )
        messages = [error.message for error in result.errors]
        _set_run_status(span, result.status, messages[0] if messages else None)
        span.end()

    # ----------------------------------------------------------------- run spans

    def _run_span(self, run_id: str, blueprint_id: str, *, resumed: bool = False) -> Span:
        span = self._runs.get(run_id)
        if span is not None:
            return span
        parent: otel_context.Context | None = None
        earlier = self._suspended.pop(run_id, None)
        if earlier is not None:
            parent = trace.set_span_in_context(trace.NonRecordingSpan(earlier))
        span = self.tracer.start_span(
            f"flowcraft.run {blueprint_id}",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes={
                ATTR_RUN_ID: run_id,
                ATTR_BLUEPRINT_ID: blueprint_id,
                "flowcraft.resumed": resumed or earlier is not None,
            },
        )
        self._runs[run_id] = span
        while len(self._runs) > self._max_open_runs:
            _, stale = self._runs.popitem(last=False)
            stale.end()
        return span

    def _end_run(self, run_id: str, status: str, errors: Any) -> None:
        span = self._runs.pop(run_id, None)
        if span is None:
            return
        message = None
        if isinstance(errors, list) and errors and isinstance(errors[0], Mapping):
            message = str(errors[0].get("message", status))
        _set_run_status(span, status, message)
        if status == "awaiting":
            self._suspended[run_id] = span.get_span_context()
            while len(self._suspended) > self._max_open_runs:
                self._suspended.popitem(last=False)
        span.end()

    # ----------------------------------------------------------------- node spans

    def predecessors(self, ctx: NodeContext) -> list[str]:
        """The predecessors whose edges fed this node (those its span links).

        Reads the in-memory run's join bookkeeping; override it to link others. Distributed
        jobs are not asked: they link what ``CurrentJob.predecessors()`` names.
        """
        run = getattr(ctx, "_run", None)
        arrivals = getattr(run, "arrivals", None)
        if not isinstance(arrivals, Mapping):
            return []
        arrived = arrivals.get(ctx.node_id) or {}
        return [source for source, index in arrived.items() if index >= 0]

    def _start_attempt(
        self,
        ctx: NodeContext,
        attempt: int,
        links: list[Link],
        parent: otel_context.Context | None,
    ) -> tuple[Span, otel_context.Context]:
        span = self.tracer.start_span(
            f"flowcraft.node {ctx.node_id}",
            context=parent,
            kind=SpanKind.INTERNAL,
            links=links,
            attributes={
                ATTR_RUN_ID: ctx.run_id,
                ATTR_BLUEPRINT_ID: ctx.blueprint_id,
                ATTR_NODE_ID: ctx.node_id,
                ATTR_ATTEMPT: attempt,
            },
        )
        return span, trace.set_span_in_context(span, parent)

    async def _parent_and_links(
        self, ctx: NodeContext
    ) -> tuple[otel_context.Context | None, list[Link]]:
        """The parent context of the node's spans and the links to its predecessors' spans.

        In memory the parent is the run span of this process; a distributed job's is the run
        span context the job carries. ``None`` means the current context.
        """
        job = current_job()
        parent: otel_context.Context | None = None
        carriers: list[dict[str, str]] = []
        try:
            if job is None:
                run_span = self._runs.get(ctx.run_id)
                if run_span is not None:
                    parent = trace.set_span_in_context(run_span)
                preds = self.predecessors(ctx)
                if preds:
                    carriers = await self.span_store.load(ctx.run_id, preds)
            else:
                run_carrier, carriers = await job.trace_contexts(await job.predecessors())
                if run_carrier:
                    parent = extract_trace_context(run_carrier)
        except Exception:
            # Tracing never fails a node: it loses its links (or parent) instead.
            _log.warning("could not load the spans linked by node %s", ctx.node_id, exc_info=True)
        links = [Link(sc) for sc in map(_span_context_of, carriers) if sc is not None]
        return parent, links

    async def around_node(self, ctx: NodeContext, node_id: str, next: NextFn) -> Any:
        """Open the node's first attempt span, run the node, close the last attempt span."""
        parent, links = await self._parent_and_links(ctx)
        # Distributed runs make each retry a job of its own, which knows its attempt.
        first = max(1, ctx.attempt)
        span, span_ctx = self._start_attempt(ctx, first, links, parent)
        key = (ctx.run_id, ctx.blueprint_id, node_id)
        state = _Attempt(span, otel_context.attach(span_ctx), first, links, parent)
        self._attempts[key] = state
        status = "completed"
        error: BaseException | None = None
        try:
            result: NodeResult = await next()
            if _paused(ctx, node_id):
                status = "awaiting"
            return result
        except (WorkflowCancelled, asyncio.CancelledError) as exc:
            status = "cancelled"
            error = exc
            raise
        except Exception as exc:
            status = "failed"
            error = exc
            raise
        finally:
            self._attempts.pop(key, None)
            final = state.span
            _finish_span(final, status, error)
            with contextlib.suppress(Exception):
                otel_context.detach(state.token)
            await self._remember(ctx, node_id, inject_trace_context(span=final))

    async def _remember(self, ctx: NodeContext, node_id: str, carrier: dict[str, str]) -> None:
        if not carrier:
            return  # no SDK: nothing a successor could link
        job = current_job()
        try:
            if job is None:
                await self.span_store.save(ctx.run_id, node_id, carrier)
            else:
                await job.save_trace_context(carrier)
        except Exception:
            _log.warning("could not store the span of node %s", node_id, exc_info=True)

    def _next_attempt(self, key: tuple[str, str, str], attempt: int, error: str) -> None:
        state = self._attempts.get(key)
        if state is None:
            return
        old = state.span
        old.set_attribute(ATTR_STATUS, "failed")
        old.set_status(Status(StatusCode.ERROR, error))
        old.end()
        parent = state.parent
        new = self.tracer.start_span(
            f"flowcraft.node {key[2]}",
            context=parent,
            kind=SpanKind.INTERNAL,
            links=state.links,
            attributes={
                ATTR_RUN_ID: key[0],
                ATTR_BLUEPRINT_ID: key[1],
                ATTR_NODE_ID: key[2],
                ATTR_ATTEMPT: attempt,
            },
        )
        state.span = new
        state.attempt = attempt
        # The retry event is emitted inside the node's own task: swap the current span there so
        # spans the user's code opens nest under the live attempt.
        if trace.get_current_span() is old:
            with contextlib.suppress(Exception):
                otel_context.detach(state.token)
            state.token = otel_context.attach(trace.set_span_in_context(new, parent))


def _paused(ctx: NodeContext, node_id: str) -> bool:
    run = getattr(ctx, "_run", None)
    if current_job() is not None:
        # A distributed job's run shim records the pause of its one node.
        return getattr(run, "paused", None) is not None
    return node_id in (getattr(run, "awaiting", None) or {})


def _set_run_status(span: Span, status: str, message: str | None) -> None:
    span.set_attribute(ATTR_STATUS, status)
    if status in ("failed", "stalled"):
        span.set_status(Status(StatusCode.ERROR, message or status))
    else:
        span.set_status(Status(StatusCode.OK))


def _finish_span(span: Span, status: str, error: BaseException | None) -> None:
    span.set_attribute(ATTR_STATUS, status)
    if status == "failed" and error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    elif status != "cancelled":
        span.set_status(Status(StatusCode.OK))
    span.end()
