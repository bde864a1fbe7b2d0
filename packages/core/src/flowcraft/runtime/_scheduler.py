"""In-memory timers: continue runs paused at ``sleep`` nodes when their wake-up time comes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flowcraft.blueprint import Blueprint
from flowcraft.result import WorkflowResult

if TYPE_CHECKING:
    from flowcraft.runtime.runtime import FlowRuntime

__all__ = ["Scheduler"]

_log = logging.getLogger("flowcraft.scheduler")


@dataclass(slots=True)
class _Entry:
    blueprint: Blueprint
    state: str
    registry: Mapping[str, Any]
    timers: list[tuple[datetime, str]]


def _timers(result: WorkflowResult) -> list[tuple[datetime, str]]:
    details = result.context.get("_awaitingDetails") or {}
    timers = []
    for node_id, detail in details.items():
        if isinstance(detail, dict) and detail.get("reason") == "timer":
            timers.append((datetime.fromisoformat(detail["wakeUpAt"]), node_id))
    return sorted(timers)


class Scheduler:
    """Holds each sleeping run's latest state and resumes it when a timer is due.

    A run is keyed by its id and always resumed from the state its last step produced, so a run
    that sleeps twice never repeats work. Call :meth:`tick` yourself, or :meth:`start` a loop.
    """

    def __init__(self, runtime: FlowRuntime) -> None:
        self._runtime = runtime
        self._entries: dict[str, _Entry] = {}
        self._waiters: dict[str, list[asyncio.Future[WorkflowResult]]] = {}
        self._task: asyncio.Task[None] | None = None

    def observe(
        self, blueprint: Blueprint, result: WorkflowResult, registry: Mapping[str, Any]
    ) -> None:
        """Record a run that ended ``awaiting``; called by the runtime."""
        timers = _timers(result)
        if not timers:
            self.forget(result.run_id, result)
            return
        self._entries[result.run_id] = _Entry(
            blueprint, result.serialized_context, registry, timers
        )

    def forget(self, run_id: str, result: WorkflowResult) -> None:
        """Drop a run that no longer sleeps and hand its result to waiters."""
        self._entries.pop(run_id, None)
        for waiter in self._waiters.pop(run_id, []):
            if not waiter.done():
                waiter.set_result(result)

    @property
    def pending(self) -> dict[str, datetime]:
        """Run id → its next wake-up time."""
        return {run_id: entry.timers[0][0] for run_id, entry in self._entries.items()}

    async def tick(self, now: datetime | None = None) -> int:
        """Resume every due timer once; returns how many were resumed."""
        moment = now or datetime.now(UTC)
        resumed = 0
        for run_id in list(self._entries):
            entry = self._entries.get(run_id)
            if entry is None or entry.timers[0][0] > moment:
                continue
            node_id = entry.timers[0][1]
            resumed += 1
            try:
                await self._runtime.resume(
                    entry.blueprint, entry.state, None, node_id, function_registry=entry.registry
                )
            except Exception:
                _log.exception("resuming run %s at %s failed", run_id, node_id)
                self._entries.pop(run_id, None)
        return resumed

    async def wait(self, run_id: str, timeout: float | None = None) -> WorkflowResult:
        """Wait until a sleeping run finishes or awaits something other than a timer."""
        future: asyncio.Future[WorkflowResult] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(run_id, []).append(future)
        async with asyncio.timeout(timeout):
            return await future

    def start(self, interval: float = 1.0) -> None:
        """Run :meth:`tick` every ``interval`` seconds in the background."""
        if self._task is not None and not self._task.done():
            return

        async def loop() -> None:
            while True:
                await self.tick()
                await asyncio.sleep(interval)

        self._task = asyncio.ensure_future(loop())

    async def stop(self) -> None:
        """Stop the background loop."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
