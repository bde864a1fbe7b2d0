"""``Worker``: pulls jobs from an adapter's queue, runs them concurrently, fires sleep timers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

from flowcraft.distributed._protocols import Delivery
from flowcraft.distributed.adapter import BaseDistributedAdapter

__all__ = ["Worker"]

_log = logging.getLogger("flowcraft.worker")


class Worker:
    """Serves one adapter until stopped.

    Args:
        adapter: The backend adapter (with the registry and blueprints to run).
        concurrency: Jobs handled at once.
        receive_wait: Seconds one receive call may block waiting for a job.
        timer_interval: Seconds between scans for due sleep timers.
    """

    def __init__(
        self,
        adapter: BaseDistributedAdapter,
        *,
        concurrency: int = 8,
        receive_wait: float = 0.2,
        timer_interval: float = 0.2,
    ) -> None:
        self.adapter = adapter
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
        timers = asyncio.ensure_future(self._timers())
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
                    deliveries = await self.adapter._receive(slots, self.receive_wait)
                except Exception:
                    self._release_slots(slots)
                    _log.exception("receiving jobs failed; retrying")
                    await asyncio.sleep(self.receive_wait)
                    continue
                self._release_slots(slots - len(deliveries))
                for delivery in deliveries:
                    task = asyncio.ensure_future(self._handle(delivery))
                    self._jobs[task] = delivery
                    task.add_done_callback(self._finished)
        finally:
            timers.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timers

    def _release_slots(self, count: int) -> None:
        for _ in range(count):
            self._slots.release()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._jobs.pop(task, None)
        self._slots.release()

    async def _handle(self, delivery: Delivery) -> None:
        try:
            await self.adapter.handle(delivery)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Not acked: the queue redelivers it after the lease.
            _log.exception("job failed in the backend; it will be redelivered")

    async def _timers(self) -> None:
        while True:
            await asyncio.sleep(self.timer_interval)
            try:
                await self.adapter.fire_due_timers()
            except Exception:
                _log.exception("firing sleep timers failed")

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
        await self.adapter.stop_receiving()
        running = dict(self._jobs)
        if running:
            _, pending = await asyncio.wait(running, timeout=timeout)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                with contextlib.suppress(Exception):
                    await self.adapter._release(running[task])

    def kill(self) -> None:
        """Die abruptly, as under SIGKILL: nothing is acked or released (for fault tests)."""
        self._stopping = True
        self.adapter.abandon()
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
