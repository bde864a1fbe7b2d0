"""``MemoryResultChannel``: wakes the waiters of every adapter sharing a memory backend."""

from __future__ import annotations

from flowcraft.distributed._protocols import Woken
from flowcraft.result import WorkflowResult

__all__ = ["MemoryResultChannel", "MemoryWakes"]


class MemoryWakes:
    """The listeners of one memory backend (one per listening adapter)."""

    def __init__(self) -> None:
        self.listeners: list[Woken] = []

    def wake(self, run_id: str) -> None:
        """Tell every listener that ``run_id`` published."""
        for woken in list(self.listeners):
            woken(run_id)


class MemoryResultChannel:
    """One adapter's end of a backend's :class:`MemoryWakes`."""

    def __init__(self, wakes: MemoryWakes) -> None:
        self._wakes = wakes
        self._woken: Woken | None = None

    async def publish(self, run_id: str, result: WorkflowResult | None) -> None:
        """Wake every listener of the backend."""
        self._wakes.wake(run_id)

    async def listen(self, woken: Woken) -> None:
        """Add ``woken`` to the backend's listeners."""
        if self._woken is None:
            self._woken = woken
            self._wakes.listeners.append(woken)

    async def close(self) -> None:
        """Stop listening."""
        if self._woken is not None:
            self._wakes.listeners.remove(self._woken)
            self._woken = None
