"""Run hooks: code called when a run starts and when its result is ready.

Middleware wraps every *node*; a :class:`RunHooks` object sees every *run*. Register hooks with
``FlowRuntime(hooks=[...])`` (or append to ``runtime.hooks``) or with a distributed adapter's
``hooks``:

* ``before_run(run)`` is called before the first node of a run (or of a resumption) runs. For a
  distributed run it is called once, by ``start_run`` in the client's process. An exception
  raised here propagates: the run does not start.
* ``after_run(run, result)`` is called with the :class:`~flowcraft.result.WorkflowResult` each
  time a run ends or pauses ``awaiting``. For a distributed run it is called in the process that
  published that result (the worker whose job ended the run, or the client that cancelled it).
  An exception raised here is logged and ignored: the result stands.

Both may be sync or async. In memory, subflows are part of their parent's run and call no
hooks; in distributed mode a subflow's child is a run of its own and calls them.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowcraft.blueprint import Blueprint
    from flowcraft.result import WorkflowResult

__all__ = ["RunHooks", "RunInfo", "call_after_run", "call_before_run"]

_log = logging.getLogger("flowcraft.hooks")


@dataclass(slots=True)
class RunInfo:
    """What hooks are told about a run.

    Attributes:
        run_id: The run's id.
        blueprint_id: The blueprint's id.
        blueprint: The blueprint, when this process has it (a distributed ``after_run`` runs
            where the blueprint may not be registered).
        registry: The implementations the run uses (``uses`` key → function or class).
        resumed: Whether this is the resumption of a paused in-memory run.
        distributed: Whether the run executes on distributed workers.
        trace_context: The W3C trace context (``traceparent``...) of a distributed run. A
            ``before_run`` hook may set it; the run's jobs carry it to every worker.
    """

    run_id: str
    blueprint_id: str
    blueprint: Blueprint | None = None
    registry: Mapping[str, Any] = field(default_factory=dict)
    resumed: bool = False
    distributed: bool = False
    trace_context: dict[str, str] = field(default_factory=dict)


class RunHooks:
    """Base class with no-op hooks; override either (each may be sync or async)."""

    def before_run(self, run: RunInfo) -> Awaitable[None] | None:
        """Called before the run's first node; raising stops the run from starting."""
        return None

    def after_run(self, run: RunInfo, result: WorkflowResult) -> Awaitable[None] | None:
        """Called with the result when the run ends or pauses; errors are logged."""
        return None


async def call_before_run(hooks: Iterable[RunHooks], run: RunInfo) -> None:
    """Call every ``before_run`` in order; the first exception propagates."""
    for hook in hooks:
        value = hook.before_run(run)
        if inspect.isawaitable(value):
            await value


async def call_after_run(hooks: Iterable[RunHooks], run: RunInfo, result: WorkflowResult) -> None:
    """Call every ``after_run`` in order, logging (never raising) their exceptions."""
    for hook in hooks:
        try:
            value = hook.after_run(run, result)
            if inspect.isawaitable(value):
                await value
        except Exception:
            _log.exception("after_run hook %s failed for run %s", type(hook).__name__, run.run_id)
