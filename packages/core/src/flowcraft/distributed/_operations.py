"""What clients and operators call: start, wait, status, cancel, resume; reconcile and timers."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal

import orjson

from flowcraft.distributed._keys import AWAITING, PROGRESS, RESUME, STATUS, TRACE
from flowcraft.distributed._payload import JobPayload, job_id, parse_job_id
from flowcraft.distributed._results import ResultWaiter
from flowcraft.distributed._routing import Routing
from flowcraft.distributed._runs import child_of
from flowcraft.errors import JobRejected, ResumeError, RunExists
from flowcraft.hooks import RunInfo, call_before_run
from flowcraft.result import WorkflowResult
from flowcraft.runtime._graph import graph_for

__all__ = ["Operations"]

_UNSET: Any = object()


class Operations(Routing):
    """The client's and the operator's calls over the routing layer."""

    _waiter: ResultWaiter | None = None

    async def start_run(
        self,
        blueprint_id: str,
        initial_context: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        *,
        trace_context: Mapping[str, str] | None = None,
        exists: Literal["error", "attach"] = "error",
    ) -> str:
        """Store the initial context and enqueue the start nodes; the run id.

        ``trace_context`` is a W3C carrier the run continues (e.g. its parent run's): run hooks
        see it as ``RunInfo.trace_context`` and may replace it; the run's jobs carry the result.
        ``exists``: what a ``run_id`` started before gets: ``error`` raises, ``attach`` keeps
        that run (its context included) and starts only what is missing of it.

        Raises:
            RunExists: ``run_id`` was started before and ``exists`` is ``error``.
            JobRejected: The blueprint is not registered.
            ExpressionError: The evaluator rejects a condition, transform or loop condition of
                the blueprint (checked before anything is stored, as in memory).
            Exception: Whatever a ``before_run`` hook raised (nothing is stored then).
        """
        blueprint = self.blueprint(blueprint_id)
        run_id = run_id or str(uuid.uuid4())
        graph = graph_for(blueprint)
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
        meta = orjson.dumps([blueprint_id, blueprint.version]).decode()
        if exists == "error":
            # Claimed first, so that of two starts racing for one id exactly one proceeds.
            if not await self.coordination.set_if_not_exist(self.keys.meta(run_id), meta, self.ttl):
                raise RunExists(f"run '{run_id}' exists already", run_id=run_id)
            await self.context.patch(run_id, ops)
        # A run id attached to (a redelivered subflow job starts its child again) keeps the
        # context its jobs may have changed since; every step below is idempotent.
        elif await self.coordination.get(self.keys.meta(run_id)) is None:
            await self.context.patch(run_id, ops)
        enqueued = self.keys.enqueued(run_id)
        # Independent writes, made concurrently: one round trip instead of one each (a
        # backend that batches sends them together). Every start job counts as in flight
        # before any is enqueued, or the first to finish would see an empty frontier and end
        # the run.
        await asyncio.gather(
            self.coordination.set_if_not_exist(self.keys.meta(run_id), meta, self.ttl),
            self.coordination.add_to_set(self.keys.runs_of(run_id), run_id, self.ttl),
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
        """Wait, woken by the result channel, until the run finishes or awaits a resume.

        Every wait of this adapter shares one listener of the channel.

        Raises:
            TimeoutError: Nothing was published within ``timeout`` seconds.
        """
        if self._waiter is None:
            self._waiter = ResultWaiter(self.results, self.final_result, self.may_have_results)
        return await self._waiter.wait(run_id, timeout)

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
            awaiting = details.get(AWAITING + n) or {}
            if awaiting.get("reason") == "subflow":
                # A subflow node awaits while its child does; the resume goes to the child.
                child = child_of(run_id, n, i, awaiting)
                if not await self.child_awaits(child):
                    continue
                children[n] = child
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
            await self.publish(run_id, str(orjson.loads(final)["status"]))
            await self.end_links(run_id)
            return set()
        meta = await self.meta(run_id)
        if meta is None:
            # The record is gone (evicted, expired early): the context keeps a copy of it.
            stored = await self.context.get_many(run_id, ["blueprintId", "blueprintVersion"])
            if "blueprintId" in stored:
                record = orjson.dumps([stored["blueprintId"], stored.get("blueprintVersion")])
                await self.coordination.set_if_not_exist(
                    self.keys.meta(run_id), record.decode(), self.ttl
                )
                meta = await self.meta(run_id)
        if meta is None:
            raise JobRejected(f"run '{run_id}' has no recorded blueprint", run_id=run_id)
        # Done first: a job counted in flight after this read is in the later one, and a
        # job is counted in flight before it is counted done.
        done = await self.coordination.members(self.keys.done(run_id))
        enqueued = await self.coordination.members(self.keys.enqueued(run_id))
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
            await self.queue.enqueue(job.to_json())
            out.add(node)
        # Nothing in flight and not over: the last job died before ending the run, or a child
        # run started awaiting unseen. (An awaiting run was ended already.)
        if not out and enqueued and await self.context.get(run_id, STATUS) != "awaiting":
            await self.quiescent(run_id)
        return out

    async def schedule_retry(self, job: JobPayload, wake: float) -> None:
        """Enqueue ``job`` (a node's next attempt) at epoch second ``wake``, durably: any
        worker's timer scan fires it."""
        timer = f"{wake:.6f}|{job.to_json()}"
        await self.coordination.add_to_set(self.keys.timers, timer, self.ttl)

    async def fire_due_timers(self, now: float | None = None) -> int:
        """Wake every sleeping node and enqueue every retry whose time has come; how many."""
        now = time.time() if now is None else now
        fired = 0
        for timer in await self.coordination.members(self.keys.timers):
            wake, target = _parse_timer(timer)
            if wake > now:
                continue
            run_id = target.run_id if isinstance(target, JobPayload) else target[0]
            if (
                await self.coordination.set_if_not_exist(
                    self.keys.timer_fired(timer), "1", self.ttl
                )
                and await self.coordination.get(self.keys.final(run_id)) is None
            ):
                if isinstance(target, JobPayload):
                    await self.queue.enqueue(target.to_json())
                else:
                    await self.resume_node(*target, {})
                fired += 1
            await self.coordination.remove_from_set(self.keys.timers, timer)
        return fired


def _parse_timer(timer: str) -> tuple[float, JobPayload | tuple[str, str, int]]:
    wake, _, rest = timer.partition("|")
    if rest.startswith("{"):
        return float(wake), JobPayload.from_json(rest)
    run_id, node_id, iteration = orjson.loads(rest)
    return float(wake), (str(run_id), str(node_id), int(iteration))
