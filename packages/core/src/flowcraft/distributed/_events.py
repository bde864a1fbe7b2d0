"""Run events readable from any process: the forwarder that writes a process's events into
the backend's :class:`~flowcraft.distributed.EventLog`, a generic log over the coordination
store, and the reader behind ``Client.events``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, cast

import orjson

from flowcraft.distributed._keys import Keys
from flowcraft.distributed._protocols import CoordinationStore, EventLog
from flowcraft.events import EventBus, EventType, FlowEvent

__all__ = ["EventForwarder", "StoreEventLog", "read_events"]

_log = logging.getLogger("flowcraft.distributed")
_TERMINAL = frozenset({"completed", "failed", "cancelled", "stalled"})


def _run_of(payload: Any) -> str | None:
    run_id = payload.get("executionId") or payload.get("runId")
    return run_id if isinstance(run_id, str) and run_id else None


class EventForwarder:
    """Subscribes to an adapter's event bus and appends each run's events to its log, in
    batches: what accumulates while an append is in flight goes out next, per run in order
    (two appends of one run in flight at once could land out of order)."""

    def __init__(self, log: EventLog, bus: EventBus) -> None:
        self._log = log
        self._buffer: dict[str, list[bytes]] = {}
        self._draining: asyncio.Task[None] | None = None
        self.unsubscribe = bus.subscribe(self._collect, inline=True)

    def _collect(self, event: FlowEvent) -> None:
        run_id = _run_of(event.payload)
        if run_id is None:
            return
        self._buffer.setdefault(run_id, []).append(
            orjson.dumps(event.to_dict(), default=str, option=orjson.OPT_NON_STR_KEYS)
        )
        if self._draining is None or self._draining.done():
            self._draining = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        # Started from an event, so the rest of the tick's events join the first batch.
        await asyncio.sleep(0)
        while self._buffer:
            buffer, self._buffer = self._buffer, {}
            await asyncio.gather(*(self._append(run, events) for run, events in buffer.items()))

    async def _append(self, run_id: str, events: list[bytes]) -> None:
        try:
            await self._log.append(run_id, events)
        except Exception as exc:
            # Events are best effort: a lost append never fails a job.
            _log.warning("could not append %d events of run %s: %s", len(events), run_id, exc)

    async def close(self) -> None:
        """Stop forwarding, after the appends in flight and those still buffered."""
        self.unsubscribe()
        while self._draining is not None and not self._draining.done():
            await self._draining
        if self._buffer:
            await self._drain()


class StoreEventLog:
    """An :class:`~flowcraft.distributed.EventLog` over any coordination store: a sequence
    counter and a set of ``<sequence>|<event>`` members per run (polled, as a set cannot
    block). Backends with a native log (a stream, a topic) should provide their own.
    """

    def __init__(
        self,
        store: CoordinationStore,
        keys: Keys,
        *,
        ttl: float,
        max_events: int = 10_000,
        poll: float = 0.1,
    ) -> None:
        self._store = store
        self._keys = keys
        self._ttl = ttl
        self._max = max_events
        self._poll = poll

    async def append(self, run_id: str, events: Sequence[bytes]) -> None:
        store, key = self._store, self._keys.events(run_id)
        for event in events:
            sequence = await store.increment(self._keys.events(run_id) + ":seq", self._ttl)
            await store.add_to_set(key, f"{sequence:012d}|{event.decode()}", self._ttl)
            if sequence > self._max:
                # The oldest member's number is known: the one this append pushed out.
                oldest = await self._member(run_id, sequence - self._max)
                if oldest is not None:
                    await store.remove_from_set(key, oldest)

    async def _member(self, run_id: str, sequence: int) -> str | None:
        prefix = f"{sequence:012d}|"
        members = await self._store.members(self._keys.events(run_id))
        return next((m for m in members if m.startswith(prefix)), None)

    async def read(self, run_id: str, after: str | None, wait: float) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + wait
        while True:
            members = sorted(await self._store.members(self._keys.events(run_id)))
            out = [
                (cursor, event.encode())
                for cursor, _, event in (m.partition("|") for m in members)
                if after is None or cursor > after
            ]
            if out or time.monotonic() >= deadline:
                return out
            await asyncio.sleep(min(self._poll, max(0.0, deadline - time.monotonic())))


async def read_events(
    log: EventLog, run_id: str, *, follow: bool, wait: float = 1.0
) -> AsyncIterator[FlowEvent]:
    """The run's events from the first kept; with ``follow``, then live until the run
    finishes (a terminal ``workflow:finish``)."""
    cursor: str | None = None
    while True:
        batch = await log.read(run_id, cursor, wait if follow else 0.0)
        if not batch and not follow:
            return
        for position, raw in batch:
            cursor = position
            event = _event(raw)
            if event is None:
                continue
            yield event
            if (
                follow
                and event.type == "workflow:finish"
                and event.payload.get("status") in _TERMINAL
            ):
                return


def _event(raw: bytes) -> FlowEvent | None:
    with contextlib.suppress(ValueError, KeyError, TypeError):
        data = orjson.loads(raw)
        return FlowEvent(
            cast(EventType, data["type"]),
            data["payload"],
            datetime.fromisoformat(data["timestamp"]),
        )
    _log.warning("skipping an event that is not a Flowcraft event: %r", raw[:200])
    return None
