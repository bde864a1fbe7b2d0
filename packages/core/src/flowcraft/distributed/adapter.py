"""``BaseDistributedAdapter``: runs one node per queued job, for any backend.

A backend subclasses it and implements the queue hooks (``_receive``, ``_enqueue``, ``_ack``,
``_dead_letter``, ``_release``, ``_extend_lease``) and the result channel (``_publish_result``,
``_wait_for_publish``), and hands in its two stores. Everything else — job handling,
idempotency under redelivery, routing, joins, dead paths, fallbacks, pausing, timers, version
checks, cancellation and the one final result — lives here and in ``_orchestration.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from flowcraft.blueprint import Blueprint, EdgeDefinition
from flowcraft.context import OUTPUTS
from flowcraft.distributed._execute import (
    Outcome,
    Prefetch,
    announcer,
    execute_node,
    failure_error,
    prefetch_keys,
)
from flowcraft.distributed._hop import ArrivalRead, Hop, HopCommit, HopTarget
from flowcraft.distributed._keys import AWAITING, DYNAMIC, PROGRESS, TRACE, Keys
from flowcraft.distributed._orchestration import (
    RESUME,
    STATUS,
    Orchestration,
    job_id,
    parse_job_id,
)
from flowcraft.distributed._protocols import ContextStore, CoordinationStore, Delivery, JobPayload
from flowcraft.distributed._subflow import child_awaits, child_run_id, subflow_job
from flowcraft.distributed._ticker import Ticker
from flowcraft.errors import (
    DeliveryLimitExceeded,
    ExpressionError,
    FlowcraftError,
    JobRejected,
    ResumeError,
    SerializationError,
)
from flowcraft.evaluator import Evaluator, SafeEvaluator
from flowcraft.events import EventBus
from flowcraft.hooks import RunHooks, RunInfo, call_before_run
from flowcraft.middleware import Middleware
from flowcraft.node import NodeResult, PatchOperation
from flowcraft.result import WorkflowResult
from flowcraft.runtime import _announce as announce
from flowcraft.runtime._graph import Graph, NodeSpec, graph_for
from flowcraft.runtime._routing import condition_holds, routing_edges, select_edges

__all__ = ["BaseDistributedAdapter", "DeliveryLimitExceeded", "JobRejected"]

_log = logging.getLogger("flowcraft.distributed")
_UNSET: Any = object()
_OPS = "ops"
"""Field of a stored result record: the job's context writes, when the generic path stores
them after the record."""


class BaseDistributedAdapter(Orchestration, ABC):
    """The orchestration of distributed runs over a backend's queue and stores.

    Args:
        coordination: The backend's coordination store.
        context: The backend's context store.
        registry: ``uses`` key → implementation; built-ins are included.
        blueprints: Blueprint id → blueprint the workers can run.
        dependencies: Services handed to every node as ``ctx.dependencies``.
        middleware: Wrappers around every node.
        event_bus: Receives ``job:*``, ``node:start`` / ``finish`` / ``error`` /
            ``fallback`` / ``retry`` / ``skipped``, ``edge:evaluate``, ``context:change``,
            ``workflow:start`` (from :meth:`start_run`) and ``workflow:finish`` events, each
            with its ``executionId``.
        evaluator: Evaluates conditions and transforms; the safe evaluator by default.
        namespace: Prefix of every coordination key.
        ttl: Seconds coordination keys live (refreshed as they are written).
        lease: Seconds a delivered job stays invisible; the heartbeat extends it.
        cancel_poll: Seconds between checks, while a node runs, for a cancelled run.
        hooks: Run hooks: ``before_run`` in :meth:`start_run`, ``after_run`` where a result is
            published (see :mod:`flowcraft.hooks`).
    """

    def __init__(
        self,
        *,
        coordination: CoordinationStore,
        context: ContextStore,
        registry: Mapping[str, Any] | None = None,
        blueprints: Mapping[str, Blueprint] | None = None,
        dependencies: Mapping[str, Any] | None = None,
        middleware: list[Middleware] | None = None,
        event_bus: EventBus | None = None,
        evaluator: Evaluator | None = None,
        namespace: str = "flowcraft",
        ttl: float = 7 * 86400,
        lease: float = 30.0,
        cancel_poll: float = 0.5,
        hooks: list[RunHooks] | None = None,
    ) -> None:
        from flowcraft.builtins import BUILTINS

        self.coordination = coordination
        self.context = context
        # Subflows run as child runs here, not inside the node as in memory.
        self.registry: dict[str, Any] = {**BUILTINS, "subflow": subflow_job, **(registry or {})}
        self.blueprints = dict(blueprints or {})
        self.dependencies: Mapping[str, Any] = dict(dependencies or {})
        self.middleware: list[Middleware] = list(middleware or [])
        self.event_bus = event_bus
        self.evaluator = evaluator or SafeEvaluator()
        self.keys = Keys(namespace)
        self.ttl = ttl
        self.lease = lease
        self.cancel_poll = cancel_poll
        self.hooks: list[RunHooks] = list(hooks or [])
        self._graphs: dict[tuple[str, frozenset[str]], Graph] = {}
        self._renewals = Ticker(lease / 3, "lease heartbeat")
        self._watches = Ticker(cancel_poll, "cancellation watcher")

    # ----------------------------------------------------------------- backend hooks

    @abstractmethod
    async def _receive(self, max_jobs: int, wait: float) -> list[Delivery]:
        """Up to ``max_jobs`` deliveries, waiting at most ``wait`` seconds for the first."""

    @abstractmethod
    async def _enqueue(self, body: str, delay: float = 0.0) -> None:
        """Put a job on the queue, visible after ``delay`` seconds."""

    @abstractmethod
    async def _ack(self, delivery: Delivery) -> None:
        """Remove a handled job for good."""

    @abstractmethod
    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a job that cannot be handled to the dead-letter queue, with the reason."""

    @abstractmethod
    async def _release(self, delivery: Delivery) -> None:
        """Make a job visible again now (a worker shutting down hands it back)."""

    async def _unsettled(self, delivery: Delivery) -> None:
        """A job whose handling failed in the backend was left unacked: make it deliverable
        again after the lease.

        The default does nothing, for queues where an unrenewed lease runs out by itself. A
        queue whose client renews the lease as long as the job is held must hand it back here.
        """

    @abstractmethod
    async def _extend_lease(self, delivery: Delivery, seconds: float) -> None:
        """Keep a job invisible for another ``seconds`` (the heartbeat calls this)."""

    @abstractmethod
    async def _publish_result(
        self, run_id: str, status: str, errors: list[FlowcraftError] | None = None
    ) -> None:
        """Wake the clients waiting on ``run_id`` (the result is already stored; ``errors``
        are its errors when the caller knows them, None when they must be read)."""

    @abstractmethod
    async def _wait_for_publish(self, run_id: str, timeout: float) -> None:
        """Return when ``run_id`` may have published, or after ``timeout`` seconds."""

    async def _read_job(
        self, run_id: str, keys: list[str], set_keys: list[str], context_keys: list[str] | None
    ) -> tuple[list[str | None], list[set[str]], dict[str, Any]]:
        """What a job reads when it arrives: coordination ``keys`` and ``set_keys`` (as
        ``CoordinationStore.read``) and the present ``context_keys`` of the run.

        Backends whose two stores share a server override this to read all in one round trip.
        """
        strings, sets = await self.coordination.read(keys, set_keys)
        data = await self.context.get_many(run_id, context_keys) if context_keys else {}
        return strings, sets, data

    _reads_ahead = False
    """Whether the backend delivers queued jobs with their arrival read (then every hop target
    carries it, see ``_hop.py``)."""

    async def _commit_hop(self, delivery: Delivery, hop: Hop) -> HopCommit | None:
        """Apply ``hop`` in one atomic step (see :class:`~flowcraft.distributed._hop.Hop`).

        None (the default) means the backend has no such step and the generic path runs.
        """
        return None

    async def close(self) -> None:
        """Release backend connections; safe to call repeatedly."""

    async def stop_receiving(self) -> None:
        """Stop fetching jobs: a stopping worker calls this before its running jobs finish.

        Backends whose client prefetches jobs hand the ones not yet delivered back to the
        queue here; the default does nothing.
        """

    def abandon(self) -> None:
        """Drop the queue without acking or releasing anything, as a killed process would.

        Fault tests call this (through :meth:`Worker.kill`) so that a backend whose client
        renews leases in the background stops renewing them.
        """

    # ----------------------------------------------------------------- client operations

    async def start_run(
        self,
        blueprint_id: str,
        initial_context: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        *,
        trace_context: Mapping[str, str] | None = None,
    ) -> str:
        """Store the initial context and enqueue the start nodes; the run id.

        ``trace_context`` is a W3C carrier the run continues (e.g. its parent run's): run hooks
        see it as ``RunInfo.trace_context`` and may replace it; the run's jobs carry the result.

        Raises:
            JobRejected: The blueprint is not registered.
            ExpressionError: The evaluator rejects a condition, transform or loop condition of
                the blueprint (checked before anything is stored, as in memory).
            Exception: Whatever a ``before_run`` hook raised (nothing is stored then).
        """
        import uuid

        blueprint = self._blueprint(blueprint_id)
        run_id = run_id or str(uuid.uuid4())
        graph = graph_of_blueprint(blueprint)
        graph.check_expressions(self.evaluator)
        info = RunInfo(
            run_id,
            blueprint_id,
            blueprint,
            self.registry,
            distributed=True,
            trace_context=dict(trace_context or {}),
        )
        await call_before_run(self.hooks, info)
        ops = [{"op": "set", "key": k, "value": v} for k, v in (initial_context or {}).items()]
        if info.trace_context:
            # Stored too, so that jobs made later without it (resumes, reconciles) can find it.
            ops.append({"op": "set", "key": TRACE, "value": info.trace_context})
        ops.append({"op": "set", "key": "blueprintId", "value": blueprint_id})
        ops.append({"op": "set", "key": "blueprintVersion", "value": blueprint.version})
        ops.append({"op": "set", "key": PROGRESS, "value": time.time()})
        # A run id started again (a redelivered subflow job starts its child again) keeps the
        # context its jobs may have changed since; every step below is idempotent.
        if await self.coordination.get(self.keys.meta(run_id)) is None:
            await self.context.patch(run_id, ops)
        meta = orjson.dumps([blueprint_id, blueprint.version]).decode()
        enqueued = self.keys.enqueued(run_id)
        # Independent writes, made concurrently: one round trip instead of one each (a
        # backend that batches sends them together). Every start job counts as in flight
        # before any is enqueued, or the first to finish would see an empty frontier and end
        # the run.
        await asyncio.gather(
            self.coordination.set_if_not_exist(self.keys.meta(run_id), meta, self.ttl),
            self.coordination.add_to_set(self.keys.runs, run_id, self.ttl),
            *(
                self.coordination.add_to_set(enqueued, job_id(node, 0), self.ttl)
                for node in graph.start_nodes
            ),
        )
        bus = self.event_bus
        if bus is not None and bus.wants("workflow:start"):
            bus.emit("workflow:start", {"blueprintId": blueprint_id, "executionId": run_id})
        await asyncio.gather(
            *(
                self.enqueue_job(
                    JobPayload(
                        run_id=run_id,
                        blueprint_id=blueprint_id,
                        node_id=node,
                        trace_context=info.trace_context or None,
                    ),
                    job_id(node, 0),
                    fence=self.keys.fire(run_id, node, 0),
                )
                for node in graph.start_nodes
            )
        )
        return run_id

    async def wait_result(self, run_id: str, timeout: float | None = None) -> WorkflowResult:
        """Wait by push until the run finishes or awaits a resume.

        Raises:
            TimeoutError: Nothing was published within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            result = await self.final_result(run_id)
            if result is not None:
                return result
            remaining = 60.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"run '{run_id}' did not finish within {timeout} s")
            await self._wait_for_publish(run_id, min(remaining, 60.0))

    async def status(self, run_id: str) -> str:
        """``completed``/``failed``/``stalled``/``cancelled``, ``awaiting``, ``running``, or
        ``unknown`` for a run id never started."""
        raw = await self.coordination.get(self.keys.final(run_id))
        if raw is not None:
            return str(orjson.loads(raw)["status"])
        if await self.coordination.get(self.keys.meta(run_id)) is None:
            return "unknown"
        # Parked alone is not awaiting: a sleeping node or a running subflow is parked too.
        if await self.context.get(run_id, STATUS) == "awaiting" and await self.coordination.members(
            self.keys.parked(run_id)
        ):
            return "awaiting"
        return "running"

    async def cancel(self, run_id: str) -> bool:
        """Mark the run cancelled; whether this call ended it (false if already finished)."""
        return await self.publish_final(run_id, "cancelled")

    async def resume_with_action(
        self,
        run_id: str,
        action: str | None = None,
        output: Any = _UNSET,
        node_id: str | None = None,
    ) -> str:
        """Complete an awaiting node with ``output`` and route by ``action``; its node id.

        Raises:
            ResumeError: The run is finished, nothing awaits, or ``node_id`` is not awaiting.
        """
        if await self.coordination.get(self.keys.final(run_id)) is not None:
            raise ResumeError(f"run '{run_id}' is finished and cannot be resumed", run_id=run_id)
        parked = [
            parse_job_id(m) for m in await self.coordination.members(self.keys.parked(run_id))
        ]
        details = await self.context.get_many(run_id, [AWAITING + n for n, _, _ in parked])
        candidates: list[tuple[str, int]] = []
        children: dict[str, str] = {}
        for n, i, _ in parked:
            if node_id is not None and n != node_id:
                continue
            if (details.get(AWAITING + n) or {}).get("reason") == "subflow":
                # A subflow node awaits while its child does; the resume goes to the child.
                if not await child_awaits(self, run_id, n, i):
                    continue
                children[n] = child_run_id(run_id, n, i)
            candidates.append((n, i))
        if not candidates:
            what = f"node '{node_id}' is not" if node_id else "no node is"
            raise ResumeError(f"run '{run_id}': {what} awaiting", run_id=run_id, node_id=node_id)
        node, iteration = sorted(candidates)[0]
        if node in children:
            await self.resume_with_action(children[node], action, output)
            await self.context.delete(run_id, STATUS)
            return node
        data: dict[str, Any] = {"action": action}
        if output is not _UNSET:
            data["output"] = output
        if not await self.resume_node(run_id, node, iteration, data):
            raise ResumeError(f"run '{run_id}': node '{node}' was already resumed", run_id=run_id)
        return node

    async def resume_node(
        self, run_id: str, node_id: str, iteration: int, data: Mapping[str, Any]
    ) -> bool:
        """Enqueue the job that completes an awaiting node (once); whether this call did."""
        fence = self.keys.resumed(run_id, node_id, iteration)
        if not await self.coordination.set_if_not_exist(fence, "resumed", self.ttl):
            return False
        meta = await self._meta(run_id)
        member = job_id(node_id, iteration, "resume")
        await self.context.patch(
            run_id,
            [
                {"op": "set", "key": RESUME + member, "value": dict(data)},
                {"op": "delete", "key": STATUS},
            ],
        )
        await self.coordination.remove_from_set(
            self.keys.parked(run_id), job_id(node_id, iteration)
        )
        job = JobPayload(
            run_id=run_id,
            blueprint_id=meta[0] if meta else "",
            node_id=node_id,
            iteration=iteration,
            resume=dict(data),
        )
        await self.enqueue_job(job, member)
        return True

    async def reconcile(self, run_id: str) -> set[str]:
        """Re-enqueue the jobs of an unfinished run that were counted but never finished.

        Safe at any time: a re-enqueued job whose result is stored only re-routes, and join
        marks and fences make that idempotent. Returns the re-enqueued node ids. A run with
        nothing in flight is ended as its last job would have ended it, and a run with a final
        result is published again and gets what follows it (:meth:`end_links`): both repair a
        crash in between.
        """
        final = await self.coordination.get(self.keys.final(run_id))
        if final is not None:
            # The crash may have come before the result was published, too (publishing is
            # idempotent): clients polling the backend's status would wait forever.
            await self._publish_result(run_id, str(orjson.loads(final)["status"]))
            await self.end_links(run_id)
            return set()
        meta = await self._meta(run_id)
        if meta is None:
            raise JobRejected(f"run '{run_id}' has no recorded blueprint", run_id=run_id)
        enqueued = await self.coordination.members(self.keys.enqueued(run_id))
        done = await self.coordination.members(self.keys.done(run_id))
        out: set[str] = set()
        for member in sorted(enqueued - done):
            node, iteration, role = parse_job_id(member)
            extra: dict[str, Any] = {}
            resume = None
            if role.startswith("fb:"):
                extra["rescues"] = role[3:]
            elif role == "resume":
                resume = await self.context.get(run_id, RESUME + member) or {}
            job = JobPayload(
                run_id=run_id,
                blueprint_id=meta[0],
                node_id=node,
                iteration=iteration,
                resume=resume,
                extra=extra,
            )
            await self._enqueue(job.to_json())
            out.add(node)
        # Nothing in flight and not over: the last job died before ending the run, or a child
        # run started awaiting unseen. (An awaiting run was ended already.)
        if not out and enqueued and await self.context.get(run_id, STATUS) != "awaiting":
            await self._quiescent(run_id)
        return out

    async def fire_due_timers(self, now: float | None = None) -> int:
        """Wake every sleeping node whose time has come; how many were woken."""
        now = time.time() if now is None else now
        fired = 0
        for timer in await self.coordination.members(self.keys.timers):
            wake, run_id, node_id, iteration = _parse_timer(timer)
            if wake > now:
                continue
            if (
                await self.coordination.set_if_not_exist(
                    self.keys.timer_fired(timer), "1", self.ttl
                )
                and await self.coordination.get(self.keys.final(run_id)) is None
            ):
                await self.resume_node(run_id, node_id, iteration, {})
                fired += 1
            await self.coordination.remove_from_set(self.keys.timers, timer)
        return fired

    # ----------------------------------------------------------------- handling one job

    async def handle(self, delivery: Delivery, *, follow: bool = False) -> None:
        """Handle one delivery: run or re-route its node, then ack or dead-letter it.

        A backend error (the stores or queue failing) propagates without acking, so the queue
        redelivers the job after its lease. With ``follow`` (the caller will handle
        ``delivery.next`` right after), the backend may reserve a successor for this worker.
        """
        started = time.monotonic()
        try:
            payload = JobPayload.from_json(delivery.body)
        except SerializationError as exc:
            await self._reject(delivery, _run_id_of(delivery.body), str(exc))
            return

        async def renew() -> None:
            await self._extend_lease(delivery, self.lease)

        heartbeat = self._renewals.add(renew)
        try:
            await self._handle(delivery, payload, follow)
        except JobRejected as exc:
            await self._reject(delivery, payload.run_id, exc.message)
            return
        finally:
            self._renewals.remove(heartbeat)
        if not delivery.settled:
            await self._ack(delivery)
        bus = self.event_bus
        if bus is not None and bus.wants("job:processed"):
            bus.emit(
                "job:processed",
                {**payload.to_dict(), "duration": time.monotonic() - started, "success": True},
            )

    async def _give_up(self, delivery: Delivery, reason: str) -> None:
        """Dead-letter a job delivered too often, and fail its run with the reason."""
        await self._reject(delivery, _run_id_of(delivery.body), reason, DeliveryLimitExceeded)

    async def _reject(
        self,
        delivery: Delivery,
        run_id: str | None,
        reason: str,
        kind: type[JobRejected] = JobRejected,
    ) -> None:
        _log.error("rejecting job: %s", reason)
        await self._dead_letter(delivery, reason)
        if run_id:
            error = kind(reason, run_id=run_id, is_fatal=True)
            await self.publish_final(run_id, "failed", [error])
        bus = self.event_bus
        if bus is not None and bus.wants("job:failed"):
            bus.emit("job:failed", {"runId": run_id, "error": reason})

    async def _handle(self, delivery: Delivery, payload: JobPayload, follow: bool) -> None:
        run_id, node_id, iteration = payload.run_id, payload.node_id, payload.iteration
        # A malformed job is dead-lettered with its reason even when its run has finished.
        blueprint = self.blueprints.get(payload.blueprint_id)
        if blueprint is None:
            raise JobRejected(
                f"job for node '{node_id}': blueprint '{payload.blueprint_id}' is not"
                " registered with this worker"
            )
        role = ""
        rescues = payload.extra.get("rescues")
        if not isinstance(rescues, str):
            rescues = None
        if rescues is not None:
            role = f"fb:{rescues}"
            # One result per rescued primary: a fallback shared by several primaries runs once
            # for each of them, with its input, and routes along its edges.
            result_key = self.keys.rescue(run_id, rescues, iteration)
        else:
            if payload.resume is not None:
                role = "resume"
            result_key = self.keys.result(run_id, node_id, iteration)
        # Everything the job needs to know about its run and its input, in one read: the
        # input keys come from the static graph, so they are used only if nothing was spliced.
        arrival = delivery.arrival
        if arrival is None:
            read = self._arrival_read(blueprint, run_id, node_id, iteration, result_key, role)
            context_keys = read.context_keys
            arrival = await self._read_job(
                run_id, list(read.keys), list(read.set_keys), _listed(context_keys)
            )
        else:
            context_keys = _context_keys(blueprint, node_id, role)
        (final, meta, stored), (emitters, taken), data = arrival
        graph = await self.graph_of(run_id, blueprint, emitters)
        read_keys = None if context_keys is None or emitters else frozenset(context_keys)
        spec = graph.nodes.get(node_id)
        if spec is None:
            raise JobRejected(
                f"job for blueprint '{blueprint.id}': node '{node_id}' does not exist"
            )
        if final is not None:
            return  # finished or cancelled: queued jobs of the run are dropped on arrival
        await self._check_version(payload, blueprint, meta)
        job = _Job(
            delivery=delivery,
            payload=payload,
            blueprint=blueprint,
            graph=graph,
            spec=spec,
            role=role,
            member=job_id(node_id, iteration, role),
            rescues=rescues,
            result_key=result_key,
            stored=stored,
            prefetch=Prefetch(taken, read_keys, data),
            follow=follow,
        )
        try:
            # Cached per graph and evaluator: a blueprint a worker's evaluator rejects fails the
            # run with the typed error before its node runs.
            graph.check_expressions(self.evaluator)
            await self._run_job(job)
        except ExpressionError as exc:
            # A condition or transform the evaluator rejected or failed on: the run fails
            # with the typed error naming the edge (the job itself is handled: it is acked).
            error = failure_error(payload, exc)
            bus = self.event_bus
            if bus is not None:
                announce.node_error(bus, run_id, payload.blueprint_id, node_id, error)
            _log.error("run %s failed at node %s: %s", run_id, node_id, error)
            await self.publish_final(run_id, "failed", [error])

    def _arrival_read(
        self,
        blueprint: Blueprint,
        run_id: str,
        node_id: str,
        iteration: int,
        result_key: str,
        role: str,
    ) -> ArrivalRead:
        return ArrivalRead(
            keys=(self.keys.final(run_id), self.keys.meta(run_id), result_key),
            set_keys=(self.keys.dynamic(run_id), self.keys.taken(run_id, node_id, iteration)),
            context_keys=_context_keys(blueprint, node_id, role),
        )

    async def _run_job(self, job: _Job) -> None:
        payload, graph, spec, role = job.payload, job.graph, job.spec, job.role
        run_id, member, rescues = payload.run_id, job.member, job.rescues
        result_key, stored = job.result_key, job.stored
        result: NodeResult | None = None
        if stored is None:
            outcome = await execute_node(self, payload, graph, spec, role, job.prefetch)
            if outcome is None:
                await self.job_done(run_id, member)
                return
            record = orjson.dumps(outcome.result.to_dict()).decode()
            if not role and await self._fast_hop(job, outcome, record):
                self._finished(payload, outcome, rescues)
                return
            if outcome.ops:
                # The context writes a step after the result here (the hop step stores both
                # at once): kept with it, a redelivery after a crash in between still makes
                # them (a batch's items, a built-in's state), since the node never runs again.
                record = orjson.dumps({**outcome.result.to_dict(), _OPS: outcome.ops}).decode()
            if await self.coordination.set_if_not_exist(result_key, record, self.ttl):
                result = outcome.result
                await self._store_effects(payload, result, outcome.ops, rescues)
                self._finished(payload, outcome, rescues)
            else:
                stored = await self.coordination.get(result_key)
        if result is None:
            # Redelivered (or raced): route from the stored result, never execute again.
            raw = orjson.loads(stored or "{}")
            result = NodeResult(
                output=raw.get("output"),
                action=raw.get("action"),
                dynamic_nodes=list(raw.get("dynamicNodes") or []),
            )
            await self._store_effects(payload, result, list(raw.get(_OPS) or []), rescues)
        graph = await self.graph_of(run_id, job.blueprint)
        data = await self._routing_data(run_id, graph, payload.node_id, result, rescues)
        await self.route(payload, graph, payload.node_id, result, data, rescues)
        if rescues is None and spec.fallback is not None:
            work: list[tuple[str, int]] = []
            await self.skip_unused_fallback(
                payload, graph, payload.node_id, payload.iteration, work
            )
            await self._settle(payload, graph, work)
        await self.job_done(run_id, member)

    def _finished(self, payload: JobPayload, outcome: Outcome, rescues: str | None) -> None:
        """``node:finish``, and ``context:change`` for the writes stored with the result."""
        bus = self.event_bus
        if bus is None:
            return
        result = outcome.result
        announce.node_finish(bus, payload.run_id, payload.blueprint_id, payload.node_id, result)
        changed = announcer(self, payload.run_id)
        if changed is not None:
            for op in self._effect_ops(payload, result, outcome.ops, rescues):
                changed(str(op["op"]), str(op["key"]), op.get("value"))

    async def _fast_hop(self, job: _Job, outcome: Outcome, record: str) -> bool:
        """Finish the job in the backend's one atomic step, if it has one and the hop allows;
        whether it did (see ``_hop.py`` for which hops qualify)."""
        if type(self)._commit_hop is BaseDistributedAdapter._commit_hop:
            return False
        payload, delivery = job.payload, job.delivery
        hop = await self._plan_hop(job, outcome, record)
        if hop is None:
            return False
        commit = await self._commit_hop(delivery, hop)
        if commit is None or commit.outcome == "slow":
            return False
        delivery.next = commit.next
        bus = self.event_bus
        if bus is not None and bus.wants("job:enqueued"):
            fired = set(commit.fired)
            for target in hop.targets:
                if target.member in fired:
                    bus.emit("job:enqueued", orjson.loads(target.body))
        if commit.outcome == "quiescent":
            await self._quiescent(payload.run_id)
        elif commit.outcome == "committed":
            delivery.settled = True
        return True

    async def _plan_hop(self, job: _Job, outcome: Outcome, record: str) -> Hop | None:
        payload, graph, spec = job.payload, job.graph, job.spec
        result = outcome.result
        if spec.is_loop or spec.fallback is not None or graph.dynamic or result.dynamic_nodes:
            return None
        run_id, node_id, iteration = payload.run_id, payload.node_id, payload.iteration
        ops = self._effect_ops(payload, result, outcome.ops, None)
        edges = routing_edges(spec, None)
        if edges:
            data = await self._routing_data(run_id, graph, node_id, result, None, ops)
            evaluated: list[EdgeDefinition] = []

            def passes(edge: EdgeDefinition) -> bool:
                if edge.condition is not None:
                    evaluated.append(edge)
                return condition_holds(self.evaluator, edge, data, result)

            if len(select_edges(edges, result, passes)) != len(edges):
                return None  # a dead path to eliminate: the generic path walks (and announces) it
            bus = self.event_bus
            if bus is not None:
                for edge in evaluated:
                    announce.condition(bus, run_id, payload.blueprint_id, node_id, edge, True)
        targets: list[HopTarget] = []
        for index, edge in edges:
            target = graph.nodes[edge.target]
            if target.is_loop:
                return None
            target_iter = self.target_iteration(graph, node_id, edge.target, iteration)
            position = graph.out_edges[node_id].index(index)
            successor = self.successor_payload(payload, edge.target, target_iter)
            reserve = job.follow and not targets
            arrival = None
            if reserve or self._reads_ahead:
                result_key = self.keys.result(run_id, edge.target, target_iter)
                arrival = self._arrival_read(
                    job.blueprint, run_id, edge.target, target_iter, result_key, ""
                )
            targets.append(
                HopTarget(
                    member=job_id(edge.target, target_iter),
                    fence=self.keys.fire(run_id, edge.target, target_iter),
                    resolved=self.keys.resolved(run_id, edge.target, target_iter),
                    taken=self.keys.taken(run_id, edge.target, target_iter),
                    source=node_id,
                    mark=f"{node_id}|{position}",
                    preds=() if target.join_any else tuple(target.preds),
                    body=successor.to_json(),
                    arrival=arrival,
                    reserve=reserve,
                )
            )
        return Hop(
            run_id=run_id,
            member=job_id(node_id, iteration),
            result_key=self.keys.result(run_id, node_id, iteration),
            result_record=record,
            context_ops=ops,
            targets=targets,
            enqueued=self.keys.enqueued(run_id),
            done=self.keys.done(run_id),
            pending=self.keys.pending(run_id),
            dynamic=self.keys.dynamic(run_id),
            ttl=self.ttl,
            follow=job.follow,
        )

    @staticmethod
    def _effect_ops(
        payload: JobPayload, result: NodeResult, ops: list[Any], rescues: str | None
    ) -> list[PatchOperation]:
        node_id = payload.node_id
        out: list[PatchOperation] = [
            *ops,
            {"op": "set", "key": OUTPUTS + node_id, "value": result.output},
            {"op": "set", "key": PROGRESS, "value": time.time()},
        ]
        if rescues is not None:
            out.append({"op": "set", "key": OUTPUTS + rescues, "value": result.output})
        if result.dynamic_nodes:
            gather = result.output.get("gatherNodeId") if isinstance(result.output, dict) else None
            splice = {"nodes": result.dynamic_nodes, "gather": gather}
            out.append({"op": "set", "key": DYNAMIC + node_id, "value": splice})
        return out

    async def _store_effects(
        self,
        payload: JobPayload,
        result: NodeResult,
        ops: list[Any],
        rescues: str | None,
    ) -> None:
        run_id, node_id = payload.run_id, payload.node_id
        await self.context.patch(run_id, self._effect_ops(payload, result, ops, rescues))
        if result.dynamic_nodes:
            await self.coordination.add_to_set(self.keys.dynamic(run_id), node_id, self.ttl)

    async def _routing_data(
        self,
        run_id: str,
        graph: Graph,
        node_id: str,
        result: NodeResult,
        rescues: str | None,
        unstored: list[PatchOperation] | None = None,
    ) -> dict[str, Any]:
        # Conditions may read any key; without conditions routing needs no context at all.
        if any(e.condition for _, e in routing_edges(graph.nodes[node_id], rescues)):
            data = await self.context.to_dict(run_id)
            # Conditions see the node's own writes even before they are stored.
            for op in unstored or ():
                if op["op"] == "set":
                    data[op["key"]] = op.get("value")
                else:
                    data.pop(op["key"], None)
        else:
            data = {}
        data[OUTPUTS + node_id] = result.output
        return data

    async def park(self, payload: JobPayload, details: Mapping[str, Any]) -> None:
        """Record an awaiting node (wait, webhook, sleep) and, for sleep, its timer."""
        run_id, node_id = payload.run_id, payload.node_id
        await self.context.set(run_id, AWAITING + node_id, dict(details))
        if details.get("reason") == "timer":
            wake = self.wake_time(details)
            timer = f"{wake:.6f}|{orjson.dumps([run_id, node_id, payload.iteration]).decode()}"
            await self.coordination.add_to_set(self.keys.timers, timer, self.ttl)
        member = job_id(node_id, payload.iteration)
        await self.coordination.add_to_set(self.keys.parked(run_id), member, self.ttl)

    async def unpark(self, run_id: str, node_id: str) -> None:
        """Forget an awaiting node's details once it completed."""
        await self.context.delete(run_id, AWAITING + node_id)

    async def _check_version(
        self, payload: JobPayload, blueprint: Blueprint, raw_meta: str | None
    ) -> None:
        meta = _parse_meta(raw_meta)
        if meta is None:
            # Started by a client that stored no version (a TS client). Such a client enqueues
            # every start job at once: all count as in flight before the version is recorded,
            # because a job that sees the version skips this branch and may finish at once.
            for node in graph_of_blueprint(blueprint).start_nodes:
                await self.coordination.add_to_set(
                    self.keys.enqueued(payload.run_id), job_id(node, 0), self.ttl
                )
            # The first job records the version, and the context keys the TS worker adds on a
            # run's first job.
            stored = await self.context.get_many(
                payload.run_id, ["blueprintId", "blueprintVersion"]
            )
            version = stored.get("blueprintVersion", blueprint.version)
            value = orjson.dumps([payload.blueprint_id, version]).decode()
            await self.coordination.set_if_not_exist(
                self.keys.meta(payload.run_id), value, self.ttl
            )
            await self.coordination.add_to_set(self.keys.runs, payload.run_id, self.ttl)
            if "blueprintId" not in stored:
                await self.context.patch(
                    payload.run_id,
                    [
                        {"op": "set", "key": "blueprintId", "value": payload.blueprint_id},
                        {"op": "set", "key": "blueprintVersion", "value": version},
                    ],
                )
            meta = await self._meta(payload.run_id)
        if meta is not None and meta[1] != blueprint.version:
            raise JobRejected(
                f"blueprint '{blueprint.id}' version mismatch: the run started with"
                f" {meta[1]!r}, this worker has {blueprint.version!r}"
            )

    async def _meta(self, run_id: str) -> tuple[str, str | None] | None:
        return _parse_meta(await self.coordination.get(self.keys.meta(run_id)))

    def _blueprint(self, blueprint_id: str) -> Blueprint:
        try:
            return self.blueprints[blueprint_id]
        except KeyError:
            raise JobRejected(f"blueprint '{blueprint_id}' is not registered") from None


def graph_of_blueprint(blueprint: Blueprint) -> Graph:
    """The static graph of a blueprint."""
    return graph_for(blueprint)


def _parse_meta(raw: str | None) -> tuple[str, str | None] | None:
    if raw is None:
        return None
    blueprint_id, version = orjson.loads(raw)
    return str(blueprint_id), version


@dataclass(slots=True)  # not frozen, as the hop's classes (see _hop.py)
class _Job:
    """One delivery being handled, with what was read about its run when it arrived."""

    delivery: Delivery
    payload: JobPayload
    blueprint: Blueprint
    graph: Graph
    spec: NodeSpec
    role: str
    member: str
    rescues: str | None
    result_key: str
    stored: str | None
    prefetch: Prefetch
    follow: bool
    """Whether the worker takes a successor the backend reserves for it (``Delivery.next``)."""


def _context_keys(blueprint: Blueprint, node_id: str, role: str) -> list[str] | None:
    # What a job reads of the context when it arrives: its input's keys in the static graph.
    static = graph_of_blueprint(blueprint).nodes.get(node_id)
    return prefetch_keys(static) if static is not None and not role else None


def _listed(keys: Sequence[str] | None) -> list[str] | None:
    return None if keys is None else list(keys)


def _run_id_of(body: str) -> str | None:
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    run_id = raw.get("runId") if isinstance(raw, dict) else None
    return run_id if isinstance(run_id, str) and run_id else None


def _parse_timer(timer: str) -> tuple[float, str, str, int]:
    wake, _, rest = timer.partition("|")
    run_id, node_id, iteration = orjson.loads(rest)
    return float(wake), str(run_id), str(node_id), int(iteration)
