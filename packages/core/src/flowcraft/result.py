"""The outcome of a run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from flowcraft.errors import FlowcraftError

__all__ = ["WorkflowResult", "WorkflowStatus"]

WorkflowStatus = Literal["completed", "failed", "stalled", "cancelled", "awaiting"]


@dataclass(slots=True)
class WorkflowResult:
    """What a run ended with.

    Attributes:
        status: ``completed``, ``failed``, ``stalled`` (nothing can make progress, work is left),
            ``cancelled`` or ``awaiting`` (paused at a wait, sleep or webhook node).
        context: The run's final context.
        serialized_context: ``context`` as JSON text; pass it to ``resume``.
        errors: The failures, each naming its node; the user's exception is ``__cause__``.
        run_id: The run's id.
    """

    status: WorkflowStatus
    context: dict[str, Any]
    serialized_context: str
    errors: list[FlowcraftError] = field(default_factory=list)
    run_id: str = ""

    @property
    def ok(self) -> bool:
        """Whether the run completed."""
        return self.status == "completed"

    def to_dict(self) -> dict[str, Any]:
        """The TypeScript ``WorkflowResult`` JSON shape (``errors`` omitted when empty)."""
        out: dict[str, Any] = {
            "context": self.context,
            "serializedContext": self.serialized_context,
            "status": self.status,
        }
        if self.errors:
            out["errors"] = [e.to_dict() for e in self.errors]
        return out
