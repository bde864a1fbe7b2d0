"""``FlowRuntime``: runs blueprints in this process."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flowcraft.blueprint import Blueprint, load_blueprint
from flowcraft.errors import FlowcraftError, ResumeError, SerializationError
from flowcraft.evaluator import Evaluator, SafeEvaluator
from flowcraft.events import EventBus
from flowcraft.hooks import RunHooks, RunInfo, call_after_run, call_before_run
from flowcraft.middleware import Middleware
from flowcraft.node import CancelSignal
from flowcraft.result import WorkflowResult, WorkflowStatus
from flowcraft.runtime._engine import AWAITING_IDS, RUN_STATE_KEY, Run
from flowcraft.runtime._graph import graph_for
from flowcraft.runtime._scheduler import Scheduler
from flowcraft.serializer import JsonSerializer, Serializer

__all__ = ["DEFAULT_CONCURRENCY", "BlueprintSource", "FlowRuntime"]

DEFAULT_CONCURRENCY = 10
"""Nodes of one run executing at once unless ``concurrency`` says otherwise."""

BlueprintSource = Blueprint | Mapping[str, Any] | str | Path


class FlowRuntime:
    """Runs blueprints in memory.

    Args:
        registry: ``uses`` key → implementation (function or :class:`~flowcraft.node.Node`).
        blueprints: Blueprint id → blueprint, for subflows and the timer scheduler.
        dependencies: Services handed to every node as ``ctx.dependencies``.
        middleware: Wrappers around every node (see :mod:`flowcraft.middleware`). A middleware
            with a ``bind_runtime(runtime)`` method, such as
            :class:`~flowcraft.telemetry.OpenTelemetryMiddleware`, has it called before each
            run (so also when added to ``runtime.middleware`` later): it may subscribe to the
            event bus, or create one, to learn more than its node hooks tell. It must be
            idempotent.
        event_bus: Receives workflow events; nothing is built when nobody listens.
        evaluator: Evaluates edge conditions and transforms; defaults to the safe evaluator.
        serializer: Turns contexts into text; defaults to JSON.
        logger: Where the runtime logs; defaults to the ``flowcraft`` logger.
        concurrency: Default limit of nodes of one run executing at once.
        hooks: Called before each run and with each result (see :mod:`flowcraft.hooks`).
    """

    def __init__(
        self,
        *,
        registry: Mapping[str, Any] | None = None,
        blueprints: Mapping[str, Blueprint] | None = None,
        dependencies: Mapping[str, Any] | None = None,
        middleware: list[Middleware] | None = None,
        event_bus: EventBus | None = None,
        evaluator: Evaluator | None = None,
        serializer: Serializer | None = None,
        logger: logging.Logger | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        hooks: list[RunHooks] | None = None,
    ) -> None:
        from flowcraft.builtins import BUILTINS

        self.registry: dict[str, Any] = {**BUILTINS, **(registry or {})}
        self.blueprints: dict[str, Blueprint] = dict(blueprints or {})
        self.dependencies: Mapping[str, Any] = dict(dependencies or {})
        self.middleware: list[Middleware] = list(middleware or [])
        self.event_bus = event_bus
        self.evaluator: Evaluator = evaluator or SafeEvaluator()
        self.serializer: Serializer = serializer or JsonSerializer()
        self.logger = logger or logging.getLogger("flowcraft")
        self.concurrency = concurrency
        self.hooks: list[RunHooks] = list(hooks or [])
        self.scheduler = Scheduler(self)
        self._runs: dict[str, Run] = {}

    # ----------------------------------------------------------------- public API

    async def run(
        self,
        blueprint: BlueprintSource,
        initial_state: Mapping[str, Any] | str | None = None,
        *,
        function_registry: Mapping[str, Any] | None = None,
        concurrency: int | None = None,
        signal: CancelSignal | None = None,
        run_id: str | None = None,
    ) -> WorkflowResult:
        """Run a blueprint to its end (or until it pauses).

        Args:
            blueprint: A :class:`Blueprint`, its JSON (dict, text or file) or a registered id.
            initial_state: The starting context, as a mapping or serialized text.
            function_registry: Implementations for this run; they override the runtime's.
            concurrency: Limit of nodes executing at once (default: the runtime's).
            signal: Cancels the run when set (e.g. an :class:`asyncio.Event`).
            run_id: The run's id; a random UUID by default.

        Returns:
            The :class:`WorkflowResult`; node failures are reported in it, not raised.

        Raises:
            BlueprintError: The blueprint is invalid.
            ExpressionError: The evaluator rejects an edge condition or transform or a loop
                condition; the message names the edge (``source -> target``) or the controller
                and ``node_id`` is the edge's source. Checked before any node runs.
            SerializationError: ``initial_state`` text is not valid JSON.
        """
        bp = self.resolve_blueprint(blueprint)
        data = self._state_dict(initial_state)
        run = self._new_run(bp, data, function_registry, concurrency, signal, run_id)
        info = await self._before_run(run, resumed=False)
        return await self._drive(run, run.graph.start_nodes, info, start=True)

    async def resume(
        self,
        blueprint: BlueprintSource,
        state: Mapping[str, Any] | str,
        resume_data: Mapping[str, Any] | None = None,
        node_id: str | None = None,
        *,
        function_registry: Mapping[str, Any] | None = None,
        concurrency: int | None = None,
        signal: CancelSignal | None = None,
    ) -> WorkflowResult:
        """Continue a paused run at one of its awaiting nodes.

        Args:
            blueprint: The run's blueprint.
            state: The paused run's ``serialized_context`` (or context mapping).
            resume_data: ``{"output": ..., "action": ...}``; the action routes like any node's.
            node_id: The awaiting node to resume; defaults to the first awaiting one.
            function_registry: As for :meth:`run`.
            concurrency: As for :meth:`run`.
            signal: As for :meth:`run`.

        Raises:
            ResumeError: Nothing awaits, ``node_id`` is not awaiting, or ``resume_data`` is bad.
            BlueprintError: As for :meth:`run`.
            ExpressionError: As for :meth:`run`.
        """
        bp = self.resolve_blueprint(blueprint)
        data = self._state_dict(state)
        output, action = _check_resume_data(resume_data)
        awaiting = list(data.get(AWAITING_IDS) or [])
        if not awaiting:
            raise ResumeError(f"run of blueprint '{bp.id}' has no awaiting node to resume")
        target = node_id if node_id is not None else awaiting[0]
        if target not in awaiting:
            raise ResumeError(
                f"node '{target}' is not awaiting (awaiting: {', '.join(awaiting)})",
                node_id=target,
                blueprint_id=bp.id,
            )
        saved = data.pop(RUN_STATE_KEY, None)
        run_id = saved.get("runId") if isinstance(saved, Mapping) else None
        run = self._new_run(bp, data, function_registry, concurrency, signal, run_id)
        details = data.get("_awaitingDetails") or {}
        for awaiting_id in awaiting:
            run.awaiting[awaiting_id] = dict(details.get(awaiting_id) or {})
        if isinstance(saved, Mapping):
            run.restore_state(saved)
        else:
            run.derive_state()
        info = await self._before_run(run, resumed=True)
        if self.event_bus is not None:
            self.event_bus.emit(
                "workflow:resume",
                {"blueprintId": bp.id, "executionId": run.run_id, "nodeId": target},
            )
        from flowcraft.builtins import resume_awaiting_node

        spec = run.graph.nodes[target]
        run.unpause(target)
        try:
            result = await resume_awaiting_node(run, target, spec, output, action)
        except FlowcraftError as exc:
            run.errors.append(exc)
            run.failed = True
            return await self._end(run, info)
        if target in run.awaiting:
            run.state[target] = "awaiting"
            return await self._end(run, info)
        run.complete(target, spec, result)
        return await self._drive(run, [], info, start=False)

    def run_sync(
        self,
        blueprint: BlueprintSource,
        initial_state: Mapping[str, Any] | str | None = None,
        **options: Any,
    ) -> WorkflowResult:
        """Blocking :meth:`run` for scripts (starts its own event loop)."""
        return asyncio.run(self.run(blueprint, initial_state, **options))

    def cancel(self, run_id: str) -> bool:
        """Cancel a run in progress; whether it was found."""
        run = self._runs.get(run_id)
        if run is None:
            return False
        run.cancel()
        return True

    def resolve_blueprint(self, blueprint: BlueprintSource) -> Blueprint:
        """A :class:`Blueprint` from any accepted form, including a registered id."""
        if isinstance(blueprint, Blueprint):
            return blueprint
        if isinstance(blueprint, str) and blueprint in self.blueprints:
            return self.blueprints[blueprint]
        return load_blueprint(blueprint)

    # ----------------------------------------------------------------- internals

    def _state_dict(self, state: Mapping[str, Any] | str | None) -> dict[str, Any]:
        if state is None:
            return {}
        if isinstance(state, str | bytes):
            value = self.serializer.loads(state)
            if not isinstance(value, dict):
                raise SerializationError("serialized state must be a JSON object")
            return value
        return dict(state)

    def _new_run(
        self,
        blueprint: Blueprint,
        data: dict[str, Any],
        function_registry: Mapping[str, Any] | None,
        concurrency: int | None,
        signal: CancelSignal | None,
        run_id: str | None,
    ) -> Run:
        registry = {**self.registry, **function_registry} if function_registry else self.registry
        graph = graph_for(blueprint)
        graph.check_expressions(self.evaluator)
        # Before the run exists: it takes the event bus a middleware may create here.
        for middleware in self.middleware:
            bind = getattr(middleware, "bind_runtime", None)
            if bind is not None:
                bind(self)
        return Run(
            self,
            graph,
            data,
            registry=registry,
            run_id=run_id or str(uuid.uuid4()),
            signal=signal,
            concurrency=concurrency if concurrency and concurrency > 0 else self.concurrency,
        )

    async def _before_run(self, run: Run, *, resumed: bool) -> RunInfo | None:
        # No hooks, no RunInfo: the hot path of hook-less runtimes stays as it was.
        if not self.hooks:
            return None
        info = RunInfo(
            run_id=run.run_id,
            blueprint_id=run.blueprint_id,
            blueprint=run.graph.blueprint,
            registry=run.registry,
            resumed=resumed,
        )
        await call_before_run(self.hooks, info)
        return info

    async def _end(self, run: Run, info: RunInfo | None) -> WorkflowResult:
        result = self._finish(run)
        if info is not None:
            await call_after_run(self.hooks, info, result)
        return result

    async def _drive(
        self, run: Run, initial: list[str], info: RunInfo | None, *, start: bool
    ) -> WorkflowResult:
        bus = self.event_bus
        if start and bus is not None and bus.wants("workflow:start"):
            bus.emit("workflow:start", {"blueprintId": run.blueprint_id, "executionId": run.run_id})
        self._runs[run.run_id] = run
        try:
            await run.drive(initial)
        finally:
            self._runs.pop(run.run_id, None)
        return await self._end(run, info)

    async def run_child(
        self,
        blueprint: Blueprint,
        data: dict[str, Any],
        parent: Run,
        resume: tuple[str, Any, str | None] | None = None,
    ) -> tuple[WorkflowStatus, Run]:
        """Run (or resume) a subflow inside ``parent``; used by the ``subflow`` node."""
        graph = graph_for(blueprint)
        graph.check_expressions(self.evaluator)
        run = Run(
            self,
            graph,
            data,
            registry=parent.registry,
            run_id=parent.run_id,
            signal=parent.signal,
            concurrency=parent.concurrency,
        )
        if resume is None:
            await run.drive(run.graph.start_nodes)
            return run.status(), run
        node_id, output, action = resume
        saved = data.pop(RUN_STATE_KEY, None)
        details = data.get("_awaitingDetails") or {}
        for awaiting_id in data.get(AWAITING_IDS) or []:
            run.awaiting[awaiting_id] = dict(details.get(awaiting_id) or {})
        if isinstance(saved, Mapping):
            run.restore_state(saved)
        else:
            run.derive_state()
        from flowcraft.builtins import resume_awaiting_node

        spec = run.graph.nodes[node_id]
        run.unpause(node_id)
        result = await resume_awaiting_node(run, node_id, spec, output, action)
        if node_id in run.awaiting:
            run.state[node_id] = "awaiting"
            return "awaiting", run
        run.complete(node_id, spec, result)
        await run.drive([])
        return run.status(), run

    def _finish(self, run: Run) -> WorkflowResult:
        status = run.status()
        data = run.data
        if status == "awaiting":
            data[RUN_STATE_KEY] = run.snapshot_state()
        errors = list(run.errors)
        try:
            serialized = self.serializer.dumps(data)
        except SerializationError as exc:
            errors.append(exc)
            status = "failed"
            serialized = ""
        bus = self.event_bus
        if bus is not None:
            payload = {"blueprintId": run.blueprint_id, "executionId": run.run_id}
            if status == "stalled" and bus.wants("workflow:stall"):
                bus.emit("workflow:stall", payload)
            if status in ("awaiting", "stalled") and bus.wants("workflow:pause"):
                bus.emit("workflow:pause", payload)
            if bus.wants("workflow:finish"):
                bus.emit(
                    "workflow:finish",
                    {**payload, "status": status, "errors": [e.to_dict() for e in errors]},
                )
        result = WorkflowResult(
            status=status,
            context=data,
            serialized_context=serialized,
            errors=errors,
            run_id=run.run_id,
        )
        if status == "awaiting":
            self.scheduler.observe(run.graph.blueprint, result, run.registry)
        else:
            self.scheduler.forget(run.run_id, result)
        return result


def _check_resume_data(resume_data: Mapping[str, Any] | None) -> tuple[Any, str | None]:
    if resume_data is None:
        return _UNSET, None
    if not isinstance(resume_data, Mapping):
        raise ResumeError(
            f"resume data must be a mapping with 'output' and/or 'action', not"
            f" {type(resume_data).__name__}"
        )
    unknown = set(resume_data) - {"output", "action"}
    if unknown:
        raise ResumeError(f"resume data has unknown keys: {', '.join(sorted(unknown))}")
    action = resume_data.get("action")
    if action is not None and not isinstance(action, str):
        raise ResumeError(f"resume action must be a string, not {type(action).__name__}")
    return resume_data.get("output", _UNSET), action


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"


_UNSET: Any = _Unset()
UNSET = _UNSET
"""Marks resume data without an ``output`` (the node's own default output is used)."""
