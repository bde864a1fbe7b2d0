"""The event bus: typed workflow events, delivered to subscribers without ever failing a node.

Events are built only when someone listens (:meth:`EventBus.wants`), so an unobserved run pays
nothing for them. A subscriber that raises is logged and the run carries on.

Two delivery modes:

* ``EventBus()`` (the default): sync subscribers are called inside :meth:`EventBus.emit`, async
  ones run as tasks.
* ``EventBus(max_queue=N)``: each subscriber gets its own queue of at most ``N`` events, served
  by a background task; :meth:`EventBus.emit` only appends, so a slow subscriber never slows a
  node. When a queue is full the event is dropped for that subscriber and counted in
  :attr:`EventBus.overflowed` (and :attr:`EventBus.dropped`). Subscribers registered with
  ``inline=True`` are still called inside ``emit`` (for quick bookkeeping such as tracing).

:class:`JsonLinesSink` is a ready-made subscriber that writes one JSON object per event.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, cast

import orjson

__all__ = ["EVENT_TYPES", "EventBus", "EventType", "FlowEvent", "JsonLinesSink", "Subscriber"]

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


class _Subscription:
    """One subscriber, its filter and, in queued mode, its pending events."""

    __slots__ = ("inline", "queue", "subscriber", "task", "types")

    def __init__(
        self, subscriber: Subscriber, types: frozenset[str] | None, *, inline: bool
    ) -> None:
        self.subscriber = subscriber
        self.types = types
        self.inline = inline
        self.queue: deque[FlowEvent] = deque()
        self.task: asyncio.Task[None] | None = None


class EventBus:
    """Delivers events to subscribers, each optionally filtered by event type.

    Args:
        max_queue: ``None`` (default) calls sync subscribers inline and runs async ones as tasks.
            A positive number gives each subscriber a bounded queue served in the background, so
            ``emit`` never waits for a subscriber; events that do not fit are dropped and counted.

    Attributes:
        dropped: Events a subscriber did not get or did not handle: ``failed + overflowed``.
        failed: Deliveries whose subscriber raised (logged, never propagated).
        overflowed: Events dropped because a subscriber's queue was full.
    """

    def __init__(self, *, max_queue: int | None = None) -> None:
        if max_queue is not None and max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self.max_queue = max_queue
        self._subscriptions: list[_Subscription] = []
        self._wanted: frozenset[str] = frozenset()
        self._pending: set[asyncio.Task[None]] = set()
        self.failed = 0
        self.overflowed = 0

    @property
    def dropped(self) -> int:
        """Events not delivered or not handled: subscriber failures plus queue overflows."""
        return self.failed + self.overflowed

    def subscribe(
        self,
        subscriber: Subscriber,
        types: Iterable[EventType] | None = None,
        *,
        inline: bool = False,
    ) -> Callable[[], None]:
        """Register ``subscriber`` for ``types`` (all when None).

        Args:
            subscriber: A sync or async callable taking a :class:`FlowEvent`.
            types: The event types it receives; ``None`` for all.
            inline: In queued mode, call it inside :meth:`emit` anyway (it must be quick and
                sync). Ignored without ``max_queue``, where sync subscribers are always inline.

        Returns:
            A function that unsubscribes it (idempotent).

        Raises:
            ValueError: ``types`` names an unknown event type.
        """
        wanted = None if types is None else frozenset(types)
        if wanted is not None and not wanted <= EVENT_TYPES:
            raise ValueError(f"unknown event types: {sorted(wanted - EVENT_TYPES)}")
        entry = _Subscription(subscriber, wanted, inline=inline or self.max_queue is None)
        self._subscriptions.append(entry)
        self._recompute()

        def unsubscribe() -> None:
            if entry in self._subscriptions:
                self._subscriptions.remove(entry)
                entry.queue.clear()
                self._recompute()

        return unsubscribe

    def _recompute(self) -> None:
        wanted: set[str] = set()
        for entry in self._subscriptions:
            wanted |= EVENT_TYPES if entry.types is None else entry.types
        self._wanted = frozenset(wanted)

    def wants(self, event_type: str) -> bool:
        """Whether anyone listens to ``event_type``; check before building a payload."""
        return event_type in self._wanted

    def emit(self, event_type: EventType, payload: Mapping[str, Any]) -> None:
        """Deliver an event to its subscribers. Never raises and, in queued mode, never waits."""
        if event_type not in self._wanted:
            return
        event = FlowEvent(event_type, payload)
        for entry in self._subscriptions:
            if entry.types is not None and event_type not in entry.types:
                continue
            if entry.inline:
                self._call(entry.subscriber, event)
            else:
                self._enqueue(entry, event)

    def _call(self, subscriber: Subscriber, event: FlowEvent) -> None:
        try:
            outcome = subscriber(event)
            if inspect.isawaitable(outcome):
                task = asyncio.ensure_future(self._guard(outcome, event))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
        except Exception:
            self.failed += 1
            _log.exception("event subscriber failed on %s", event.type)

    def _enqueue(self, entry: _Subscription, event: FlowEvent) -> None:
        assert self.max_queue is not None
        if len(entry.queue) >= self.max_queue:
            self.overflowed += 1
            return
        entry.queue.append(event)
        if entry.task is None or entry.task.done():
            try:
                entry.task = asyncio.get_running_loop().create_task(self._serve(entry))
            except RuntimeError:  # no running loop: deliver now rather than never
                entry.queue.pop()
                self._call(entry.subscriber, event)
                return
            self._pending.add(entry.task)
            entry.task.add_done_callback(self._pending.discard)

    async def _serve(self, entry: _Subscription) -> None:
        queue = entry.queue
        while queue:
            event = queue.popleft()
            try:
                outcome = entry.subscriber(event)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                self.failed += 1
                _log.exception("event subscriber failed on %s", event.type)
            # Let the producer run between deliveries even if the subscriber never awaits.
            await asyncio.sleep(0)

    async def _guard(self, outcome: Awaitable[None], event: FlowEvent) -> None:
        try:
            await outcome
        except Exception:
            self.failed += 1
            _log.exception("event subscriber failed on %s", event.type)

    async def drain(self) -> None:
        """Wait until every queued event is delivered and async subscribers have finished."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    return repr(value)


class JsonLinesSink:
    """A subscriber that writes each event as one JSON line ``{type, payload, timestamp}``.

    Values JSON cannot represent are written as their ``repr`` so that a log line is never lost.
    Use it with a queued bus (``EventBus(max_queue=...)``) so file writes never run in a node's
    path::

        bus = EventBus(max_queue=10_000)
        with JsonLinesSink("events.jsonl") as sink:
            bus.subscribe(sink)
            ...

    Args:
        target: A file path (opened for appending, created with its parent folders) or an open
            text or binary stream, which the sink does not close.
        flush: Flush after every line (default), so the file is current while the run goes on.
    """

    def __init__(self, target: str | os.PathLike[str] | IO[str] | IO[bytes], *, flush: bool = True):
        self._flush = flush
        self._lock = threading.Lock()
        self._owned = isinstance(target, str | os.PathLike)
        self._stream: IO[str] | IO[bytes]
        if isinstance(target, str | os.PathLike):
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._stream = path.open("ab")
        else:
            self._stream = target
        self._binary = "b" in getattr(self._stream, "mode", "") or not hasattr(
            self._stream, "encoding"
        )
        self.lines = 0
        """Lines written so far."""

    def __call__(self, event: FlowEvent) -> None:
        """Write ``event``; the bus calls this."""
        line = (
            orjson.dumps(event.to_dict(), default=_json_default, option=orjson.OPT_NON_STR_KEYS)
            + b"\n"
        )
        with self._lock:
            if self._binary:
                cast(IO[bytes], self._stream).write(line)
            else:
                cast(IO[str], self._stream).write(line.decode())
            if self._flush:
                self._stream.flush()
            self.lines += 1

    def close(self) -> None:
        """Flush, and close the file if the sink opened it."""
        with self._lock:
            if self._stream.closed:
                return
            self._stream.flush()
            if self._owned:
                self._stream.close()

    def __enter__(self) -> JsonLinesSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
