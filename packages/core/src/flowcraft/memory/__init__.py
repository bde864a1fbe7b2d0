"""The in-memory reference backend: queue, context and coordination in one process."""

from flowcraft.memory.adapter import JoinTimeout, MemoryAdapter, MemoryBackend
from flowcraft.memory.context import MemoryContextStore
from flowcraft.memory.coordination import MemoryCoordinationStore
from flowcraft.memory.events import MemoryEventLog
from flowcraft.memory.hop import MemoryHopCommitter
from flowcraft.memory.queue import DeadLetter, MemoryQueue
from flowcraft.memory.results import MemoryResultChannel

__all__ = [
    "DeadLetter",
    "JoinTimeout",
    "MemoryAdapter",
    "MemoryBackend",
    "MemoryContextStore",
    "MemoryCoordinationStore",
    "MemoryEventLog",
    "MemoryHopCommitter",
    "MemoryQueue",
    "MemoryResultChannel",
]
