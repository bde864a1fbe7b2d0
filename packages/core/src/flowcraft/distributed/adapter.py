"""``DistributedAdapter``: runs one node per queued job, composed of a backend's parts.

A backend provides a :class:`~flowcraft.distributed.Queue`, a
:class:`~flowcraft.distributed.ContextStore`, a :class:`~flowcraft.distributed.CoordinationStore`
and optionally a :class:`~flowcraft.distributed.ResultChannel` and fast paths
(:class:`~flowcraft.distributed.HopCommitter`, :class:`~flowcraft.distributed.ArrivalReader`).
Everything else — job handling, idempotency under redelivery, routing, joins, dead paths,
fallbacks, pausing, timers, version checks, cancellation and the one final result — lives in
core (see ``_base.py`` for the layers). ``docs/backends.md`` is the backend author's guide.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import orjson

from flowcraft.blueprint import Blueprint
from flowcraft.distributed._base import parse_meta
from flowcraft.distributed._execute import (
    DEFERRED,
    Outcome,
    Prefetch,
    as_error,
    execute_node,
)
from flowcraft.distributed._hop import ArrivalRead
from flowcraft.distributed._hopping import HopSteps, Job, context_keys_of
from flowcraft.distributed._payload import JobPayload, job_id
from flowcraft.distributed._protocols import (
    Arrival,
    Delivery,
)
from flowcraft.distributed._splithop import RECORD_OPS, record_with_ops
from flowcraft.distributed._subflow import subflow_job
from flowcraft.errors import (
    DeliveryLimitExceeded,
    ExpressionError,
    JobRejected,
    SerializationError,
)
from flowcraft.node import NodeResult
from flowcraft.runtime import _announce as announce
from flowcraft.runtime._graph import graph_for

__all__ = ["DistributedAdapter"]

_log = logging.getLogger("flowcraft.distributed")


class DistributedAdapter(HopSteps):
    """Distributed runs over a backend's parts; one per worker or client process.

    Args:
        queue: The backend's job queue.
        context: The backend's context store.
        coordination: The backend's coordination store.
        results: How waiters are woken; without one, waits poll the stores (batched, one loop
            per process).
        hops: Optional: the backend's one-step hop (see ``_hop.py``); without one, core's
            split hop (``_splithop.py``) when ``coordination`` is a
            :class:`~flowcraft.distributed.HopCoordination`.
        arrivals: Optional: the backend's one-round-trip arrival read.
        events: Optional: the backend's log of each run's events; without one, logs are kept
            in the coordination store (``Client.events`` reads them from any process).
        run_events: Write this process's events of each run to its log (every event is then
            built and stored: off by default, as it costs throughput).
        closers: Called last by :meth:`close` (clients the backend opened for this adapter).
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
        lease: Seconds a delivered job stays leased; the heartbeat extends it every third.
        cancel_poll: Seconds between checks, while a node runs, for a cancelled run.
        hooks: Run hooks: ``before_run`` in :meth:`start_run`, ``after_run`` where a result is
            published (see :mod:`flowcraft.hooks`).

    Raises:
        TypeError: A part does not implement its protocol.
    """

    builtins: ClassVar[Mapping[str, Any]] = MappingProxyType({"subflow": subflow_job})

    async def close(self) -> None:
        """Stop listening for results, close the queue, then whatever the backend opened;
        safe to call repeatedly."""
        await self.renewals.close()
        await self.watches.close()
        if self.forwarder is not None:
            await self.forwarder.close()
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            await waiter.close()
        else:
            await self.results.close()
        await self.queue.close()
        for closer in self.closers:
            await closer()

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

        held = job_id(payload.node_id, payload.iteration)
        live = self.keys.live(payload.run_id, held)
        # A redelivery may be a copy of a job still running elsewhere (its lease lapsed while
        # its worker was starved or cut off): it waits for that copy, marking nothing.
        waiting = delivery.delivery_count > 1

        async def renew() -> None:
            await self.queue.extend_lease(delivery, self.lease)

        async def mark() -> None:
            if waiting:
                return
            # A long node shows its run is alive: the reconciler must not hand its job to
            # another worker while this one still runs it; and a copy of the job must wait.
            await asyncio.gather(
                self.coordination.add_to_set(self.keys.held(payload.run_id), held, self.lease),
                self.coordination.increment(live, self.lease),
            )

        # Two ticker actions, not one: a coordination store slow to answer must not hold back
        # the next lease renewal (the queue would redeliver a job its worker still runs).
        heartbeat = self.renewals.add(renew), self.renewals.add(mark)
        try:
            if waiting:
                await self._outlive_copy(payload, live)
                waiting = False
            await self._handle(delivery, payload, follow)
        except JobRejected as exc:
            await self._reject(delivery, payload.run_id, exc.message)
            return
        finally:
            for action in heartbeat:
                self.renewals.remove(action)
        if not delivery.settled:
            await self.queue.ack(delivery)
        bus = self.event_bus
        if bus is not None and bus.wants("job:processed"):
            bus.emit(
                "job:processed",
                {**payload.to_dict(), "duration": time.monotonic() - started, "success": True},
            )

    async def _outlive_copy(self, payload: JobPayload, live: str) -> None:
        """Wait while another worker's copy of this job runs: until its heartbeat mark
        expires (it died: this delivery runs the node) or its result is stored (this
        delivery routes from it). Without this, a lapsed lease runs a node twice at once."""
        run_id, node_id, iteration = payload.run_id, payload.node_id, payload.iteration
        rescues = payload.extra.get("rescues")
        result_key = (
            self.keys.rescue(run_id, rescues, iteration)
            if isinstance(rescues, str)
            else self.keys.result(run_id, node_id, iteration)
        )
        while True:
            (running, stored), _ = await self.coordination.read([live, result_key], [])
            if running is None or stored is not None:
                return
            await asyncio.sleep(self.lease / 3)

    async def give_up(self, delivery: Delivery, reason: str) -> None:
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
        await self.queue.dead_letter(delivery, reason)
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
            arrival = await self._read_arrival(run_id, read)
        else:
            context_keys = context_keys_of(blueprint, node_id, role)
        (final, meta, stored), (emitters, taken), data = arrival
        graph = await self.graph_of(run_id, blueprint, emitters)
        read_keys = None if context_keys is None or emitters else frozenset(context_keys)
        spec = graph.nodes.get(node_id)
        if spec is None:
            raise JobRejected(
                f"job for blueprint '{blueprint.id}': node '{node_id}' does not exist"
            )
        if final is not None:
            # Finished or cancelled: queued jobs of the run are dropped on arrival. A
            # redelivered one may be the job that stored the final record and died before
            # waking the waiters, and nothing else would wake them: it wakes them again
            # (waiters re-check the stored result, so a second wake is harmless).
            if delivery.delivery_count > 1:
                await self.publish(run_id, str(orjson.loads(final)["status"]))
            return
        await self._check_version(payload, blueprint, meta)
        job = Job(
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
            error = as_error(payload, exc)
            bus = self.event_bus
            if bus is not None:
                announce.node_error(bus, run_id, payload.blueprint_id, node_id, error)
            _log.error("run %s failed at node %s: %s", run_id, node_id, error)
            await self.publish_final(run_id, "failed", [error])

    async def _read_arrival(self, run_id: str, read: ArrivalRead) -> Arrival:
        if self.arrivals is not None:
            return await self.arrivals.read_arrival(
                run_id, read.keys, read.set_keys, read.context_keys
            )
        keys = read.context_keys
        if not keys:
            strings, sets = await self.coordination.read(read.keys, read.set_keys)
            return strings, sets, {}
        # Two stores are often two servers: one round trip's wait instead of two.
        (strings, sets), data = await asyncio.gather(
            self.coordination.read(read.keys, read.set_keys), self.context.get_many(run_id, keys)
        )
        return strings, sets, data

    async def _run_job(self, job: Job) -> None:
        payload, graph, spec, role = job.payload, job.graph, job.spec, job.role
        run_id, member, rescues = payload.run_id, job.member, job.rescues
        result_key, stored = job.result_key, job.stored
        result: NodeResult | None = None
        if stored is None:
            outcome = await execute_node(self, payload, graph, spec, role, job.prefetch)
            if outcome is DEFERRED:
                return  # a timer enqueues its next attempt; until then it is not done
            if not isinstance(outcome, Outcome):
                await self.job_done(run_id, member)
                return
            record = orjson.dumps(outcome.result.to_dict()).decode()
            if not role and await self._fast_hop(job, outcome, record):
                return
            if outcome.ops:
                # The context writes a step after the result here (the hop step stores both
                # at once): kept with it, a redelivery after a crash in between still makes
                # them (a batch's items, a built-in's state), since the node never runs again.
                record = record_with_ops(record, outcome.ops)
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
            await self._store_effects(payload, result, list(raw.get(RECORD_OPS) or []), rescues)
        graph = await self.graph_of(run_id, job.blueprint)
        data = await self._routing_data(run_id, graph, payload.node_id, result, rescues)
        await self.route(payload, graph, payload.node_id, result, data, rescues)
        if rescues is None and spec.fallback is not None:
            work: list[tuple[str, int]] = []
            await self.skip_unused_fallback(
                payload, graph, payload.node_id, payload.iteration, work
            )
            await self.settle(payload, graph, work)
        await self.job_done(run_id, member)

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

    async def _check_version(
        self, payload: JobPayload, blueprint: Blueprint, raw_meta: str | None
    ) -> None:
        meta = parse_meta(raw_meta)
        if meta is None:
            # Started by a client that stored no version (a TS client). Such a client enqueues
            # every start job at once: all count as in flight before the version is recorded,
            # because a job that sees the version skips this branch and may finish at once.
            for node in graph_for(blueprint).start_nodes:
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
            await self.coordination.add_to_set(
                self.keys.runs_of(payload.run_id), payload.run_id, self.ttl
            )
            if "blueprintId" not in stored:
                await self.context.patch(
                    payload.run_id,
                    [
                        {"op": "set", "key": "blueprintId", "value": payload.blueprint_id},
                        {"op": "set", "key": "blueprintVersion", "value": version},
                    ],
                )
            meta = await self.meta(payload.run_id)
        if meta is not None and meta[1] != blueprint.version:
            raise JobRejected(
                f"blueprint '{blueprint.id}' version mismatch: the run started with"
                f" {meta[1]!r}, this worker has {blueprint.version!r}"
            )


def _run_id_of(body: str) -> str | None:
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    run_id = raw.get("runId") if isinstance(raw, dict) else None
    return run_id if isinstance(run_id, str) and run_id else None
