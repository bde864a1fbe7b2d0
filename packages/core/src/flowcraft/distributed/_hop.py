"""A hop as one atomic step: a node's result, its join marks, its successors and its ack.

The generic path of :class:`~flowcraft.distributed.DistributedAdapter` stores a result and
routes it in many small store calls, each idempotent, so a crash between them is repaired by
redelivery. A backend that can run a server-side script (Redis Lua, a SQL transaction) can do
the common hop in one step instead: its :class:`~flowcraft.distributed.HopCommitter`. The
adapter plans that step here, in store-neutral terms; ``flowcraft.memory.hop`` is the readable
reference of applying it.

Only hops whose routing needs no graph walk are planned: every routing edge is taken, no target
is a loop controller, the node has no fallback, and the run has no spliced dynamic nodes. The
rest (skips and dead paths, loops, fallbacks, batches, resumes) take the generic path.

A worker that will have a free slot once the hop is done may also ask the backend to reserve
one successor for it (``HopTarget.arrival``): the backend then leases that job to the worker
instead of queueing it, reads what the job reads on arrival in the same step, and hands it back
as ``HopCommit.next``. A chain then costs one round trip per hop. The lease keeps it safe: a
worker that dies holding the job loses it to the queue when the lease runs out. When the hop
reserves nothing (a fan's branch whose join is not complete, a run's last node), a backend may
instead hand the worker the next job of its queue in the same step (``Hop.follow``): a fan's
branches then cost one round trip each too, not a hop and a receive.

A backend that can deliver a queued job together with what it reads on arrival (its stream read
and the job's reads in one server-side step) sets ``HopCommitter.reads_ahead``: every target carries
its arrival read, for the backend to store beside the job it queues.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from flowcraft.distributed._protocols import Delivery
from flowcraft.node import PatchOperation

__all__ = ["ArrivalRead", "Hop", "HopCommit", "HopTarget"]

# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__, several
# times slower, and every hop builds these.


@dataclass(slots=True)
class ArrivalRead:
    """What a job reads when it arrives (the arguments of ``ArrivalReader.read_arrival``).

    Attributes:
        keys: Coordination strings: the run's final status, its version, the job's result.
        set_keys: Coordination sets: the run's splices, the job's taken-edge marks.
        context_keys: Context fields its input can need; None for the whole context.
    """

    keys: Sequence[str]
    set_keys: Sequence[str]
    context_keys: Sequence[str] | None


@dataclass(slots=True)
class HopTarget:
    """One successor of the hop's node.

    Attributes:
        member: The successor's job id in the run's enqueued/done sets.
        fence: Its fire-once fence (``fired``/``skipped``).
        resolved: Its join-marks set; the hop adds ``source``.
        taken: Its taken-edges set; the hop adds ``mark``.
        preds: Every predecessor that must have resolved before it fires; empty for an
            ``any`` join, which fires on its first taken edge.
        body: The successor's job JSON.
        arrival: What the successor's job reads on arrival: set on the target to reserve,
            and on every target when the backend reads ahead (``HopCommitter.reads_ahead``).
        reserve: Set on at most one target: the job this worker takes next if the backend
            can reserve it; the rest are queued.
    """

    member: str
    fence: str
    resolved: str
    taken: str
    source: str
    mark: str
    preds: Sequence[str]
    body: str
    arrival: ArrivalRead | None = None
    reserve: bool = False


@dataclass(slots=True)
class Hop:
    """Everything a finished node changes, for the backend to apply all-or-nothing.

    The backend applies it only if ``result_key`` is unset and ``dynamic`` is empty (else it
    changes nothing and answers ``slow``): stores the result record and the context operations,
    adds every target's marks, fires each target whose join is complete (adding it to
    ``enqueued`` and enqueueing its body once its fence is won; a fence already ``skipped``
    counts the member as done), records the target as ``pending`` when its join is not
    complete, then counts ``member`` done. When that empties the run's frontier it answers
    ``quiescent`` and leaves the job unacked (the adapter ends the run, then acks); otherwise a
    backend that can acks the job in the same step (``committed``), and one that cannot answers
    ``applied`` and the adapter acks it.
    """

    run_id: str
    member: str
    result_key: str
    result_record: str
    context_ops: Sequence[PatchOperation]
    targets: Sequence[HopTarget]
    enqueued: str
    done: str
    pending: str
    dynamic: str
    ttl: float
    follow: bool = False
    """Whether the worker takes a job next: when the hop reserves no successor, the backend may
    deliver it one from its queue in the same step, as ``HopCommit.next``."""


@dataclass(slots=True)
class HopCommit:
    """What the backend did with a hop.

    Attributes:
        outcome: ``committed`` (applied and acked), ``applied`` (applied; the adapter acks the
            job as usual), ``quiescent`` (applied, not acked: the run may be over) or ``slow``
            (nothing applied, or only the result record, the split hop's claim of a hop into a
            join: take the generic path, which routes from a stored record).
        fired: Members of the targets whose jobs this step enqueued (or reserved).
        next: The job this worker handles next, with its arrival read: the reserved
            successor, or (``Hop.follow``) a job taken from the queue.
    """

    outcome: Literal["committed", "applied", "quiescent", "slow"]
    fired: Sequence[str] = field(default_factory=tuple)
    next: Delivery | None = None
