"""``Client``: starts distributed runs and waits for their results."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from flowcraft.distributed._events import read_events
from flowcraft.distributed.adapter import DistributedAdapter
from flowcraft.events import FlowEvent
from flowcraft.result import WorkflowResult

__all__ = ["Client"]

_UNSET: Any = object()


class Client:
    """The client side of a backend: needs no registry, only blueprints to find start nodes.

    Args:
        adapter: An adapter of the backend (its queue hooks and stores are used; it runs no
            jobs unless a :class:`~flowcraft.distributed.Worker` serves it).
    """

    def __init__(self, adapter: DistributedAdapter) -> None:
        self.adapter = adapter

    async def start(
        self,
        blueprint_id: str,
        initial_context: Mapping[str, Any] | None = None,
        run_id: str | None = None,
    ) -> str:
        """Start a run; its id."""
        return await self.adapter.start_run(blueprint_id, initial_context, run_id)

    async def wait(self, run_id: str, timeout: float | None = None) -> WorkflowResult:
        """The run's result once it finishes or awaits a resume (pushed, not polled).

        Raises:
            TimeoutError: The run did not get there within ``timeout`` seconds.
        """
        return await self.adapter.wait_result(run_id, timeout)

    async def run(
        self,
        blueprint_id: str,
        initial_context: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> WorkflowResult:
        """:meth:`start` then :meth:`wait`."""
        return await self.wait(await self.start(blueprint_id, initial_context), timeout)

    async def status(self, run_id: str) -> str:
        """``running``, ``awaiting``, a final status, or ``unknown``."""
        return await self.adapter.status(run_id)

    async def cancel(self, run_id: str) -> bool:
        """Cancel the run; whether this call ended it."""
        return await self.adapter.cancel(run_id)

    async def resume_with_action(
        self,
        run_id: str,
        action: str | None = None,
        output: Any = _UNSET,
        node_id: str | None = None,
    ) -> str:
        """Complete an awaiting node and route by ``action``; the resumed node's id."""
        if output is _UNSET:
            return await self.adapter.resume_with_action(run_id, action, node_id=node_id)
        return await self.adapter.resume_with_action(run_id, action, output, node_id)

    def events(self, run_id: str, *, follow: bool = True) -> AsyncIterator[FlowEvent]:
        """The run's events as the workers that ran it wrote them (their adapters need
        ``run_events=True``): from the first kept, then, with ``follow``, live until the run
        finishes. Works from any process of the deployment."""
        return read_events(self.adapter.event_log, run_id, follow=follow)
