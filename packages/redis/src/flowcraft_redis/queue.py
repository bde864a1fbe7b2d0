"""``BullMQQueue``: the job queue on BullMQ (the ``bullmq`` library), TS-compatible.

Jobs are named ``executeNode`` on ``flowcraft-queue`` with data ``{runId, blueprintId, nodeId,
...}``, as the TypeScript adapter writes them, so TS clients and BullMQ dashboards work.

BullMQ's worker pushes jobs to a processor; this class turns that into the pull interface of
:class:`~flowcraft.distributed.BaseDistributedAdapter`: the processor hands each job over and
waits for the adapter's verdict (ack → completed, dead-letter → failed, release → delayed
back to now). BullMQ renews the job lock while the processor waits, so a long node keeps its
lease, and its stalled-job check re-queues the jobs of a worker that died.

Features: delayed jobs, leases with automatic renewal, stalled-job recovery, failed set as the
dead-letter queue, configurable concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from typing import Any

import orjson
import redis.asyncio as aioredis
from bullmq import Job as BullJob
from bullmq import Queue as BullQueue
from bullmq import Worker as BullWorker
from bullmq.custom_errors import DelayedError, UnrecoverableError

from flowcraft.backend import Delivery
from flowcraft_redis._scripts_client import ScriptsClient
from flowcraft_redis_store.batch import Batcher
from flowcraft_redis_store.errors import translated
from flowcraft_redis_store.settings import RedisSettings, clone_pool

__all__ = ["BullMQQueue"]

_log = logging.getLogger("flowcraft.redis")

JOB_NAME = "executeNode"
_ADD_KEYS = ["wait", "paused", "meta", "id", "completed", "delayed", "active", "events", "marker"]
"""The keys of bullmq's addStandardJob script, in its order."""
CLOSE_GRACE = 10.0
"""Seconds closing waits for jobs still being handled before it stops renewing their locks."""
_RELEASE = object()


async def _settled_start(consumer: BullWorker, run: asyncio.Future[None]) -> None:
    for _ in range(int(CLOSE_GRACE / 0.01)):
        if consumer.running or run.done():
            return
        await asyncio.sleep(0.01)


def _log_run_failure(run: asyncio.Future[None]) -> None:
    if not run.cancelled() and run.exception() is not None:
        _log.error("the BullMQ worker stopped", exc_info=run.exception())


class _Handle:
    __slots__ = ("failed", "job", "token", "verdict")

    def __init__(self, job: Any, token: str) -> None:
        loop = asyncio.get_running_loop()
        self.job = job
        self.token = token
        self.verdict: asyncio.Future[Any] = loop.create_future()
        self.failed: asyncio.Future[None] = loop.create_future()


def job_key(data: Any) -> str:
    """The BullMQ id of a job: one per run, node, iteration, role and attempt.

    BullMQ adds nothing under an id it holds (waiting, delayed, active or failed), so a job
    enqueued again while its first copy waits or runs (a predecessor redelivered after a
    crash enqueues what it fired again; a reconcile re-enqueues what is in flight) is not
    run twice. A completed job's hash is removed at once, so a later copy only re-routes from
    the stored result.
    """
    fields = [
        data.get("runId"),
        data.get("nodeId"),
        data.get("iteration", 0),
        data.get("rescues"),
        data.get("resume"),
        data.get("attempt", 1),
    ]
    return "fc-" + hashlib.blake2b(orjson.dumps(fields), digest_size=16).hexdigest()


class BullMQQueue:
    """BullMQ producer and (lazily) consumer for one queue.

    Args:
        client: The adapter's client: BullMQ's connections go where its connections go.
        settings: Queue name and BullMQ key prefix.
        concurrency: Jobs BullMQ hands over at once (the worker's concurrency).
        lock_duration: Seconds a job's lock lasts between renewals (the lease).
        keep_failed: Seconds failed (dead-lettered) jobs are kept.
        keep_failed_count: Most failed jobs kept.
        batcher: The adapter's per-tick batch: jobs due now are added through it, with
            bullmq's own script and arguments, instead of on bullmq's connection.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        settings: RedisSettings,
        *,
        concurrency: int = 16,
        lock_duration: float = 30.0,
        keep_failed: int = 7 * 86400,
        keep_failed_count: int = 10_000,
        batcher: Batcher | None = None,
    ) -> None:
        self._client = client
        self._settings = settings
        self._batcher = batcher
        self._concurrency = concurrency
        self._lock_ms = int(lock_duration * 1000)
        # A completed job's effects are in the stores: its hash is removed at once (bullmq's
        # age-based removal runs only when later jobs finish, so an idle queue kept them
        # forever). Dead letters stay for operators, bounded in age and number.
        self._job_opts: dict[str, Any] = {
            "removeOnComplete": True,
            "removeOnFail": {"age": keep_failed, "count": keep_failed_count},
        }
        self._producer: BullQueue | None = None
        self._consumer: BullWorker | None = None
        self._inbox: asyncio.Queue[Delivery] = asyncio.Queue()
        self._abandoned: asyncio.Future[None] | None = None
        self._open: set[_Handle] = set()
        self._closing: asyncio.Future[None] | None = None
        self._stopped = False
        self._failing: set[_Handle] = set()
        self._run: asyncio.Future[None] | None = None

    def _queue(self) -> BullQueue:
        if self._producer is None:
            connection = aioredis.Redis.from_pool(clone_pool(self._client, decode_responses=True))
            self._producer = BullQueue(
                self._settings.queue_name,
                {"connection": connection, "prefix": self._settings.bullmq_prefix},
            )
        return self._producer

    async def enqueue(self, body: str) -> None:
        """Add one ``executeNode`` job, under an id of its own (see :func:`job_key`)."""
        data = orjson.loads(body)
        opts = {**self._job_opts, "jobId": job_key(data)}

        async def add() -> None:
            queue = self._queue()
            if self._batcher is None:
                await queue.add(JOB_NAME, data, opts)
                return
            # What Queue.add does for a job due now (Scripts.addStandardJob), with the script
            # call joining the tick's batch: one round trip saved per successor.
            job = BullJob(queue, JOB_NAME, data, {**queue.jobsOpts, **opts})
            scripts = queue.backend.scripts
            keys = scripts.getKeys(_ADD_KEYS)
            args = [*scripts.addJobArgs(job), job.timestamp]
            added = await self._batcher.script(scripts.commands["addStandardJob"], keys, args)
            if isinstance(added, int) and added < 0:
                raise scripts.finishedErrors(
                    {"code": added, "parentKey": job.parentKey, "command": "addJob"}
                )

        async def reconnect(error: Exception) -> None:
            # BullMQ's producer connection has no reconnect policy of ours, and a successor
            # whose add fails after its fence was taken would never be queued: retry the add
            # on a fresh producer, with the stores' back-off.
            producer, self._producer = self._producer, None
            if producer is not None:
                with contextlib.suppress(Exception):
                    await producer.close()

        async with translated():
            await self._settings.retry().call_with_retry(add, reconnect)

    async def receive(self, max_jobs: int, wait: float) -> list[Delivery]:
        """Deliveries handed over by the BullMQ worker."""
        if self._consumer is None and not self._stopped:
            self._consumer = BullWorker(
                self._settings.queue_name,
                self._process,
                {
                    "connection": ScriptsClient(self._client, self._settings),
                    "prefix": self._settings.bullmq_prefix,
                    "concurrency": self._concurrency,
                    "lockDuration": self._lock_ms,
                    # Jobs of a dead worker come back once their lock expires.
                    "stalledInterval": self._lock_ms,
                    "maxStalledCount": 10,
                    # Started below, as a task this queue keeps (see _settled_start).
                    "autorun": False,
                },
            )
            self._consumer.on("failed", self._on_failed)
            self._run = asyncio.ensure_future(self._consumer.run())
            self._run.add_done_callback(_log_run_failure)
        if self._stopped:
            return []
        out: list[Delivery] = []
        if self._inbox.empty():
            # wait_for makes a task and a timer: only worth it when there is nothing to take.
            with contextlib.suppress(TimeoutError):
                out.append(await asyncio.wait_for(self._inbox.get(), wait))
        else:
            out.append(self._inbox.get_nowait())
        while out and len(out) < max_jobs and not self._inbox.empty():
            out.append(self._inbox.get_nowait())
        return out

    async def _process(self, job: Any, token: str) -> Any:
        handle = _Handle(job, token)
        if self._stopped:
            # Fetched while the consumer was closing: nobody will handle it here.
            handle.verdict.set_result(_RELEASE)
        self._open.add(handle)
        handle.verdict.add_done_callback(lambda _: self._open.discard(handle))
        body = orjson.dumps(job.data).decode()
        # attemptsStarted counts every start, also after a hand-back (moveToDelayed), which
        # attemptsMade does not; older job records only have the other two.
        started = int(getattr(job, "attemptsStarted", 0) or 0)
        attempts = int(getattr(job, "attemptsMade", 0) or 0)
        stalled = int(getattr(job, "stalledCounter", 0) or 0)
        count = max(started, 1 + attempts + stalled)
        await self._inbox.put(Delivery(body=body, handle=handle, delivery_count=count))
        verdict = await handle.verdict
        if verdict is _RELEASE or isinstance(verdict, float):
            due = time.time() + (verdict if isinstance(verdict, float) else 0.0)
            await job.moveToDelayed(int(due * 1000), token)
            raise DelayedError()
        if isinstance(verdict, str):
            raise UnrecoverableError(verdict)
        return None

    def _on_failed(self, job: Any, error: Any = None) -> None:
        for handle in self._open | self._failing:
            if handle.job.id == job.id and not handle.failed.done():
                handle.failed.set_result(None)

    @staticmethod
    def _settle(delivery: Delivery, verdict: Any) -> None:
        handle = delivery.handle
        # A delivery handed in by hand (tests, tools) has no BullMQ job to settle.
        if isinstance(handle, _Handle) and not handle.verdict.done():
            handle.verdict.set_result(verdict)

    async def ack(self, delivery: Delivery) -> None:
        """Let BullMQ mark the job completed."""
        self._settle(delivery, None)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the job to BullMQ's failed set with ``reason``, and wait until it is there."""
        handle = delivery.handle
        self._settle(delivery, reason)
        if isinstance(handle, _Handle):
            self._failing.add(handle)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(handle.failed), 5.0)
            finally:
                self._failing.discard(handle)

    async def release(self, delivery: Delivery) -> None:
        """Hand the job back to the queue now."""
        self._settle(delivery, _RELEASE)

    async def unsettled(self, delivery: Delivery, seconds: float) -> None:
        """Hand a job whose handling failed back to the queue, due in ``seconds``.

        BullMQ renews the lock as long as the processor waits for a verdict, so a job left
        without one would never come back.
        """
        self._settle(delivery, float(seconds))

    async def extend_lease(self, delivery: Delivery, seconds: float) -> None:
        """Nothing to do: BullMQ renews the lock of every job its processor holds."""

    def abandon(self) -> None:
        """Stop consuming and renewing locks at once, without settling any job."""
        self._stopped = True
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            self._abandoned = asyncio.ensure_future(self._close_consumer(consumer, self._run, 0))

    async def stop_receiving(self) -> None:
        """Stop fetching; jobs fetched but not yet handed to the adapter go back at once."""
        self._stopped = True
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        # BullMQ's close waits for the jobs still being handled, which get their verdicts later.
        self._closing = asyncio.ensure_future(self._close_consumer(consumer, self._run))
        while not self._inbox.empty():
            self._settle(self._inbox.get_nowait(), _RELEASE)

    @staticmethod
    async def _close_consumer(
        consumer: BullWorker, run: asyncio.Future[None] | None, grace: float = CLOSE_GRACE
    ) -> None:
        # A worker closed while its run() is still opening its connections would have them
        # opened after the close, and never closed: let the start finish first.
        if run is not None:
            await _settled_start(consumer, run)
        try:
            if grace <= 0:
                raise TimeoutError
            await asyncio.wait_for(asyncio.shield(consumer.close()), grace)
        except TimeoutError:
            # A job still held after the grace period comes back when its lock expires.
            await consumer.close(force=True)
        # Fetches bullmq started before its close can still be queued on its connection, and
        # reopen it after the close: let them end, then close the connections once more.
        # asyncio.wait, not wait_for: a force-closed run ends cancelled, which must not
        # cancel this close with it.
        if run is not None:
            await asyncio.wait([run], timeout=CLOSE_GRACE)
        leftover = [task for task in getattr(consumer, "processing", ()) if not task.done()]
        if leftover:
            await asyncio.wait(leftover, timeout=CLOSE_GRACE)
        for client in (getattr(consumer, "client", None), getattr(consumer, "bclient", None)):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()

    async def close(self) -> None:
        """Stop consuming and close connections; jobs not yet handled go back to the queue."""
        await self.stop_receiving()
        for handle in list(self._open):
            if not handle.verdict.done():
                handle.verdict.set_result(_RELEASE)
        for pending in (self._closing, self._abandoned):
            if pending is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pending, 2 * CLOSE_GRACE)
        self._closing = self._abandoned = None
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.close()
