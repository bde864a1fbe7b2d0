"""``MemoryHopCommitter``: the reference of the one-step hop (``flowcraft.backend.Hop``).

Plain Python over the memory stores, run without an await, so nothing else of this process
interleaves with it: the same all-or-nothing step the Redis transports make in one Lua script
(``flowcraft_redis/hop.py``), written to be read. A backend with server-side transactions
implements this, step for step.
"""

from __future__ import annotations

from flowcraft.distributed._hop import ArrivalRead, Hop, HopCommit, HopTarget
from flowcraft.distributed._payload import fired_by
from flowcraft.distributed._protocols import Arrival, Delivery
from flowcraft.distributed._storage import patch_writes
from flowcraft.memory.context import MemoryContextStore
from flowcraft.memory.coordination import MemoryCoordinationStore, Step
from flowcraft.memory.queue import MemoryQueue

__all__ = ["MemoryHopCommitter", "MemorySplitCoordination", "claim", "marks"]


class MemoryHopCommitter:
    """Applies hops to a memory backend's stores and queue in one step."""

    reads_ahead = False

    def __init__(
        self,
        queue: MemoryQueue,
        context: MemoryContextStore,
        coordination: MemoryCoordinationStore,
    ) -> None:
        self._queue = queue
        self._context = context
        self._coordination = coordination

    async def commit(self, delivery: Delivery, hop: Hop) -> HopCommit:
        """Apply ``hop`` and ack ``delivery``, or answer ``slow`` having changed nothing."""
        # Validated first: an invalid patch must leave everything unchanged.
        sets, deletes = patch_writes(hop.context_ops)
        ttl = hop.ttl
        with self._coordination.step() as step:
            won = claim(step, hop, fired_by(hop.member), hop.result_record)
            if won is None:
                return HopCommit("slow")
            self._context.apply(hop.run_id, sets, deletes)
            fired: list[str] = []
            reserved: Delivery | None = None
            for target in won:
                if target.reserve and target.arrival is not None:
                    reserved = self._queue.leased(target.body)
                    reserved.arrival = self._read(step, hop.run_id, target.arrival)
                else:
                    self._queue.put(target.body)
                fired.append(target.member)
            done = step.add(hop.done, hop.member, ttl)
            enqueued = step.add(hop.enqueued, hop.member, ttl)
            following = reserved
            if following is None and hop.follow:
                taken = self._queue.take(1)
                following = taken[0] if taken else None
            if done >= enqueued:
                # The run may be over: the adapter ends it, then acks the job.
                return HopCommit("quiescent", fired, following)
            self._queue.settle(delivery)
            return HopCommit("committed", fired, following)

    def _read(self, step: Step, run_id: str, read: ArrivalRead) -> Arrival:
        strings = [step.get(key) for key in read.keys]
        sets = [step.members(key) for key in read.set_keys]
        keys = read.context_keys
        return strings, sets, self._context.fields(run_id, keys) if keys else {}


def claim(step: Step, hop: Hop, mark: str, record: str) -> list[HopTarget] | None:
    """The coordination side of ``hop`` (``HopCoordination.claim_hop``): the targets whose
    fences it took, or None, changing nothing, when the generic path must decide."""
    # A result stored already (a redelivery, a race) or a graph changed by spliced nodes.
    if step.get(hop.result_key) is not None or step.members(hop.dynamic):
        return None
    step.set(hop.result_key, record, hop.ttl)
    return marks(step, hop, mark)


def marks(step: Step, hop: Hop, mark: str) -> list[HopTarget]:
    """The join marks, fences and in-flight counts of ``hop``'s targets (the claim's second
    half, and ``HopMarking.mark_hop`` once the claim stored the result alone): the targets
    whose fences it took."""
    ttl = hop.ttl
    for target in hop.targets:
        step.add(target.taken, target.mark, ttl)
        step.add(target.resolved, target.source, ttl)
    won: list[HopTarget] = []
    for target in hop.targets:
        if target.preds and not set(target.preds) <= step.members(target.resolved):
            step.add(hop.pending, target.member, ttl)
            continue
        step.add(hop.enqueued, target.member, ttl)
        if step.set_if_not_exist(target.fence, mark, ttl):
            won.append(target)
        elif step.get(target.fence) == "skipped":
            step.add(hop.done, target.member, ttl)
    return won


class MemorySplitCoordination(MemoryCoordinationStore):
    """A memory coordination store that claims hops in one step: the reference of
    :class:`~flowcraft.distributed.HopCoordination` and
    :class:`~flowcraft.distributed.HopMarking` (what ``flowcraft_redis_store`` does in Lua),
    for the split hop core makes over it (``MemoryBackend(hop_step="split")``)."""

    async def claim_hop(self, hop: Hop, record: str, mark: str) -> list[str] | None:
        with self.step() as step:
            won = claim(step, hop, mark, record)
        return None if won is None else [target.member for target in won]

    async def mark_hop(self, hop: Hop, mark: str) -> list[str] | None:
        with self.step() as step:
            # Spliced since the claim: the targets' predecessors may have changed.
            if step.members(hop.dynamic):
                return None
            return [target.member for target in marks(step, hop, mark)]

    async def count_done(self, done: str, enqueued: str, member: str, ttl: float) -> bool:
        with self.step() as step:
            return step.add(done, member, ttl) >= step.add(enqueued, member, ttl)
