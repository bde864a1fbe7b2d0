"""The in-memory orchestrator of one run.

Scheduling: ready nodes go to a deque served by at most ``concurrency`` worker tasks; a worker
that finishes a node takes the next ready one itself, so a chain runs in one task and tasks are
created only for real parallelism.

Joins use dead-path elimination: each completed node marks every outgoing edge taken or not
taken; a target whose predecessors have all resolved fires if at least one edge into it was
taken, and is skipped (propagating further) if none was. A run is ``stalled`` only when it ends
with a node that got some but not all of what its join needs.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from flowcraft.blueprint import NodeDefinition
from flowcraft.context import OUTPUTS, MemoryContext
from flowcraft.errors import (
    ExpressionError,
    FlowcraftError,
    ImplementationNotFound,
    NodeExecutionError,
    WorkflowCancelled,
)
from flowcraft.node import CancelSignal, NodeContext, NodeResult, to_node_result
from flowcraft.result import WorkflowStatus
from flowcraft.runtime import _announce as announce
from flowcraft.runtime._executor import (
    Attempts,
    Invoker,
    invoker_for,
    run_with_middleware,
    threaded_body,
)
from flowcraft.runtime._graph import Graph, NodeSpec
from flowcraft.runtime._inputs import resolve_inputs
from flowcraft.runtime._routing import (
    condition_holds,
    input_from_edges,
    routing_edges,
    select_edges,
)
from flowcraft.runtime._threads import run_in_thread

if TYPE_CHECKING:
    from flowcraft.runtime.runtime import FlowRuntime

__all__ = ["RUN_STATE_KEY", "Run"]

_log = logging.getLogger("flowcraft.runtime")

RUN_STATE_KEY = "_runState"
AWAITING_IDS = "_awaitingNodeIds"
AWAITING_DETAILS = "_awaitingDetails"
INPUTS = "_inputs."
_DEAD = -1
_MISSING: Any = object()
_Rescue = tuple[str, Any, FlowcraftError]
"""A pending rescue: the failed primary, its input and its error."""
_Step = tuple[str, NodeSpec, Callable[[NodeContext], Any]]
"""One node of a chain run in a worker thread: its id, its spec and its sync function."""
# A listener of these sees each node when the loop handles it, so nodes are not chained for it.
_LIVE_EVENTS = ("node:start", "node:finish", "context:change")

COMPLETED = "completed"
SKIPPED = "skipped"
FAILED = "failed"
AWAITING = "awaiting"
RUNNING = "running"
READY = "ready"
RESCUED = "rescued"


def _single_attempt(attempts: Attempts) -> bool:
    return attempts.max_attempts == 1 and attempts.timeout is None


class _NoSignal:
    __slots__ = ()

    def is_set(self) -> bool:
        return False


NO_SIGNAL = _NoSignal()


class Run:
    """State and scheduling of one run of one blueprint."""

    def __init__(
        self,
        runtime: FlowRuntime,
        graph: Graph,
        data: dict[str, Any],
        *,
        registry: Mapping[str, Any],
        run_id: str,
        signal: CancelSignal | None,
        concurrency: int,
    ) -> None:
        self.runtime = runtime
        self.graph = graph
        self.blueprint_id = graph.blueprint.id
        self.data = data
        self.registry = registry
        self.run_id = run_id
        self.signal: CancelSignal = signal if signal is not None else NO_SIGNAL
        # The hot path skips is_set() when there is no signal to watch.
        self._watch_signal = signal is not None
        self.concurrency = max(1, concurrency)
        self.bus = runtime.event_bus
        self.middleware = runtime.middleware
        self.evaluator = runtime.evaluator
        self.state: dict[str, str] = {}
        self.arrivals: dict[str, dict[str, int]] = {}
        self.awaiting: dict[str, dict[str, Any]] = {}
        self.errors: list[FlowcraftError] = []
        self.failed = False
        self.cancelled = False
        # Fallback id -> (rescued primary, the primary's input, the primary's error), one entry
        # per pending rescue.
        self._rescues: dict[str, deque[_Rescue]] = {}
        self._ready: deque[str] = deque()
        # Loop controllers that continued while their body still ran: (spec, result, rescues).
        self._continuing: dict[str, tuple[NodeSpec, NodeResult, str | None]] = {}
        self._active = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._done: asyncio.Future[None] | None = None
        self._graph_private = False
        bus = self.bus
        self.context = MemoryContext(
            data, self._on_change if bus is not None and bus.wants("context:change") else None
        )

    # ----------------------------------------------------------------- driving the run

    async def drive(self, initial: list[str]) -> None:
        """Schedule ``initial`` and run until nothing is ready or running."""
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        for node_id in initial:
            self._schedule(node_id)
        self._spawn(0)
        if self._active == 0:
            return
        watcher: asyncio.Task[Any] | None = None
        wait = getattr(self.signal, "wait", None)
        if wait is not None and asyncio.iscoroutinefunction(wait):
            watcher = asyncio.ensure_future(wait())
            watcher.add_done_callback(lambda _: self.cancel())
        try:
            await self._done
        finally:
            if watcher is not None:
                watcher.cancel()

    def cancel(self) -> None:
        """Stop scheduling and cancel running nodes; the run ends ``cancelled``."""
        if self.cancelled or (self._done is not None and self._done.done()):
            return
        self.cancelled = True
        self._ready.clear()
        for task in list(self._tasks):
            task.cancel()

    @property
    def halted(self) -> bool:
        """Whether the run stopped scheduling (failed or cancelled)."""
        return self.failed or self.cancelled or (self._watch_signal and self.signal.is_set())

    def _schedule(self, node_id: str) -> None:
        self.state[node_id] = READY
        self._ready.append(node_id)

    def _spawn(self, takers: int) -> None:
        while self._active < self.concurrency and len(self._ready) > takers:
            self._active += 1
            task = asyncio.ensure_future(self._worker())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            takers += 1

    async def _worker(self) -> None:
        ready = self._ready
        try:
            while ready:
                if self.failed or self.cancelled or (self._watch_signal and self.signal.is_set()):
                    if self.signal.is_set():
                        self.cancelled = True
                    ready.clear()
                    break
                await self._run_node(ready.popleft())
                if self._continuing:
                    self._resume_loops()
                if len(ready) > 1:
                    self._spawn(1)
        except asyncio.CancelledError:
            self.cancelled = True
        except Exception as exc:
            _log.exception("internal error in run %s", self.run_id)
            self._record(FlowcraftError(f"internal error: {exc!r}", run_id=self.run_id), exc)
        finally:
            self._active -= 1
            if self._active == 0 and self._done is not None and not self._done.done():
                self._done.set_result(None)

    # ----------------------------------------------------------------- executing a node

    def _context_for(self, node_id: str, spec: NodeSpec, value: Any) -> NodeContext:
        return NodeContext(
            input=value,
            context=self.context,
            params=spec.definition.params or {},
            dependencies=self.runtime.dependencies,
            signal=self.signal,
            node_id=node_id,
            run_id=self.run_id,
            blueprint_id=self.blueprint_id,
            run=self,
        )

    async def _run_node(self, node_id: str) -> None:
        spec = self.graph.nodes[node_id]
        self.state[node_id] = RUNNING
        rescues: str | None = None
        rescued: FlowcraftError | None = None
        if self._rescues and node_id in self._rescues:
            rescues, value, rescued = self._next_rescue(node_id)
        else:
            try:
                value = self._input_for(node_id, spec)
            except ExpressionError as exc:
                self._fail(node_id, spec, exc, None)
                return
        bus = self.bus
        if bus is not None:
            announce.node_start(bus, self.run_id, self.blueprint_id, node_id, value)
        ctx = self._context_for(node_id, spec, value)
        try:
            invoker, attempts = self._prepare(node_id, spec)
            if rescues is None and not self.middleware:
                body = threaded_body(invoker)
                if body is not None and _single_attempt(attempts) and self._may_chain():
                    chain = self._chain_from(node_id, spec, body)
                    if chain is not None:
                        await self._run_chain(chain, ctx)
                        return
            if self.middleware:

                async def core() -> NodeResult:
                    try:
                        return await invoker(ctx, attempts)
                    except Exception as exc:
                        raise self._as_error(node_id, exc) from exc

                result = await run_with_middleware(self.middleware, ctx, core)
            else:
                result = await invoker(ctx, attempts)
        except WorkflowCancelled:
            self.cancelled = True
            return
        except Exception as exc:
            self._fail(node_id, spec, exc, value, rescued)
            return
        if self.awaiting and node_id in self.awaiting:
            self.state[node_id] = AWAITING
            return
        self.complete(node_id, spec, result, rescues=rescues)

    # ----------------------------------------------------------------- chains of sync nodes

    def _may_chain(self) -> bool:
        bus = self.bus
        return bus is None or not any(bus.wants(event) for event in _LIVE_EVENTS)

    def _chain_from(
        self, node_id: str, spec: NodeSpec, body: Callable[[NodeContext], Any]
    ) -> list[_Step] | None:
        """The chain of threaded sync nodes starting at ``node_id``, or None if it is just that
        node.

        Each next node is the only target of the previous one's only, unconditional edge, has
        no other predecessor and takes that predecessor's output as its input unchanged: what
        runs it next is then known before its predecessor ran, whatever the result.
        """
        steps: list[_Step] = [(node_id, spec, body)]
        nodes = self.graph.nodes
        while True:
            if spec.fallback is not None or spec.is_loop or len(spec.routing_edges) != 1:
                break
            if not spec.unconditional:
                break
            target = spec.routing_edges[0][1].target
            spec = nodes[target]
            if (
                len(spec.preds) != 1
                or spec.has_in_transform
                or spec.definition.inputs is not None
                or spec.is_loop
                or target in self.graph.primaries
                or self.state.get(target)
            ):
                break
            try:
                invoker, attempts = self._prepare(target, spec)
            except Exception:
                break  # the node fails when the engine runs it itself
            following = threaded_body(invoker)
            if following is None or not _single_attempt(attempts):
                break
            steps.append((target, spec, following))
        return steps if len(steps) > 1 else None

    async def _run_chain(self, steps: list[_Step], ctx: NodeContext) -> None:
        """Run a chain of sync nodes in one worker thread, then complete them here in order.

        The chain costs one thread hop instead of one per node, and the loop stays free
        meanwhile. The thread stops at a failure, or once the run is halted.
        """
        outcomes: list[Any] = []
        try:
            await run_in_thread(
                self._chain_in_thread, steps, ctx, len(self.graph.dynamic), outcomes
            )
        except asyncio.CancelledError:
            # The nodes the thread finished before the cancellation keep their completion, as
            # in hops of their own; the one it is still running is abandoned.
            self._complete_chain(steps, ctx, outcomes[:])
            raise
        pending = self._complete_chain(steps, ctx, outcomes)
        if pending is not None:
            node_id, spec, value, awaitable = pending
            outcome: NodeResult | BaseException
            try:
                outcome = to_node_result(await awaitable)
            except BaseException as exc:
                outcome = exc
            self._chained_outcome(node_id, spec, value, outcome)

    def _complete_chain(
        self, steps: list[_Step], ctx: NodeContext, outcomes: list[Any]
    ) -> tuple[str, NodeSpec, Any, Any] | None:
        """Complete each node the thread ran, in order; the last one's awaitable, if it gave
        one, is returned with its node id, spec and input for the caller to await."""
        ready = self._ready
        bus = self.bus
        value = ctx.input
        last = len(outcomes) - 1
        for index, outcome in enumerate(outcomes):
            node_id = steps[index][0]
            spec = self.graph.nodes[node_id]
            if index:
                self.state[node_id] = RUNNING
                value = self.data.get(OUTPUTS + steps[index - 1][0])
                if bus is not None:
                    announce.node_start(bus, self.run_id, self.blueprint_id, node_id, value)
            if not isinstance(outcome, NodeResult | BaseException):
                return node_id, spec, value, outcome
            result = self._chained_outcome(node_id, spec, value, outcome)
            if result is None or index == last:
                return None
            following = steps[index + 1][0]
            if self.halted and not self.state.get(following):
                # The run stopped after the thread ran the next node (it checks before each):
                # that node's completion stands, as it would have in a hop of its own.
                self._route(node_id, spec, result, None)
            # The completion routed to exactly the next node, unless a spliced dynamic node
            # changed the graph meanwhile: the engine then runs the next node when it is due.
            if not ready or ready[-1] != following or self.state.get(following) != READY:
                return None
            ready.pop()
            if self._continuing:
                self._resume_loops()
        return None

    def _chained_outcome(
        self, node_id: str, spec: NodeSpec, value: Any, outcome: NodeResult | BaseException
    ) -> NodeResult | None:
        """Complete a chained node, or fail it, as ``_run_node`` does; its result if it
        completed."""
        if isinstance(outcome, WorkflowCancelled):
            self.cancelled = True
            return None
        if isinstance(outcome, Exception):
            self._fail(node_id, spec, outcome, value)
            return None
        if isinstance(outcome, BaseException):
            raise outcome
        if self.awaiting and node_id in self.awaiting:
            self.state[node_id] = AWAITING
            return None
        self.complete(node_id, spec, outcome)
        return outcome

    def _chain_in_thread(
        self, steps: list[_Step], ctx: NodeContext, dynamic: int, outcomes: list[Any]
    ) -> None:
        # Each outcome is a NodeResult, the exception the node raised, or the awaitable a sync
        # function returned (the loop awaits it), appended as soon as the node ends.
        output: Any = None
        for index, (node_id, spec, body) in enumerate(steps):
            if index:
                # A spliced dynamic node may have changed what follows; the loop decides then.
                if self.halted or len(self.graph.dynamic) != dynamic:
                    return
                ctx = self._context_for(node_id, spec, output)
            try:
                # Each node gets its own copy of the context variables, as in a hop of its own.
                value = contextvars.copy_context().run(body, ctx)
                if inspect.isawaitable(value):
                    outcomes.append(value)
                    return
                result = to_node_result(value)
            except BaseException as exc:  # handed to the loop, which fails the node with it
                outcomes.append(exc)
                return
            outcomes.append(result)
            if result.dynamic_nodes or node_id in self.awaiting:
                return
            output = result.output

    def _prepare(self, node_id: str, spec: NodeSpec) -> tuple[Invoker, Attempts]:
        # The invoker and retry policy are kept on the spec while the implementation and the
        # event bus stay the same, so a node that runs again (loops, later runs) skips this.
        implementation = self.registry.get(spec.definition.uses, _MISSING)
        prepared = spec.prepared
        if prepared is not None and prepared[0] is implementation and prepared[2].bus is self.bus:
            return prepared[1], prepared[2]
        if implementation is _MISSING:
            raise ImplementationNotFound(
                f"node '{node_id}' uses '{spec.definition.uses}', which is in no registry",
                node_id=node_id,
                blueprint_id=self.blueprint_id,
                run_id=self.run_id,
            )
        invoker = invoker_for(implementation)
        attempts = Attempts(spec.max_attempts, spec.retry_delay, spec.timeout, self.bus)
        spec.prepared = (implementation, invoker, attempts)
        return invoker, attempts

    def _next_rescue(self, fallback: str) -> _Rescue:
        queue = self._rescues[fallback]
        rescue = queue.popleft()
        if not queue:
            del self._rescues[fallback]
        return rescue

    def _input_for(self, node_id: str, spec: NodeSpec) -> Any:
        data = self.data
        definition = spec.definition
        if definition.inputs is not None and not spec.has_in_transform:
            return resolve_inputs(data, definition.inputs)
        arrived = self.arrivals.get(node_id)
        if not arrived:
            return data.get(INPUTS + node_id)
        preds = spec.preds
        if len(preds) == 1 and not spec.has_in_transform:
            # One predecessor, no transform: its output, if one of its edges was taken.
            source = preds[0]
            value = data.get(OUTPUTS + source) if arrived.get(source, _DEAD) >= 0 else None
        else:
            taken = [(source, index) for source, index in arrived.items() if index >= 0]
            value = input_from_edges(self.evaluator, self.graph.edges, spec, data, taken)
        self._write(INPUTS + node_id, value)
        return value

    # ----------------------------------------------------------------- outcomes

    def pause(self, node_id: str, details: dict[str, Any]) -> None:
        """Mark ``node_id`` awaiting (called by wait, sleep, webhook and subflow nodes)."""
        self.awaiting[node_id] = details
        ids = list(self.data.get(AWAITING_IDS) or [])
        if node_id not in ids:
            ids.append(node_id)
        self._write(AWAITING_IDS, ids)
        all_details = dict(self.data.get(AWAITING_DETAILS) or {})
        all_details[node_id] = details
        self._write(AWAITING_DETAILS, all_details)

    def unpause(self, node_id: str) -> None:
        """Remove ``node_id`` from the awaiting set (on resume)."""
        self.awaiting.pop(node_id, None)
        ids = [i for i in self.data.get(AWAITING_IDS) or [] if i != node_id]
        details = {k: v for k, v in (self.data.get(AWAITING_DETAILS) or {}).items() if k != node_id}
        if ids:
            self._write(AWAITING_IDS, ids)
            self._write(AWAITING_DETAILS, details)
        else:
            self._drop(AWAITING_IDS)
            self._drop(AWAITING_DETAILS)

    def _write(self, key: str, value: Any) -> None:
        # The engine's own context writes are announced like the nodes' (context:change).
        self.data[key] = value
        if self.context.on_change is not None:
            self._on_change("set", key, value)

    def _drop(self, key: str) -> None:
        if self.data.pop(key, _MISSING) is not _MISSING and self.context.on_change is not None:
            self._on_change("delete", key, None)

    def _as_error(self, node_id: str, exc: BaseException) -> FlowcraftError:
        if isinstance(exc, FlowcraftError):
            if exc.node_id is None:
                exc.node_id = node_id
            exc.blueprint_id = exc.blueprint_id or self.blueprint_id
            exc.run_id = exc.run_id or self.run_id
            return exc
        error = NodeExecutionError(
            f"node '{node_id}' failed: {type(exc).__name__}: {exc}",
            node_id=node_id,
            blueprint_id=self.blueprint_id,
            run_id=self.run_id,
        )
        error.__cause__ = exc
        return error

    def _fail(
        self,
        node_id: str,
        spec: NodeSpec,
        exc: BaseException,
        value: Any,
        rescued: FlowcraftError | None = None,
    ) -> None:
        """Hand a failed node to its fallback, or fail the run. ``rescued``: the error of the
        primary a failing fallback stood in for, which fails the run with it."""
        error = self._as_error(node_id, exc)
        # A fallback standing in for a primary does not hand over to a fallback of its own:
        # nothing would then route along the primary's edges (distributed runs do the same).
        fallback = None if rescued is not None else spec.fallback
        bus = self.bus
        if fallback is not None and not error.is_fatal and not self.halted:
            _log.warning("node %s failed (%s); running fallback %s", node_id, error, fallback)
            if bus is not None:
                announce.node_fallback(
                    bus, self.run_id, self.blueprint_id, node_id, fallback, error
                )
            self.state[node_id] = RESCUED
            # One execution of the fallback per rescued primary, with that primary's input.
            queue = self._rescues.get(fallback)
            if queue is None:
                queue = self._rescues[fallback] = deque()
            queue.append((node_id, value, error))
            self._schedule(fallback)
            return
        self.state[node_id] = FAILED
        if rescued is not None:
            self.errors.append(rescued)
        self._node_error(node_id, error, exc)

    def _node_error(self, node_id: str, error: FlowcraftError, exc: BaseException) -> None:
        bus = self.bus
        if bus is not None:
            announce.node_error(bus, self.run_id, self.blueprint_id, node_id, error)
        self._record(error, exc)

    def _record(self, error: FlowcraftError, exc: BaseException) -> None:
        _log.error("run %s: %s", self.run_id, error, exc_info=exc)
        self.errors.append(error)
        self.failed = True
        self._ready.clear()

    def complete(
        self, node_id: str, spec: NodeSpec, result: NodeResult, *, rescues: str | None = None
    ) -> None:
        """Store a node's result and route from it.

        ``rescues`` names the primary a fallback completed for: the output is stored as that
        primary's too, and the result routes along the fallback's and that primary's edges.
        """
        output = result.output
        self._write(OUTPUTS + node_id, output)
        if rescues is not None:
            self._write(OUTPUTS + rescues, output)
            self.state[rescues] = COMPLETED
        bus = self.bus
        if bus is not None:
            announce.node_finish(bus, self.run_id, self.blueprint_id, node_id, result)
        if result.dynamic_nodes:
            self._splice(node_id, result)
            spec = self.graph.nodes[node_id]
        if spec.fallback is not None and rescues is None:
            self.state[node_id] = COMPLETED
            if self._fallback_unneeded(spec.fallback):
                self._skip(spec.fallback)
        if spec.is_loop:
            self.state[node_id] = ""
            self.arrivals.pop(node_id, None)
            if result.action == "continue":
                if self._body_in_flight(node_id):
                    # A side branch of the iteration that ended is still queued or running:
                    # resetting the body now would drop it. The next iteration waits for it.
                    self._continuing[node_id] = (spec, result, rescues)
                    return
                self._reset_body(node_id)
        else:
            self.state[node_id] = COMPLETED
        self._route_checked(node_id, spec, result, rescues)

    def _route_checked(
        self, node_id: str, spec: NodeSpec, result: NodeResult, rescues: str | None
    ) -> None:
        if self.failed or self.cancelled or (self._watch_signal and self.signal.is_set()):
            return
        try:
            self._route(node_id, spec, result, rescues)
        except ExpressionError as exc:
            # A condition the evaluator failed on: the run fails with the typed error.
            self._node_error(node_id, self._as_error(node_id, exc), exc)

    def _body_in_flight(self, controller: str) -> bool:
        state = self.state
        return any(state.get(n) in (READY, RUNNING) for n in self.graph.loop_bodies[controller])

    def _resume_loops(self) -> None:
        # Continue each loop whose last iteration has drained since its controller continued.
        for controller, (spec, result, rescues) in list(self._continuing.items()):
            if not self._body_in_flight(controller):
                del self._continuing[controller]
                self._reset_body(controller)
                self._route_checked(controller, spec, result, rescues)

    def _route(self, node_id: str, spec: NodeSpec, result: NodeResult, rescues: str | None) -> None:
        arrivals = self.arrivals
        if rescues is None:
            edges = spec.routing_edges
            if spec.unconditional:
                # Every edge is taken (no action, no condition): nothing to select.
                if len(edges) == 1:
                    index, edge = edges[0]
                    target = edge.target
                    arrived = arrivals.get(target)
                    if arrived is None:
                        arrivals[target] = {node_id: index}
                    else:
                        arrived[node_id] = index
                    self._evaluate(target)
                    return
                chosen = None
            elif edges:
                chosen = select_edges(edges, result, lambda e: self._passes(node_id, e, result))
            else:
                return
        else:
            edges = routing_edges(spec, rescues)
            chosen = select_edges(edges, result, lambda e: self._passes(node_id, e, result))
        touched: list[str] = []
        for index, edge in edges:
            target = edge.target
            arrived = arrivals.get(target)
            if arrived is None:
                arrived = arrivals[target] = {}
            if chosen is None or index in chosen:
                arrived[edge.source] = index
            elif spec.is_loop or edge.source in arrived:
                # A loop controller comes back: its untaken edges are not dead paths.
                continue
            else:
                arrived[edge.source] = _DEAD
            touched.append(target)
        for target in dict.fromkeys(touched):
            self._evaluate(target)

    def _passes(self, node_id: str, edge: Any, result: NodeResult) -> bool:
        condition = edge.condition
        if condition is None:
            return True
        passed = condition_holds(self.evaluator, edge, self.data, result)
        bus = self.bus
        if bus is not None:
            announce.condition(bus, self.run_id, self.blueprint_id, node_id, edge, passed)
        return passed

    def _evaluate(self, target: str) -> None:
        if self.state.get(target):
            return
        spec = self.graph.nodes[target]
        arrived = self.arrivals.get(target)
        if not arrived:
            return
        # Arrivals hold an edge index (taken) or _DEAD (-1): max() >= 0 means one was taken.
        if spec.is_loop:
            if max(arrived.values()) >= 0:
                self._schedule(target)
            else:
                entries = self.graph.loop_entries[target]
                if entries and all(arrived.get(e) == _DEAD for e in entries):
                    self._skip(target)
            return
        preds = spec.preds
        if len(preds) == 1:
            # One predecessor resolves all its edges at once.
            index = arrived.get(preds[0])
            if index is None:
                return
            if index >= 0:
                self._schedule(target)
            else:
                self._skip(target)
        elif spec.join_any:
            if max(arrived.values()) >= 0:
                self._schedule(target)
            elif len(arrived) >= len(preds):
                self._skip(target)
        elif len(arrived) >= len(preds):
            if max(arrived.values()) >= 0:
                self._schedule(target)
            else:
                self._skip(target)

    def _skip(self, first: str) -> None:
        work = [first]
        while work:
            node_id = work.pop()
            if self.state.get(node_id):
                continue
            self.state[node_id] = SKIPPED
            fallback = self.graph.nodes[node_id].fallback
            if fallback is not None and self._fallback_unneeded(fallback):
                work.append(fallback)
            for index in self.graph.out_edges[node_id]:
                edge = self.graph.edges[index]
                arrived = self.arrivals.setdefault(edge.target, {})
                if edge.source not in arrived:
                    arrived[edge.source] = _DEAD
                    self._evaluate_for_skip(edge.target, work)

    def _fallback_unneeded(self, fallback: str) -> bool:
        # A fallback node runs only for its primaries; once none of them can fail, it never will.
        if self.graph.in_edges[fallback] or self.state.get(fallback):
            return False
        return all(
            self.state.get(p) in (COMPLETED, SKIPPED) for p in self.graph.primaries[fallback]
        )

    def _evaluate_for_skip(self, target: str, work: list[str]) -> None:
        spec = self.graph.nodes[target]
        if self.state.get(target):
            return
        arrived = self.arrivals.get(target) or {}
        if spec.is_loop:
            entries = self.graph.loop_entries[target]
            if (
                not any(i >= 0 for i in arrived.values())
                and entries
                and all(arrived.get(e) == _DEAD for e in entries)
            ):
                work.append(target)
            return
        if len(arrived) < len(spec.preds):
            return
        if arrived and max(arrived.values()) >= 0:
            self._schedule(target)
        else:
            work.append(target)

    def _reset_body(self, controller: str) -> None:
        body = self.graph.loop_bodies[controller]
        state = self.state
        arrivals = self.arrivals
        for node_id in body:
            state.pop(node_id, None)
            arrivals.pop(node_id, None)

    def _splice(self, emitter: str, result: NodeResult) -> None:
        if not self._graph_private:
            self.graph = self.graph.copy()
            self._graph_private = True
        output = result.output
        gather = output.get("gatherNodeId") if isinstance(output, Mapping) else None
        for raw in result.dynamic_nodes:
            preds = list(raw.get("predecessors") or [emitter])
            definition = NodeDefinition.model_validate(
                {k: v for k, v in raw.items() if k != "predecessors"}
            )
            self.graph.add_node(definition, preds)
            self.graph.dynamic.append((raw, []))
            self.state.pop(definition.id, None)
            self.arrivals.pop(definition.id, None)
            if isinstance(gather, str) and gather in self.graph.nodes:
                self.graph.add_node(self.graph.nodes[gather].definition, [definition.id])

    def _on_change(self, op: str, key: str, value: Any) -> None:
        bus = self.bus
        if bus is not None:
            announce.context_change(bus, self.run_id, op, key, value)

    # ----------------------------------------------------------------- ending

    def status(self) -> WorkflowStatus:
        """The run's status once nothing is running."""
        if self.cancelled or (self.signal.is_set() and not self.failed):
            return "cancelled"
        if self.failed:
            return "failed"
        if self.awaiting:
            return "awaiting"
        for node_id, arrived in self.arrivals.items():
            if arrived and not self.state.get(node_id) and any(i >= 0 for i in arrived.values()):
                return "stalled"
        return "completed"

    def snapshot_state(self) -> dict[str, Any]:
        """The scheduler's state, stored in the context while the run is paused."""
        return {
            "runId": self.run_id,
            "state": {k: v for k, v in self.state.items() if v},
            "arrivals": {k: dict(v) for k, v in self.arrivals.items() if v},
            "dynamic": [raw for raw, _ in self.graph.dynamic],
        }

    def restore_state(self, saved: Mapping[str, Any]) -> None:
        """Restore what :meth:`snapshot_state` stored."""
        for raw in saved.get("dynamic") or []:
            emitter = raw.get("predecessors", [None])[0]
            self._splice(emitter or "", NodeResult(dynamic_nodes=[raw]))
        self.state.update(saved.get("state") or {})
        for target, arrived in (saved.get("arrivals") or {}).items():
            self.arrivals[target] = {k: int(v) for k, v in arrived.items()}

    def derive_state(self) -> None:
        """Rebuild scheduler state from ``_outputs.*`` keys (a context saved by TypeScript)."""
        for node_id in self.graph.nodes:
            if OUTPUTS + node_id in self.data and node_id not in self.awaiting:
                self.state[node_id] = COMPLETED
        for node_id in self.awaiting:
            self.state[node_id] = AWAITING
        for index, edge in enumerate(self.graph.edges):
            if (
                self.state.get(edge.source) == COMPLETED
                and edge.action is None
                and not edge.condition
            ):
                self.arrivals.setdefault(edge.target, {})[edge.source] = index
