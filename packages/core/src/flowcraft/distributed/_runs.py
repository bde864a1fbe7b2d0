"""The run ledger: jobs in flight, the one final result, parked nodes and their resumes.

* every job is added to the run's *enqueued* set before it is enqueued and to its *done* set
  after its effects are stored; the job that makes both sets equal ends the run
  (:meth:`Runs.job_done`);
* the first terminal status written wins (:meth:`Runs.publish_final`); what a final result
  starts (cancelling subflow children, resuming the parent's node) follows it, and a run stays
  in the unfinished-runs set until that is done, so the reconciler repeats what a crash cut;
* a parked node (wait, webhook, sleep, subflow) is resumed once, by a job of its own.

Subflow links live here too, since ending a child resumes its parent and a parent's end cancels
its children: a subflow node runs its blueprint as a child run ``<run>/<node>@<iteration>``
linked back by ``Keys.parent`` (see ``_subflow.py`` for the node's side).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

import orjson

from flowcraft.distributed._base import Parts, parse_meta
from flowcraft.distributed._jobrun import JobRun
from flowcraft.distributed._keys import AWAITING, INTERNAL, RESUME, STATUS, TRACE
from flowcraft.distributed._payload import JobPayload, fired_by, job_id, parse_job_id
from flowcraft.distributed._protocols import BulkDelete
from flowcraft.distributed._results import error_from_dict
from flowcraft.errors import FlowcraftError
from flowcraft.events import EventType
from flowcraft.hooks import RunInfo, call_after_run
from flowcraft.result import WorkflowResult, WorkflowStatus
from flowcraft.serializer import JsonSerializer

__all__ = ["Runs", "child_attempt", "child_of", "child_run_id"]

_log = logging.getLogger("flowcraft.distributed")


def child_run_id(run_id: str, node_id: str, iteration: int, attempt: int = 1) -> str:
    """The run id of the child a subflow node starts in one iteration and attempt."""
    base = f"{run_id}/{node_id}@{iteration}"
    return base if attempt <= 1 else f"{base}#{attempt}"


def child_attempt(child_id: str) -> int:
    """The attempt of the subflow node that started ``child_id``."""
    _, hash_, attempt = child_id.rpartition("#")
    return int(attempt) if hash_ and attempt.isdigit() else 1


def child_of(run_id: str, node_id: str, iteration: int, details: Mapping[str, Any]) -> str:
    """The child run a parked subflow node waits for (recorded in its awaiting details)."""
    child = details.get("childRunId")
    return child if isinstance(child, str) else child_run_id(run_id, node_id, iteration)


class Runs(Parts):
    """The run ledger over the coordination and context stores (see the module docstring)."""

    # ----------------------------------------------------------------- jobs in flight

    async def enqueue_job(
        self,
        job: JobPayload,
        member: str,
        *,
        fence: str | None = None,
        by: str | None = None,
    ) -> bool:
        """Count ``job`` as in flight, then enqueue it unless ``fence`` was taken before;
        whether this call enqueued it.

        ``by`` is the job id of the job firing it: a fence that job took itself on an earlier
        delivery does not stop it (see ``_payload.fired_by``).
        """
        await self.coordination.add_to_set(self.keys.enqueued(job.run_id), member, self.ttl)
        mark = fired_by(by)
        if fence is not None and not await self.coordination.set_if_not_exist(
            fence, mark, self.ttl
        ):
            value = await self.coordination.get(fence)
            if value == "skipped":
                # The target was skipped before (so no job of it will ever count itself
                # done): settle the count this call just raised.
                await self.job_done(job.run_id, member)
                return False
            if by is None or value != mark:
                return False
        await self.queue.enqueue(job.to_json())
        bus = self.event_bus
        if bus is not None and bus.wants("job:enqueued"):
            bus.emit("job:enqueued", job.to_dict())
        return True

    async def job_done(self, run_id: str, member: str) -> None:
        """Count a job's effects as stored; the job that empties the run's frontier ends it."""
        done, enqueued = self.keys.done(run_id), self.keys.enqueued(run_id)
        counts = self.counts_done
        if counts is not None:
            quiet = await counts.count_done(done, enqueued, member, self.ttl)
        else:
            added = await self.coordination.add_to_set(done, member, self.ttl)
            quiet = added >= await self.coordination.add_to_set(enqueued, member, self.ttl)
        if quiet:
            await self.quiescent(run_id)

    async def quiescent(self, run_id: str) -> None:
        """Nothing of the run is in flight: it awaits a resume, stalled or completed."""
        _, (parked, pending) = await self.coordination.read(
            [], [self.keys.parked(run_id), self.keys.pending(run_id)]
        )
        if parked:
            names = {m: parse_job_id(m)[0] for m in parked}
            details = await self.context.get_many(run_id, [AWAITING + n for n in names.values()])
            human = [
                m
                for m, n in names.items()
                if await self._waits_for_human(run_id, m, details.get(AWAITING + n) or {})
            ]
            if human:
                await self.context.set(run_id, STATUS, "awaiting")
                await self._announce_run("workflow:pause", run_id)
                await self.publish(run_id, "awaiting")
                await self._after_run(run_id, "awaiting", [])
                await self._wake_parent(run_id)
            return
        fences, _ = await self.coordination.read(
            [self.keys.fire(run_id, *parse_job_id(member)[:2]) for member in pending], []
        )
        await self.publish_final(run_id, "stalled" if None in fences else "completed")

    # ----------------------------------------------------------------- the final result

    async def publish_final(
        self, run_id: str, status: WorkflowStatus, errors: list[FlowcraftError] | None = None
    ) -> bool:
        """Write the run's final status unless one exists (the first terminal status wins);
        whether this call wrote it."""
        record = {"status": status, "errors": [e.to_dict() for e in errors or []]}
        won = await self.coordination.set_if_not_exist(
            self.keys.final(run_id), orjson.dumps(record).decode(), self.ttl
        )
        if not won:
            return False
        await self.publish(run_id, status, list(errors or []))
        if status == "stalled":
            await self._announce_run("workflow:stall", run_id)
            await self._announce_run("workflow:pause", run_id)
        await self._announce_run(
            "workflow:finish",
            run_id,
            status=status,
            errors=[e.to_dict() for e in errors or []],
        )
        await self._after_run(run_id, status, list(errors or []))
        await self.end_links(run_id)
        return True

    async def publish(
        self, run_id: str, status: str, errors: list[FlowcraftError] | None = None
    ) -> None:
        """Wake the run's waiters through the result channel (the record is stored already;
        ``errors`` are its errors when the caller knows them, None when they must be read)."""
        result = None
        if status != "awaiting":
            if errors is None:
                result = await self.final_result(run_id)
            else:
                result = await self.result(run_id, cast(WorkflowStatus, status), errors)
        await self.results.publish(run_id, result)

    async def end_links(self, run_id: str) -> None:
        """Finish what a final result starts: cancel the run's subflow children, resume the
        node of its parent run, then drop the run from the unfinished-runs set."""
        store, keys = self.coordination, self.keys
        (raw_link,), (parked,) = await store.read([keys.parent(run_id)], [keys.parked(run_id)])
        for member in parked:
            node_id, iteration, _ = parse_job_id(member)
            details = await self.context.get(run_id, AWAITING + node_id) or {}
            child_id = child_of(run_id, node_id, iteration, details)
            if await store.get(keys.parent(child_id)) is not None:
                await self.publish_final(child_id, "cancelled")
        link = _link(raw_link)
        if link is not None and await store.get(keys.final(link[0])) is None:
            parent, node_id, iteration = link
            # Counted before resume_node takes its fence: should this process die in
            # between, the parent's reconcile still finds the job.
            member = job_id(node_id, iteration, "resume")
            await store.add_to_set(keys.enqueued(parent), member, self.ttl)
            await self.resume_node(parent, node_id, iteration, {"subflow": run_id})
        await self.forget(run_id)
        await store.remove_from_set(keys.runs_of(run_id), run_id)

    async def forget(self, run_id: str) -> None:
        """Delete a finished run's bookkeeping: only its final record and meta stay (with
        its context, which its result is read from) until their TTL.

        A late redelivery of one of its jobs reads the final record on arrival and is dropped,
        so nothing needs the rest. Done before the run leaves the unfinished-runs set, so a
        crash in between is repeated by the reconciler.
        """
        keys, store = self.keys, self.coordination
        strings, (enqueued,) = await store.read([keys.meta(run_id)], [keys.enqueued(run_id)])
        members = [parse_job_id(m) for m in enqueued]
        nodes = {node for node, _, _ in members}
        meta = parse_meta(strings[0])
        blueprint = self.blueprints.get(meta[0]) if meta is not None else None
        # Skipped nodes have fences and marks but never a job: the graph names them all.
        specs = (await self.graph_of(run_id, blueprint)).nodes if blueprint is not None else {}
        nodes.update(specs)
        doomed = [
            # A store that groups the per-node keys (see _keys.FIELD) drops them all with it.
            keys.bookkeeping(run_id),
            keys.enqueued(run_id),
            keys.done(run_id),
            keys.parked(run_id),
            keys.pending(run_id),
            keys.dynamic(run_id),
            keys.held(run_id),
            keys.parent(run_id),
        ]
        for iteration in {i for _, i, _ in members} | {0}:
            for node in nodes:
                doomed += [
                    keys.result(run_id, node, iteration),
                    keys.fire(run_id, node, iteration),
                    keys.resolved(run_id, node, iteration),
                    keys.taken(run_id, node, iteration),
                ]
                spec = specs.get(node)
                # Keys only some nodes have: an unknown graph deletes them all.
                if spec is None or spec.fallback is not None:
                    doomed += [
                        keys.rescue(run_id, node, iteration),
                        keys.fallback(run_id, node, iteration),
                    ]
                if spec is None or spec.max_attempts > 1:
                    doomed.append(keys.attempts(run_id, node, iteration))
        doomed += {keys.live(run_id, job_id(node, iteration)) for node, iteration, _ in members}
        for node, iteration, role in members:
            if role == "resume":
                doomed.append(keys.resumed(run_id, node, iteration))
            elif role:
                doomed.append(keys.attempts(run_id, node, iteration, role))
        if isinstance(store, BulkDelete):
            await store.delete_many(doomed)
        else:
            await asyncio.gather(*(store.delete(key) for key in doomed))

    async def final_result(self, run_id: str) -> WorkflowResult | None:
        """The run's result if it is finished or awaiting, else None."""
        raw = await self.coordination.get(self.keys.final(run_id))
        if raw is not None:
            record = orjson.loads(raw)
            errors = [error_from_dict(e) for e in record.get("errors") or []]
            return await self.result(run_id, record["status"], errors)
        # Parked nodes first: a waiting client polls this, and reading the run's context
        # would keep it looking busy to a backend that detects stalls by its idle time.
        if await self.coordination.members(self.keys.parked(run_id)) and (
            await self.context.get(run_id, STATUS) == "awaiting"
        ):
            return await self.result(run_id, "awaiting", [])
        return None

    async def may_have_results(self, run_ids: list[str]) -> list[str]:
        """Of ``run_ids``, those with a final record or a parked node, in one read."""
        strings, sets = await self.coordination.read(
            [self.keys.final(r) for r in run_ids], [self.keys.parked(r) for r in run_ids]
        )
        return [r for r, s, p in zip(run_ids, strings, sets, strict=True) if s is not None or p]

    async def result(
        self, run_id: str, status: WorkflowStatus, errors: list[FlowcraftError]
    ) -> WorkflowResult:
        """The run's result with ``status``, its context read from the store."""
        raw = await self.context.to_dict(run_id)
        context = {k: v for k, v in raw.items() if not k.startswith(INTERNAL)}
        awaiting = {k[len(AWAITING) :]: v for k, v in raw.items() if k.startswith(AWAITING)}
        if status == "awaiting" and awaiting:
            context["_awaitingNodeIds"] = list(awaiting)
            context["_awaitingDetails"] = awaiting
        return WorkflowResult(
            status=status,
            context=context,
            serialized_context=JsonSerializer().dumps(context),
            errors=errors,
            run_id=run_id,
        )

    async def _after_run(
        self, run_id: str, status: WorkflowStatus, errors: list[FlowcraftError]
    ) -> None:
        # Only with hooks: building the result reads the whole context.
        if not self.hooks:
            return
        meta = await self.meta(run_id)
        blueprint_id = meta[0] if meta else ""
        trace = await self.context.get(run_id, TRACE)
        info = RunInfo(
            run_id=run_id,
            blueprint_id=blueprint_id,
            blueprint=self.blueprints.get(blueprint_id),
            registry=self.registry,
            distributed=True,
            trace_context=dict(trace) if isinstance(trace, Mapping) else {},
        )
        result = await self.result(run_id, status, errors)
        await call_after_run(self.hooks, info, result)

    # ----------------------------------------------------------------- parked nodes

    async def park(self, payload: JobPayload, details: Mapping[str, Any]) -> None:
        """Record an awaiting node (wait, webhook, sleep, subflow) and, for sleep, its timer."""
        run_id, node_id = payload.run_id, payload.node_id
        await self.context.set(run_id, AWAITING + node_id, dict(details))
        if details.get("reason") == "timer":
            wake = wake_time(details)
            timer = f"{wake:.6f}|{orjson.dumps([run_id, node_id, payload.iteration]).decode()}"
            await self.coordination.add_to_set(self.keys.timers, timer, self.ttl)
        member = job_id(node_id, payload.iteration)
        await self.coordination.add_to_set(self.keys.parked(run_id), member, self.ttl)

    async def unpark(self, run_id: str, node_id: str) -> None:
        """Forget an awaiting node's details once it completed."""
        await self.context.delete(run_id, AWAITING + node_id)

    async def resume_node(
        self, run_id: str, node_id: str, iteration: int, data: Mapping[str, Any]
    ) -> bool:
        """Enqueue the job that completes an awaiting node (once); whether this call did."""
        fence = self.keys.resumed(run_id, node_id, iteration)
        if not await self.coordination.set_if_not_exist(fence, "resumed", self.ttl):
            return False
        meta = await self.meta(run_id)
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
        await self._announce_run("workflow:resume", run_id, nodeId=node_id)
        return True

    async def _announce_run(self, event: EventType, run_id: str, **payload: Any) -> None:
        # The memory runtime's payloads: the blueprint id is read only when someone listens.
        bus = self.event_bus
        if bus is None or not bus.wants(event):
            return
        meta = await self.meta(run_id)
        bus.emit(event, {"blueprintId": meta[0] if meta else "", "executionId": run_id, **payload})

    async def child_awaits(self, child_id: str) -> bool:
        """Whether the child run of a parked subflow node awaits a resume."""
        if await self.coordination.get(self.keys.final(child_id)) is not None:
            return False
        return bool(await self.context.get(child_id, STATUS) == "awaiting")

    async def _waits_for_human(self, run_id: str, member: str, details: Mapping[str, Any]) -> bool:
        # Not a sleep, nor a subflow whose child still runs.
        reason = details.get("reason")
        if reason == "timer":
            return False
        if reason != "subflow":
            return True
        node_id, iteration, _ = parse_job_id(member)
        return await self.child_awaits(child_of(run_id, node_id, iteration, details))

    async def _wake_parent(self, run_id: str) -> None:
        # ``run_id`` now awaits a resume: its parent awaits too once nothing else of it runs.
        # The parent's last job ended while the child was running, so nothing else would look.
        link = _link(await self.coordination.get(self.keys.parent(run_id)))
        if link is None:
            return
        parent = link[0]
        store, keys = self.coordination, self.keys
        if await store.get(keys.final(parent)) is not None:
            return
        # Done first: a job counted in flight after this read is in the later one, and a
        # job is counted in flight before it is counted done.
        done = await store.members(keys.done(parent))
        enqueued = await store.members(keys.enqueued(parent))
        if enqueued and enqueued <= done:
            await self.quiescent(parent)

    # ----------------------------------------------------------------- a job's view

    async def job_run_data(self, run_id: str, keys: list[str] | None) -> dict[str, Any]:
        """The context keys a job needs (``None``: all of them)."""
        if keys is None:
            return await self.context.to_dict(run_id)
        return await self.context.get_many(run_id, keys)

    def job_run(self, run_id: str, data: dict[str, Any]) -> JobRun:
        """The ``ctx._run`` shim for built-in nodes."""
        return JobRun(run_id, data, self.evaluator, self.event_bus, self.blueprints)


def wake_time(details: Mapping[str, Any]) -> float:
    """Epoch seconds at which a sleeping node wakes."""
    try:
        return datetime.fromisoformat(str(details["wakeUpAt"])).timestamp()
    except (KeyError, ValueError):
        return time.time()


def _link(raw: str | None) -> tuple[str, str, int] | None:
    if raw is None:
        return None
    parent, node_id, iteration = orjson.loads(raw)
    return str(parent), str(node_id), int(iteration)
