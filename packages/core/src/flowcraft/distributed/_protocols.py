"""The parts a backend provides: a queue, two stores, a result channel, optional fast paths.

:class:`~flowcraft.distributed.DistributedAdapter` is composed of them; ``docs/backends.md``
states each method's contract in full. Values in both stores are JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from flowcraft.node import PatchOperation
from flowcraft.result import WorkflowResult

if TYPE_CHECKING:
    from flowcraft.distributed._hop import Hop, HopCommit

__all__ = [
    "Arrival",
    "BulkDelete",
    "EventLog",
    "ArrivalReader",
    "ContextStore",
    "CoordinationStore",
    "Delivery",
    "HopCommitter",
    "HopCoordination",
    "HopMarking",
    "Queue",
    "ReservingQueue",
    "ResultChannel",
]

Arrival = tuple[list[str | None], list[set[str]], dict[str, Any]]
"""A job's arrival read: its coordination strings, its coordination sets, its context fields."""


@dataclass(slots=True)
class Delivery:
    """A job as received from a queue.

    Attributes:
        body: The job's JSON text (possibly malformed).
        handle: The backend's receipt (message id, delivery tag, lock token).
        delivery_count: How many times it was delivered, from 1.
        settled: Whether the backend already acked it inside an atomic hop step.
        arrival: What the job reads on arrival, when the backend read it already (a job it
            reserved for this worker in the previous job's atomic hop step).
        next: A successor the backend reserved for this worker while settling this job:
            the worker handles it next, in the same slot, instead of fetching it.
    """

    body: str
    handle: Any
    delivery_count: int = 1
    settled: bool = False
    arrival: Arrival | None = None
    next: Delivery | None = None


@runtime_checkable
class Queue(Protocol):
    """At-least-once delivery of job bodies with a lease per delivery.

    Raise :class:`~flowcraft.errors.ConnectionFailed` when the server cannot be reached (the
    worker waits it out and retries) and :class:`~flowcraft.errors.AdapterError` for any other
    failure of the server or driver.
    """

    async def receive(self, max_jobs: int, wait: float) -> list[Delivery]:
        """Up to ``max_jobs`` deliveries, waiting at most ``wait`` seconds for the first.

        Each is leased to this process until acked, dead-lettered or released, or until its
        lease runs out unrenewed (then it is delivered again, its count one higher).
        """

    async def enqueue(self, body: str) -> None:
        """Put a job on the queue; it is stored durably when this returns."""

    async def ack(self, delivery: Delivery) -> None:
        """Remove a handled job for good (its effects are stored already)."""

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a job that cannot be handled where operators find it, with ``reason``."""

    async def release(self, delivery: Delivery) -> None:
        """Make a job deliverable again now (a stopping worker hands it back)."""

    async def unsettled(self, delivery: Delivery, lease: float) -> None:
        """The handling of a job failed in the backend and left it unacked: make it
        deliverable again within ``lease`` seconds. A queue whose lease runs out by itself
        does nothing; one whose client keeps renewing held jobs must hand it back."""

    async def extend_lease(self, delivery: Delivery, seconds: float) -> None:
        """Keep a job leased for another ``seconds`` (the heartbeat calls this)."""

    async def stop_receiving(self) -> None:
        """Stop fetching: hand prefetched jobs not yet delivered back to the queue."""

    def abandon(self) -> None:
        """Drop everything without acking or releasing, as a killed process would (fault
        tests): a client that renews leases in the background stops renewing them."""

    async def close(self) -> None:
        """Release connections; safe to call repeatedly."""


@runtime_checkable
class ReservingQueue(Protocol):
    """Optional, on a :class:`Queue`: leases a successor that a hop fired to the worker that
    fired it, so that worker runs it next instead of the queue handing it to any worker
    (``HopTarget.reserve``; the split hop asks for it when the worker follows)."""

    async def reserve(self, delivery: Delivery, body: str) -> Delivery | None:
        """``body`` as a delivery leased to this worker, stored as durably as an enqueued job
        (or vouched for by ``delivery``, still unacked); None when it cannot be (the caller
        enqueues it then). A worker dying with it loses it to the queue when its lease ends."""

    def unreserve(self, delivery: Delivery, successor: Delivery) -> None:
        """Undo :meth:`reserve`, leaving no job behind: the caller enqueues the successor
        after all, or fails the job (its redelivery enqueues every successor again)."""


@runtime_checkable
class CoordinationStore(Protocol):
    """Atomic keys for joins, fences and timers. Every write takes a TTL in seconds."""

    async def increment(self, key: str, ttl: float) -> int:
        """Add one to the integer under ``key`` (0 when absent); the new value."""

    async def set_if_not_exist(self, key: str, value: str, ttl: float) -> bool:
        """Store ``value`` unless ``key`` exists; whether it was stored.

        Must stay true for the writer when the driver retries a call whose reply was lost
        (see :func:`~flowcraft.backend.write_token`).
        """

    async def add_to_set(self, key: str, member: str, ttl: float) -> int:
        """Add ``member`` to the set under ``key`` (idempotent); the set's size afterwards."""

    async def remove_from_set(self, key: str, member: str) -> int:
        """Remove ``member`` from the set under ``key``; the set's size afterwards."""

    async def members(self, key: str) -> set[str]:
        """The members of the set under ``key`` (empty when absent)."""

    async def read(
        self, keys: Sequence[str], set_keys: Sequence[str]
    ) -> tuple[list[str | None], list[set[str]]]:
        """``get`` of each of ``keys`` and ``members`` of each of ``set_keys``, at once.

        A job reads its run's state through this before it runs, so stores that can answer
        several reads in one round trip (a pipeline, a batch get) should.
        """

    async def extend_ttl(self, key: str, ttl: float) -> bool:
        """Reset the TTL of ``key``; whether it existed."""

    async def get(self, key: str) -> str | None:
        """The string under ``key``, or None (sets and counters read as their text form)."""

    async def delete(self, key: str) -> None:
        """Remove ``key`` if present."""


@runtime_checkable
class ContextStore(Protocol):
    """The runs' contexts: one namespace of JSON values per run id."""

    async def get(self, run_id: str, key: str) -> Any:
        """The value under ``key`` or None."""

    async def set(self, run_id: str, key: str, value: Any) -> None:
        """Store ``value`` under ``key``."""

    async def has(self, run_id: str, key: str) -> bool:
        """Whether ``key`` is present."""

    async def delete(self, run_id: str, key: str) -> bool:
        """Remove ``key``; whether it was present."""

    async def get_many(self, run_id: str, keys: Iterable[str]) -> dict[str, Any]:
        """The present keys among ``keys``."""

    async def patch(self, run_id: str, operations: Iterable[PatchOperation]) -> None:
        """Apply set/delete operations all-or-nothing (invalid ops apply nothing)."""

    async def to_dict(self, run_id: str) -> dict[str, Any]:
        """The whole context of the run."""

    async def delete_run(self, run_id: str) -> None:
        """Forget the run's context."""


@runtime_checkable
class BulkDelete(Protocol):
    """Optional, for a coordination store: many keys removed in one call (a finished run's
    bookkeeping is a few keys per node)."""

    async def delete_many(self, keys: Sequence[str]) -> None:
        """Remove every present key of ``keys``."""


Woken = Callable[[str | None], None]
"""Told a run id that published, or None when wakes may have been missed (re-check all)."""


@runtime_checkable
class ResultChannel(Protocol):
    """Wakes the processes waiting on runs; the result itself is in the stores already.

    One listener per process serves every wait of that process
    (:class:`~flowcraft.backend.ResultWaiter`).
    """

    async def publish(self, run_id: str, result: WorkflowResult | None) -> None:
        """Wake the waiters of ``run_id``: ``result`` is its final result, or None when the
        run awaits a resume. A backend may also store a status record here."""

    async def listen(self, woken: Woken) -> None:
        """Call ``woken`` with each run id published from now on, until :meth:`close`;
        return once listening. Call ``woken(None)`` after any gap (a reconnect)."""

    async def close(self) -> None:
        """Stop listening and release connections."""


@runtime_checkable
class HopCommitter(Protocol):
    """Optional fast path: a finished node's whole hop in one atomic step (``_hop.py``)."""

    reads_ahead: bool
    """Whether queued successors carry their arrival read (then every hop target has one)."""

    async def commit(self, delivery: Delivery, hop: Hop) -> HopCommit:
        """Apply ``hop`` all-or-nothing; ``HopCommit("slow")`` when it must not (the generic
        path runs instead)."""


@runtime_checkable
class HopCoordination(Protocol):
    """Optional, for a coordination store on a server of its own (the context store and queue
    elsewhere): the coordination side of a hop in two atomic steps, so core's split hop
    (``_splithop.py``) costs four round trips instead of the generic path's ten or more."""

    async def claim_hop(self, hop: Hop, record: str, mark: str) -> list[str] | None:
        """In one atomic step: None, changing nothing, if ``hop.result_key`` is set or
        ``hop.dynamic`` is not empty; else store ``record`` under ``hop.result_key``, add every
        target's ``mark`` to its ``taken`` set and ``source`` to its ``resolved`` set, and for
        each target whose ``preds`` have all resolved add its member to ``hop.enqueued`` and
        set its fence to ``mark`` unless set (a fence already ``skipped`` adds the member to
        ``hop.done``); a target whose join is incomplete goes into ``hop.pending``. Returns
        the members whose fences this step set, in target order. Every key written gets
        ``hop.ttl``."""

    async def count_done(self, done: str, enqueued: str, member: str, ttl: float) -> bool:
        """Add ``member`` to the sets ``done`` and ``enqueued`` in one atomic step; whether
        ``done`` then has at least as many members as ``enqueued``."""


@runtime_checkable
class HopMarking(Protocol):
    """Optional, beside :class:`HopCoordination`: a hop's join marks in a step of their own,
    after its context writes. The split hop then claims a hop into a join (a target with
    several predecessors) in two steps around its context patch, so the branch completing the
    join cannot fire it before this branch's writes land; without it such hops take the
    generic path."""

    async def mark_hop(self, hop: Hop, mark: str) -> list[str] | None:
        """In one atomic step: None, changing nothing, if ``hop.dynamic`` is not empty; else
        the second half of :meth:`HopCoordination.claim_hop` (every target's marks, fences,
        in-flight counts and pending joins, the result record aside). Returns the members
        whose fences this step set, in target order."""


@runtime_checkable
class ArrivalReader(Protocol):
    """Optional fast path: what a job reads on arrival, from both stores in one round trip."""

    async def read_arrival(
        self,
        run_id: str,
        keys: Sequence[str],
        set_keys: Sequence[str],
        context_keys: Sequence[str] | None,
    ) -> Arrival:
        """Coordination ``keys`` and ``set_keys`` (as ``CoordinationStore.read``) and the
        present ``context_keys`` of the run (none when None)."""


@runtime_checkable
class EventLog(Protocol):
    """Optional: each run's events, readable from any process (``client.events``).

    Every append keeps the log's TTL; a log holds at most its bounded number of events (the
    oldest go first).
    """

    async def append(self, run_id: str, events: Sequence[bytes]) -> None:
        """Add ``events`` (each ``FlowEvent.to_dict()`` as JSON) at the end of the run's log."""

    async def read(self, run_id: str, after: str | None, wait: float) -> list[tuple[str, bytes]]:
        """The events after cursor ``after`` (None: from the first kept), as ``(cursor, JSON)``
        pairs in order; waits up to ``wait`` seconds for one when there are none."""
