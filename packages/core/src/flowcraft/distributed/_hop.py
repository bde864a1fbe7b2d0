"""A hop as one atomic step: a node's result, its join marks, its successors and its ack.

The generic path of :class:`~flowcraft.distributed.BaseDistributedAdapter` stores a result and
routes it in many small store calls, each idempotent, so a crash between them is repaired by
redelivery. A backend that can run a server-side script (Redis Lua, a SQL transaction) can do
the common hop in one step instead; the adapter plans that step here, in store-neutral terms,
and hands it to ``BaseDistributedAdapter._commit_hop``.

Only hops whose routing needs no graph walk are planned: every routing edge is taken, no target
is a loop controller, the node has no fallback, and the run has no spliced dynamic nodes. The
rest (skips and dead paths, loops, fallbacks, batches, resumes) take the generic path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from flowcraft.node import PatchOperation

__all__ = ["Hop", "HopCommit", "HopTarget"]


@dataclass(frozen=True, slots=True)
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
    """

    member: str
    fence: str
    resolved: str
    taken: str
    source: str
    mark: str
    preds: Sequence[str]
    body: str


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class HopCommit:
    """What the backend did with a hop.

    Attributes:
        outcome: ``committed`` (applied and acked), ``applied`` (applied; the adapter acks the
            job as usual), ``quiescent`` (applied, not acked: the run may be over) or ``slow``
            (nothing applied: take the generic path).
        fired: Members of the targets whose jobs this step enqueued.
    """

    outcome: Literal["committed", "applied", "quiescent", "slow"]
    fired: Sequence[str] = field(default_factory=tuple)
