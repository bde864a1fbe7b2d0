"""``Worker``: pulls jobs from an adapter's queue, runs them concurrently, fires sleep timers
and, one worker of a deployment at a time, reconciles stalled runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from types import TracebackType

from flowcraft.distributed._protocols import Delivery
from flowcraft.distributed.adapter import DistributedAdapter
from flowcraft.distributed.reconciler import Reconciler
from flowcraft.errors import ConnectionFailed

__all__ = ["Worker"]

_log = logging.getLogger("flowcraft.worker")
_BACKOFF_MAX = 5.0
"""Longest pause, in seconds, between attempts to reach a backend that is down."""
_FOLLOW_MAX = 100
"""Most successors one slot takes in a row before it queues the next one for everyone: the
other runs waiting in the queue get the slot back now and then."""
_FOLLOW_SECONDS = 1.0
"""Most seconds one slot keeps taking jobs handed to it by hop steps: a slot that never goes
back to the queue never receives, and a receive is where a queue does its periodic work
(delayed jobs that came due, jobs of dead workers)."""


def _cancel_pending() -> bool:
    # A client library may close the connection under a cancelled command and raise a
    # connection error instead of CancelledError: the task's cancel request is still pending.
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class Worker:
    """Serves one adapter until stopped.

    Args:
        adapter: The backend adapter (with the registry and blueprints to run).
        concurrency: Jobs handled at once.
        receive_wait: Seconds one receive call may block waiting for a job.
        timer_interval: Seconds between scans for due sleep timers.
        max_deliveries: Deliveries of one job after which it is dead-lettered and its run
            failed with :class:`~flowcraft.distributed.DeliveryLimitExceeded`: its handling
            kept failing in the backend (not a lost connection, which is waited out), or its
            worker kept dying. Without a limit such a job would come back once per lease
            forever.
        reconcile_every: Seconds between reconcile passes; each period one worker of the
            deployment (elected through the coordination store) re-enqueues the lost jobs of
            stalled runs (:class:`~flowcraft.distributed.Reconciler`), so no deployment needs a
            separate process to guarantee completion. Default: the adapter's lease; 0: never.
        stalled_after: Seconds without progress after which a run counts as stalled (jobs a
            live worker holds, however long, never do). Default: ten leases, at least a
            minute. Keep it above the longest time a job may wait in the queue: a job
            reconciled while still queued runs twice. (A worker killed mid-hop needs no
            reconcile: its job is redelivered after the lease and enqueues what it fired.)
    """

    def __init__(
        self,
        adapter: DistributedAdapter,
        *,
        concurrency: int = 8,
        receive_wait: float = 0.2,
        timer_interval: float = 0.2,
        max_deliveries: int = 10,
        reconcile_every: float | None = None,
        stalled_after: float | None = None,
    ) -> None:
        self.adapter = adapter
        self.reconcile_every = adapter.lease if reconcile_every is None else reconcile_every
        self.reconciler = Reconciler(
            adapter,
            stalled_after=max(60.0, 10 * adapter.lease) if stalled_after is None else stalled_after,
        )
        self._token = uuid.uuid4().hex
        self.max_deliveries = max(1, max_deliveries)
        self.concurrency = max(1, concurrency)
        self.receive_wait = receive_wait
        self.timer_interval = timer_interval
        self._jobs: dict[asyncio.Task[None], Delivery] = {}
        self._main: asyncio.Task[None] | None = None
        self._stopping = False
        self._slots = asyncio.Semaphore(self.concurrency)

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` or :meth:`kill` was called."""
        return self._stopping

    @property
    def is_running(self) -> bool:
        """Whether the worker is serving jobs."""
        return self._main is not None and not self._main.done()

    def start(self) -> None:
        """Start serving in background tasks.

        Raises:
            RuntimeError: The worker was started before (workers are single-use).
        """
        if self._main is not None:
            raise RuntimeError("Already started")
        self._main = asyncio.ensure_future(self._serve())

    async def run(self) -> None:
        """Serve until :meth:`stop` is called."""
        self.start()
        assert self._main is not None
        with contextlib.suppress(asyncio.CancelledError):
            await self._main

    async def _serve(self) -> None:
        chores = [asyncio.ensure_future(self._timers())]
        if self.reconcile_every > 0:
            chores.append(asyncio.ensure_future(self._reconcile()))
        failures = 0
        try:
            while not self._stopping:
                await self._slots.acquire()
                if self.stopping:
                    self._slots.release()
                    break
                # Every free slot joins the one receive: batching queues fetch them in one call.
                slots = 1
                while not self._slots.locked():
                    await self._slots.acquire()
                    slots += 1
                try:
                    deliveries = await self.adapter.queue.receive(slots, self.receive_wait)
                except Exception as exc:
                    self._release_slots(slots)
                    if _cancel_pending():
                        raise asyncio.CancelledError from exc
                    # Back off while the backend stays down, so that neither it (once it
                    # comes back) nor the log is flooded.
                    pause = min(_BACKOFF_MAX, self.receive_wait * 2**failures)
                    failures += 1
                    if isinstance(exc, ConnectionFailed):
                        _log.warning("receiving jobs failed (%s); retrying in %.2f s", exc, pause)
                    else:
                        _log.exception("receiving jobs failed; retrying in %.2f s", pause)
                    await asyncio.sleep(pause)
                    continue
                failures = 0
                self._release_slots(slots - len(deliveries))
                for delivery in deliveries:
                    task = asyncio.ensure_future(self._handle(delivery))
                    self._jobs[task] = delivery
                    task.add_done_callback(self._finished)
        finally:
            for chore in chores:
                chore.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await chore

    def _release_slots(self, count: int) -> None:
        for _ in range(count):
            self._slots.release()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._jobs.pop(task, None)
        self._slots.release()

    async def _handle(self, delivery: Delivery) -> None:
        task = asyncio.current_task()
        current: Delivery | None = delivery
        followed = 0
        until = time.monotonic() + _FOLLOW_SECONDS
        while current is not None:
            follow = followed < _FOLLOW_MAX and not self._stopping and time.monotonic() < until
            await self._handle_one(current, follow)
            current = current.next
            if current is None:
                return
            if self._stopping:
                # A successor reserved just before stop() is handed back like an unfinished job.
                await self.adapter.queue.release(current)
                return
            if task is not None:
                self._jobs[task] = current
            followed += 1

    async def _handle_one(self, delivery: Delivery, follow: bool) -> None:
        if delivery.delivery_count > self.max_deliveries:
            await self._give_up(
                delivery,
                f"delivered {delivery.delivery_count} times without being handled (the"
                f" worker's max_deliveries is {self.max_deliveries}): its handling kept"
                " failing in the backend, or its worker kept dying",
            )
            return
        pause = self.receive_wait
        while True:
            try:
                await self.adapter.handle(delivery, follow=follow)
                return
            except Exception as exc:
                if _cancel_pending():
                    raise asyncio.CancelledError from exc
                if not isinstance(exc, ConnectionFailed):
                    if delivery.delivery_count >= self.max_deliveries:
                        await self._give_up(
                            delivery,
                            f"handling failed in the backend on each of"
                            f" {delivery.delivery_count} deliveries (the worker's"
                            f" max_deliveries), last with {type(exc).__name__}: {exc}",
                        )
                        return
                    # Not acked: the queue redelivers it after the lease.
                    _log.exception("job failed in the backend; it will be redelivered")
                    try:
                        await self.adapter.queue.unsettled(delivery, self.adapter.lease)
                    except Exception:
                        _log.exception("could not hand a failed job back to the queue")
                    return
                # Handling is idempotent, so the job is tried again here once the backend is
                # back: a queue that renews leases while its job is held would never hand
                # it out again, and others would wait out the lease. stop() cancels this.
                _log.warning("backend unreachable handling a job (%s); retry in %.2f s", exc, pause)
                await asyncio.sleep(pause)
                pause = min(_BACKOFF_MAX, pause * 2)

    async def _give_up(self, delivery: Delivery, reason: str) -> None:
        try:
            await self.adapter.give_up(delivery, reason)
        except Exception:
            # Not dead-lettered: it comes back after the lease, and is given up on again.
            _log.exception("could not dead-letter a job delivered too often")

    async def _timers(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.timer_interval)
            try:
                await self.adapter.fire_due_timers()
            except Exception as exc:
                if _cancel_pending():
                    raise asyncio.CancelledError from exc
                if isinstance(exc, ConnectionFailed):
                    _log.warning("firing sleep timers failed (%s)", exc)
                else:
                    _log.exception("firing sleep timers failed")

    async def _reconcile(self) -> None:
        adapter = self.adapter
        while not self._stopping:
            await asyncio.sleep(self.reconcile_every)
            try:
                # One worker per period: the lease expires before the next one.
                elected = await adapter.coordination.set_if_not_exist(
                    adapter.keys.reconciling, self._token, self.reconcile_every * 0.9
                )
                if not elected:
                    continue
                stats = await self.reconciler.run()
                if stats["reconciled_runs"] or stats["failed_runs"]:
                    _log.warning("reconciled stalled runs: %s", stats)
            except Exception as exc:
                if _cancel_pending():
                    raise asyncio.CancelledError from exc
                if isinstance(exc, ConnectionFailed):
                    _log.warning("reconciling failed (%s)", exc)
                else:
                    _log.exception("reconciling failed")

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs, let running ones finish for ``timeout`` s, release the rest.

        Safe to call repeatedly or before start. No job is lost: an unfinished job is handed
        back to the queue (or, if even that fails, redelivered after its lease).
        """
        self._stopping = True
        if self._main is not None:
            # The serving loop may be parked on a slot held by a job that never ends; a job it
            # was receiving when cancelled comes back after its lease.
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
        await self.adapter.queue.stop_receiving()
        running = dict(self._jobs)
        if running:
            _, pending = await asyncio.wait(running, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                # Bounded: a node that ignores cancellation must not hold the shutdown forever
                # (its job is released below and redelivered; the node may still finish).
                await asyncio.wait(pending, timeout=max(timeout, 1.0))
            for task in pending:
                with contextlib.suppress(Exception):
                    await self.adapter.queue.release(running[task])

    def kill(self) -> None:
        """Die abruptly, as under SIGKILL: nothing is acked or released (for fault tests)."""
        self._stopping = True
        self.adapter.queue.abandon()
        for task in list(self._jobs):
            task.cancel()
        if self._main is not None:
            self._main.cancel()

    async def __aenter__(self) -> Worker:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
