"""The event bus: typed workflow events, delivered to subscribers without ever failing a node.

Events are built only when someone listens (:meth:`EventBus.wants`), so an unobserved run pays
nothing for them. A subscriber that raises is logged and the run carries on.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["EVENT_TYPES", "EventBus", "EventType", "FlowEvent", "Subscriber"]

_log = logging.getLogger("flowcraft.events")

EventType = Literal[
    "workflow:start",
    "workflow:resume",
    "workflow:stall",
    "workflow:pause",
    "workflow:finish",
    "node:start",
    "node:finish",
    "node:error",
    "node:fallback",
    "node:retry",
    "node:skipped",
    "edge:evaluate",
    "context:change",
    "batch:start",
    "batch:finish",
    "job:enqueued",
    "job:processed",
    "job:failed",
]

EVENT_TYPES: frozenset[str] = frozenset(EventType.__args__)  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class FlowEvent:
    """One event: its ``type`` (the TypeScript names) and a camelCase ``payload``."""

    type: EventType
    payload: Mapping[str, Any]
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape ``{type, payload, timestamp}``."""
        return {
            "type": self.type,
            "payload": dict(self.payload),
            "timestamp": self.timestamp.isoformat(),
        }


Subscriber = Callable[[FlowEvent], Awaitable[None] | None]


class EventBus:
    """Delivers events to subscribers, each optionally filtered by event type.

    Sync subscribers are called inline; async ones run as tasks so they never slow a node.
    """

    def __init__(self) -> None:
        self._subscribers: list[tuple[Subscriber, frozenset[str] | None]] = []
        self._wanted: frozenset[str] = frozenset()
        self._pending: set[asyncio.Task[None]] = set()
        self.dropped = 0
        """Events whose subscriber raised."""

    def subscribe(
        self, subscriber: Subscriber, types: Iterable[EventType] | None = None
    ) -> Callable[[], None]:
        """Register ``subscriber`` for ``types`` (all when None); returns an unsubscriber."""
        wanted = None if types is None else frozenset(types)
        if wanted is not None and not wanted <= EVENT_TYPES:
            raise ValueError(f"unknown event types: {sorted(wanted - EVENT_TYPES)}")
        entry = (subscriber, wanted)
        self._subscribers.append(entry)
        self._recompute()

        def unsubscribe() -> None:
            if entry in self._subscribers:
                self._subscribers.remove(entry)
                self._recompute()

        return unsubscribe

    def _recompute(self) -> None:
        wanted: set[str] = set()
        for _, types in self._subscribers:
            wanted |= EVENT_TYPES if types is None else types
        self._wanted = frozenset(wanted)

    def wants(self, event_type: str) -> bool:
        """Whether anyone listens to ``event_type``; check before building a payload."""
        return event_type in self._wanted

    def emit(self, event_type: EventType, payload: Mapping[str, Any]) -> None:
        """Deliver an event to its subscribers. Never raises."""
        if event_type not in self._wanted:
            return
        event = FlowEvent(event_type, payload)
        for subscriber, types in self._subscribers:
            if types is not None and event_type not in types:
                continue
            try:
                outcome = subscriber(event)
                if inspect.isawaitable(outcome):
                    task = asyncio.ensure_future(self._guard(outcome, event))
                    self._pending.add(task)
                    task.add_done_callback(self._pending.discard)
            except Exception:
                self.dropped += 1
                _log.exception("event subscriber failed on %s", event_type)

    async def _guard(self, outcome: Awaitable[None], event: FlowEvent) -> None:
        try:
            await outcome
        except Exception:
            self.dropped += 1
            _log.exception("event subscriber failed on %s", event.type)

    async def drain(self) -> None:
        """Wait for async subscribers still running."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
