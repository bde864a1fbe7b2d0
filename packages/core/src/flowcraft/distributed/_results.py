"""Final results: their stored records, the TypeScript status shape, and the result waiter.

:class:`ResultWaiter` serves every ``wait`` of a process over one listener of the backend's
:class:`~flowcraft.distributed.ResultChannel`: a burst of thousands of waits costs one
subscription (or one poll loop), not a connection each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from flowcraft import errors as _errors
from flowcraft.distributed._protocols import ResultChannel, Woken
from flowcraft.errors import BlueprintError, ExpressionError, FlowcraftError
from flowcraft.result import WorkflowResult

__all__ = ["PollingResultChannel", "ResultWaiter", "error_from_dict", "ts_status"]

_log = logging.getLogger("flowcraft.distributed")

Lookup = Callable[[str], Awaitable[WorkflowResult | None]]
Probe = Callable[[list[str]], Awaitable[list[str]]]


def ts_status(result: WorkflowResult) -> dict[str, Any]:
    """The TypeScript adapters' ``workflow:status:<runId>`` record of a final result."""
    out: dict[str, Any] = {"status": result.status}
    if result.status == "completed":
        out["payload"] = {
            "context": result.context,
            "serializedContext": result.serialized_context,
            "status": "completed",
        }
    elif result.errors:
        out["reason"] = "; ".join(e.message for e in result.errors)
    return out


def error_from_dict(raw: Mapping[str, Any]) -> FlowcraftError:
    """A :class:`FlowcraftError` rebuilt from its ``to_dict()`` record."""
    # The stored record names the error's class: rebuild that type when the core defines it
    # (ExpressionError, NodeExecutionError, ...), so results are typed as in memory.
    name = raw.get("name")
    cls = getattr(_errors, name, None) if name in _errors.__all__ else None
    if not (isinstance(cls, type) and issubclass(cls, FlowcraftError)):
        cls = FlowcraftError
    error = cls.__new__(cls)
    FlowcraftError.__init__(
        error,
        str(raw.get("message")),
        node_id=raw.get("nodeId"),
        blueprint_id=raw.get("blueprintId"),
        run_id=raw.get("executionId"),
        is_fatal=bool(raw.get("isFatal")),
    )
    if isinstance(error, ExpressionError):
        error.expression = str(raw.get("expression") or "")
    if isinstance(error, BlueprintError):
        error.field = raw.get("field")
    return error


class PollingResultChannel:
    """The result channel of a backend that cannot push: one loop per process wakes every
    waiter each ``interval`` seconds, and the waiter checks all its runs in one batched read.
    """

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def publish(self, run_id: str, result: WorkflowResult | None) -> None:
        """Nothing to push: the result is in the stores, where the next poll finds it."""

    async def listen(self, woken: Woken) -> None:
        """Start the poll loop."""

        async def poll() -> None:
            while True:
                await asyncio.sleep(self.interval)
                woken(None)

        if self._task is None:
            self._task = asyncio.ensure_future(poll())

    async def close(self) -> None:
        """Stop the poll loop."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class ResultWaiter:
    """Every wait of one process, over one listener of ``channel``.

    Args:
        channel: The backend's result channel.
        lookup: The stored result of a run (final, or awaiting a resume), or None.
        probe: Of the given runs, those that may have a result now, in one batched read; used
            when a wake names no run (a poll tick, a reconnect).
        concurrency: Most lookups in flight at once.
    """

    def __init__(
        self, channel: ResultChannel, lookup: Lookup, probe: Probe, *, concurrency: int = 16
    ) -> None:
        self.channel = channel
        self._lookup = lookup
        self._probe = probe
        self._limit = asyncio.Semaphore(concurrency)
        self._waiting: dict[str, list[asyncio.Future[WorkflowResult]]] = {}
        self._dirty: set[str] = set()
        self._everything = False
        self._checker: asyncio.Task[None] | None = None
        self._listening: asyncio.Task[None] | None = None

    async def wait(self, run_id: str, timeout: float | None) -> WorkflowResult:
        """The run's result once it is final or awaits a resume.

        Raises:
            TimeoutError: No result within ``timeout`` seconds.
        """
        await self._listen()
        future: asyncio.Future[WorkflowResult] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(run_id, []).append(future)
        try:
            # Listening already: a result stored before this read is found here, one stored
            # after it wakes the future.
            async with self._limit:
                result = await self._lookup(run_id)
            if result is not None:
                return result
            try:
                return await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise TimeoutError(f"run '{run_id}' did not finish within {timeout} s") from None
        finally:
            waiters = self._waiting.get(run_id)
            if waiters is not None:
                with contextlib.suppress(ValueError):
                    waiters.remove(future)
                if not waiters:
                    del self._waiting[run_id]
            if not future.done():
                future.cancel()

    async def _listen(self) -> None:
        if self._listening is None:
            self._listening = asyncio.ensure_future(self.channel.listen(self._woken))
        # Shielded: one caller's cancellation must not cancel the subscription of the others.
        await asyncio.shield(self._listening)

    def _woken(self, run_id: str | None) -> None:
        if run_id is None:
            self._everything = True
        elif run_id in self._waiting:
            self._dirty.add(run_id)
        else:
            return
        if self._checker is None or self._checker.done():
            self._checker = asyncio.ensure_future(self._check())

    async def _check(self) -> None:
        while self._dirty or self._everything:
            dirty, self._dirty = self._dirty, set()
            try:
                if self._everything:
                    self._everything = False
                    dirty |= set(await self._probe(list(self._waiting)))
                await asyncio.gather(*(self._resolve(run_id) for run_id in dirty))
            except Exception as exc:
                # The store is down: look again shortly; waits time out on their own.
                _log.warning("checking waited runs failed (%s); retrying", exc)
                self._everything = True
                await asyncio.sleep(0.5)

    async def _resolve(self, run_id: str) -> None:
        if run_id not in self._waiting:
            return
        async with self._limit:
            result = await self._lookup(run_id)
        if result is None:
            return
        for future in self._waiting.get(run_id, ()):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        """Stop listening; pending waits time out."""
        for task in (self._checker, self._listening):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._checker = self._listening = None
        await self.channel.close()
