"""Typed errors raised by Flowcraft.

Every error the engine raises is a :class:`FlowcraftError`. A user's own exception is never
swallowed: it is kept as ``__cause__`` of the :class:`NodeExecutionError` that reports it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AdapterError",
    "BlueprintError",
    "ConnectionFailed",
    "DeliveryLimitExceeded",
    "ExpressionError",
    "FlowcraftError",
    "ImplementationNotFound",
    "JobRejected",
    "NodeExecutionError",
    "NodeTimeoutError",
    "ResumeError",
    "RunExists",
    "SerializationError",
    "WorkflowCancelled",
]


class FlowcraftError(Exception):
    """Base class of every error Flowcraft raises.

    Args:
        message: What went wrong; names the offending node, edge or field.
        node_id: The node concerned, if any.
        blueprint_id: The blueprint concerned, if any.
        run_id: The run concerned, if any.
        is_fatal: A fatal error is not retried and does not trigger a fallback.
    """

    def __init__(
        self,
        message: str,
        *,
        node_id: str | None = None,
        blueprint_id: str | None = None,
        run_id: str | None = None,
        is_fatal: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.node_id = node_id
        self.blueprint_id = blueprint_id
        self.run_id = run_id
        self.is_fatal = is_fatal

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of a ``WorkflowError`` in the TypeScript Flowcraft."""
        cause = self.__cause__
        return {
            "name": type(self).__name__,
            "message": self.message,
            "nodeId": self.node_id,
            "blueprintId": self.blueprint_id,
            "executionId": self.run_id,
            "isFatal": self.is_fatal,
            "cause": (
                None if cause is None else {"name": type(cause).__name__, "message": str(cause)}
            ),
        }


class BlueprintError(FlowcraftError):
    """A blueprint is invalid; the message names the bad node, edge or field."""

    def __init__(self, message: str, *, field: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, is_fatal=True, **kwargs)
        self.field = field


class ExpressionError(FlowcraftError):
    """An edge condition, transform or loop condition cannot be parsed or is not allowed."""

    def __init__(self, message: str, *, expression: str, **kwargs: Any) -> None:
        super().__init__(message, is_fatal=True, **kwargs)
        self.expression = expression


class ImplementationNotFound(FlowcraftError):
    """A node's ``uses`` key is not in any registry."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, is_fatal=True, **kwargs)


class NodeExecutionError(FlowcraftError):
    """A node failed for good; the user's exception is ``__cause__``."""


class NodeTimeoutError(NodeExecutionError):
    """One attempt of a node ran longer than its ``config.timeout``."""


class WorkflowCancelled(FlowcraftError):
    """The run was cancelled through its signal or ``cancel(run_id)``."""


class ResumeError(FlowcraftError):
    """A resume request does not match the run's state (no such awaiting node, bad data)."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, is_fatal=True, **kwargs)


class RunExists(FlowcraftError):
    """A run was started under the id of a run started before (pass ``exists="attach"`` to
    ``start_run`` to join that run instead)."""


class SerializationError(FlowcraftError):
    """A context value cannot be serialised to JSON (or a string cannot be parsed)."""


class AdapterError(FlowcraftError):
    """A distributed backend failed."""


class ConnectionFailed(AdapterError):
    """A backend could not be reached."""


class JobRejected(FlowcraftError):
    """A job cannot be run (malformed, unknown blueprint or node, version mismatch)."""


class DeliveryLimitExceeded(JobRejected):
    """A job was delivered more times than the worker's ``max_deliveries`` without being
    handled: each time its handling failed in the backend, or its worker died."""
