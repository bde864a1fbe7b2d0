"""The split hop: a hop in four or five round trips when the stores live on different servers.

A backend whose queue, context store and coordination store are three servers (RabbitMQ with
PostgreSQL and Redis, Kafka with Cassandra and Redis, ...) cannot make a hop one atomic step,
and the generic path pays ten or more sequential round trips for it. When its coordination
store can do the coordination side in one step (:class:`~flowcraft.distributed.HopCoordination`,
which the shared Redis store implements in Lua), the adapter commits the common hops here:

1. claim: the result record, the join marks and the fences, in one step; a result stored
   already (a redelivery, a duplicate) or a graph with spliced nodes answers ``slow``;
2. the context writes, one patch;
3. the successors whose fences the claim won, enqueued (when the worker follows and the queue
   is a :class:`~flowcraft.distributed.ReservingQueue`, the first is leased to this worker
   instead, which runs it next without a round trip through the queue);
4. the job counted done, in one step; the job that empties the run's frontier ends it.

A hop into a join (a target with several predecessors) claims in two steps instead, around
the patch (:class:`~flowcraft.distributed.HopMarking`): the result record first, then the
context writes, then the marks, fences and counts. Marked before its writes landed, this
branch could let the branch completing the join fire it first, and the join would read a
missing input. A graph spliced between the two steps makes the second answer None: the hop
answers ``slow`` and the generic path routes from the stored result, as after a lost race.
A coordination store without ``mark_hop`` leaves such hops to the generic path.

A crash between the steps is repaired by the generic path, as after any crash: the job is
redelivered, finds its stored result and routes from it, writing the context before it marks.
That is why the claim stores the context writes inside the result record (``RECORD_OPS``), why
the successors are enqueued only after the context writes (they read them), and why the job
counts itself done only after its successors are enqueued (else another branch could end the
run before they exist). Nothing after the claim can change what it decided, so a duplicate of
the job can never write a second result or a second set of context writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import replace

import orjson

from flowcraft.distributed._hop import Hop, HopCommit
from flowcraft.distributed._payload import fired_by
from flowcraft.distributed._protocols import (
    ContextStore,
    Delivery,
    HopCoordination,
    HopMarking,
    Queue,
    ReservingQueue,
)
from flowcraft.distributed._storage import patch_writes
from flowcraft.node import PatchOperation

__all__ = ["RECORD_OPS", "SplitHop", "record_with_ops"]

RECORD_OPS = "ops"
"""Field of a stored result record: the job's context writes, when they are stored in a step
after the record (a redelivery after a crash in between still makes them)."""


def record_with_ops(record: str, ops: Sequence[PatchOperation]) -> str:
    """``record`` (a JSON object) with ``ops`` under :data:`RECORD_OPS`, without parsing it
    again (a node's output can be large)."""
    if not ops:
        return record
    tail = orjson.dumps(list(ops)).decode()
    if record == "{}":
        return f'{{"{RECORD_OPS}":{tail}}}'
    return f'{record[:-1]},"{RECORD_OPS}":{tail}}}'


class SplitHop:
    """A :class:`~flowcraft.distributed.HopCommitter` over a coordination store that claims
    hops in one step and a context store and queue of any kind (see the module docstring).

    The adapter uses one by itself when no ``hops`` is given and its coordination store is a
    :class:`~flowcraft.distributed.HopCoordination`.
    """

    reads_ahead = False

    def __init__(self, coordination: HopCoordination, context: ContextStore, queue: Queue) -> None:
        self._coordination = coordination
        self._marking = coordination if isinstance(coordination, HopMarking) else None
        self._context = context
        self._queue = queue
        self._reserving = queue if isinstance(queue, ReservingQueue) else None

    async def commit(
        self, delivery: Delivery, hop: Hop, stored: Callable[[], None] | None = None
    ) -> HopCommit:
        """Apply ``hop`` in four or five steps; ``slow`` when a claim finds it must not.

        ``stored`` is called once the result and context writes are stored, before any
        successor is enqueued (the node's events must precede its successors')."""
        # An invalid patch must fail the job before the claim makes its result final.
        patch_writes(hop.context_ops)
        record = record_with_ops(hop.result_record, hop.context_ops)
        mark = fired_by(hop.member)
        if any(len(target.preds) > 1 for target in hop.targets):
            marking = self._marking
            if marking is None:
                return HopCommit("slow")
            alone = replace(hop, targets=())
            if await self._coordination.claim_hop(alone, record, mark) is None:
                return HopCommit("slow")
            await self._stored(hop, stored)
            fired = await marking.mark_hop(hop, mark)
            if fired is None:
                return HopCommit("slow")
        else:
            fired = await self._coordination.claim_hop(hop, record, mark)
            if fired is None:
                return HopCommit("slow")
            await self._stored(hop, stored)
        following = await self._send(delivery, hop, fired) if fired else None
        quiet = await self._coordination.count_done(hop.done, hop.enqueued, hop.member, hop.ttl)
        return HopCommit("quiescent" if quiet else "applied", fired, following)

    async def _send(self, delivery: Delivery, hop: Hop, fired: Sequence[str]) -> Delivery | None:
        """Enqueue the won successors; the one the hop reserves, when the queue can lease it
        to this worker, is not enqueued but returned for the worker to run next."""
        won = set(fired)
        queue = self._reserving
        kept = (
            next((t for t in hop.targets if t.reserve and t.member in won), None)
            if queue is not None
            else None
        )
        bodies = [t.body for t in hop.targets if t.member in won and t is not kept]
        if queue is None or kept is None:
            await self._enqueue(bodies)
            return None
        # The reservation and the other successors' enqueues at once.
        reserved, sent = await asyncio.gather(
            queue.reserve(delivery, kept.body), self._enqueue(bodies), return_exceptions=True
        )
        if isinstance(reserved, BaseException):
            raise reserved
        if isinstance(sent, BaseException):
            # The job fails unacked; its redelivery routes from the stored result and
            # enqueues every successor, the reserved one too.
            if reserved is not None:
                queue.unreserve(delivery, reserved)
            raise sent
        if reserved is None:
            await self._queue.enqueue(kept.body)
        return reserved

    async def _enqueue(self, bodies: Sequence[str]) -> None:
        if len(bodies) == 1:
            await self._queue.enqueue(bodies[0])
        elif bodies:
            await asyncio.gather(*(self._queue.enqueue(body) for body in bodies))

    async def _stored(self, hop: Hop, stored: Callable[[], None] | None) -> None:
        if hop.context_ops:
            await self._context.patch(hop.run_id, hop.context_ops)
        if stored is not None:
            stored()
