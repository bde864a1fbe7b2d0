"""The in-memory runtime."""

from flowcraft.runtime.runtime import DEFAULT_CONCURRENCY, UNSET, FlowRuntime

__all__ = ["DEFAULT_CONCURRENCY", "UNSET", "FlowRuntime"]
