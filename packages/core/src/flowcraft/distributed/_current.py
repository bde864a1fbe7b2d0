"""The distributed job whose node runs in the current task, for middleware that needs it.

``_execute.py`` makes the job current around the node call (its middleware included), so a
middleware such as :class:`~flowcraft.telemetry.OpenTelemetryMiddleware` can tell a distributed
job from an in-memory run and reach what other workers stored for the run without any change
to the middleware interface. Outside a distributed job :func:`current_job` is ``None``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextvars import ContextVar

from flowcraft.distributed._keys import NODE_TRACE, TRACE
from flowcraft.distributed._payload import JobPayload
from flowcraft.distributed._protocols import ContextStore

__all__ = ["CurrentJob", "current_job", "running_job"]

_CURRENT: ContextVar[CurrentJob | None] = ContextVar("flowcraft_current_job", default=None)


class CurrentJob:
    """The job being run: its payload, the predecessors that fed its node, and the trace
    contexts the run keeps in its context store.

    Args:
        payload: The job.
        context: The backend's context store.
        load_predecessors: Reads the predecessors whose edges were taken into the node (called
            at most once, only if someone asks).
        predecessors: The predecessors, when the job already read them to build the input.
    """

    __slots__ = ("_context", "_load", "_predecessors", "payload")

    def __init__(
        self,
        payload: JobPayload,
        context: ContextStore,
        load_predecessors: Callable[[], Awaitable[list[str]]],
        predecessors: list[str] | None = None,
    ) -> None:
        self.payload = payload
        self._context = context
        self._load = load_predecessors
        self._predecessors = predecessors

    async def predecessors(self) -> list[str]:
        """The nodes whose taken edges fed this node, sorted (a join's completed sources)."""
        if self._predecessors is None:
            self._predecessors = sorted(await self._load())
        return list(self._predecessors)

    async def trace_contexts(
        self, node_ids: list[str]
    ) -> tuple[dict[str, str] | None, list[dict[str, str]]]:
        """The run's trace context and the stored span contexts of ``node_ids``, in one read.

        The run's comes from the job when it carries one; jobs made after the start without
        it (resumes, reconciled jobs) fall back to the copy ``start_run`` stored. Nodes with no
        stored span context are left out of the list.
        """
        run = dict(self.payload.trace_context) if self.payload.trace_context else None
        keys = [NODE_TRACE + node_id for node_id in node_ids]
        if run is None:
            keys.append(TRACE)
        if not keys:
            return run, []
        found = await self._context.get_many(self.payload.run_id, keys)
        if run is None:
            stored = found.get(TRACE)
            run = _carrier(stored)
        carriers = [_carrier(found.get(NODE_TRACE + node_id)) for node_id in node_ids]
        return run, [c for c in carriers if c]

    async def save_trace_context(self, carrier: Mapping[str, str]) -> None:
        """Store the span context of this job's node, for successors that link it."""
        key = NODE_TRACE + self.payload.node_id
        await self._context.set(self.payload.run_id, key, dict(carrier))


def _carrier(value: object) -> dict[str, str] | None:
    if not isinstance(value, Mapping) or not value:
        return None
    return {str(k): str(v) for k, v in value.items()}


def current_job() -> CurrentJob | None:
    """The distributed job whose node runs in this task, or ``None`` (e.g. in memory)."""
    return _CURRENT.get()


@contextlib.contextmanager
def running_job(job: CurrentJob) -> Iterator[CurrentJob]:
    """Make ``job`` current for the ``with`` block."""
    token = _CURRENT.set(job)
    try:
        yield job
    finally:
        _CURRENT.reset(token)
