"""The split hop: a hop in four round trips when the stores live on different servers.

A backend whose queue, context store and coordination store are three servers (RabbitMQ with
PostgreSQL and Redis, Kafka with Cassandra and Redis, ...) cannot make a hop one atomic step,
and the generic path pays ten or more sequential round trips for it. When its coordination
store can do the coordination side in one step (:class:`~flowcraft.distributed.HopCoordination`,
which the shared Redis store implements in Lua), the adapter commits the common hops here:

1. claim: the result record, the join marks and the fences, in one step; a result stored
   already (a redelivery, a duplicate) or a graph with spliced nodes answers ``slow``;
2. the context writes, one patch;
3. the successors whose fences the claim won, enqueued;
4. the job counted done, in one step; the job that empties the run's frontier ends it.

A crash between the steps is repaired by the generic path, as after any crash: the job is
redelivered, finds its stored result and routes from it. That is why the claim stores the
context writes inside the result record (``RECORD_OPS``), why the successors are enqueued only
after the context writes (they read them), and why the job counts itself done only after its
successors are enqueued (else another branch could end the run before they exist). Nothing
after the claim can change what it decided, so a duplicate of the job can never write a second
result or a second set of context writes.

A hop with context writes into a join (a target with several predecessors) takes the generic
path: its claim would mark the branch resolved before its writes land, and the branch that
completes the join could fire it in between (a join that read a missing input was caught by
the GCP backend's chaos test, with no worker killed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import orjson

from flowcraft.distributed._hop import Hop, HopCommit
from flowcraft.distributed._payload import fired_by
from flowcraft.distributed._protocols import ContextStore, Delivery, HopCoordination, Queue
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
        self._context = context
        self._queue = queue

    async def commit(
        self, delivery: Delivery, hop: Hop, stored: Callable[[], None] | None = None
    ) -> HopCommit:
        """Apply ``hop`` in four steps; ``slow`` when the claim finds it must not.

        ``stored`` is called once the result and context writes are stored, before any
        successor is enqueued (the node's events must precede its successors')."""
        if hop.context_ops and any(len(target.preds) > 1 for target in hop.targets):
            # The claim marks this branch resolved before its context writes land, so the
            # branch completing the join could fire it first and the join would read without
            # them; the generic path writes the context before it marks.
            return HopCommit("slow")
        # An invalid patch must fail the job before the claim makes its result final.
        patch_writes(hop.context_ops)
        record = record_with_ops(hop.result_record, hop.context_ops)
        fired = await self._coordination.claim_hop(hop, record, fired_by(hop.member))
        if fired is None:
            return HopCommit("slow")
        if hop.context_ops:
            await self._context.patch(hop.run_id, hop.context_ops)
        if stored is not None:
            stored()
        if fired:
            won = set(fired)
            bodies = [target.body for target in hop.targets if target.member in won]
            if len(bodies) == 1:
                await self._queue.enqueue(bodies[0])
            else:
                await asyncio.gather(*(self._queue.enqueue(body) for body in bodies))
        quiet = await self._coordination.count_done(hop.done, hop.enqueued, hop.member, hop.ttl)
        return HopCommit("quiescent" if quiet else "applied", fired)
