"""Every coordination key and internal context key, built in one place.

The values' formats are documented here; ``docs/backends.md`` lists which keys a hop writes.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

__all__ = [
    "AWAITING",
    "DYNAMIC",
    "FIELD",
    "INTERNAL",
    "NODE_TRACE",
    "PROGRESS",
    "RESUME",
    "RUN_SHARDS",
    "STATUS",
    "TRACE",
    "Keys",
]

FIELD = "\x1f"
"""Joins a run's bookkeeping hash (``Keys.bookkeeping``) and a field of it in the keys a node
execution writes (result, fences, join marks). A store may keep such a key as that field of one
hash per run, whose TTL every write of a field renews and which goes as a whole once the run is
final (Redis does, so a node execution costs no key of its own), or as a key like any other.
A store that groups splits at the first ``FIELD``."""
RUN_SHARDS = 32
"""How many sets list the unfinished runs (``Keys.runs_of``)."""
INTERNAL = "_flowcraft."
"""Prefix of the context keys the adapter keeps for itself; stripped from published contexts."""
PROGRESS = INTERNAL + "progress"
DYNAMIC = INTERNAL + "dynamic."
AWAITING = INTERNAL + "awaiting."
TRACE = INTERNAL + "trace"
"""The W3C trace context of the run's span, so jobs made after the start can carry it."""
NODE_TRACE = TRACE + "."
"""Prefix of the trace context of a node's last attempt span (joins link it)."""
STATUS = INTERNAL + "status"
"""``awaiting`` while the run waits for a resume."""
RESUME = INTERNAL + "resume."
"""Prefix of the data a resume job carries, by job id (reconcile re-enqueues it from here)."""


@dataclass(frozen=True, slots=True)
class Keys:
    """Coordination key builder; ``namespace`` separates deployments sharing one store.

    A hop builds about twenty keys, hence f-strings, the cheapest way to join their parts.
    """

    namespace: str = "flowcraft"

    def runs_of(self, run: str) -> str:
        """The set of unfinished run ids that lists ``run``: one of :data:`RUN_SHARDS`, so a
        store whose values have a size limit (a DynamoDB item's 400 KB) lists that many
        times more runs."""
        return f"{self.namespace}:runs:{zlib.crc32(run.encode()) % RUN_SHARDS}"

    @property
    def run_sets(self) -> list[str]:
        """Every set of unfinished run ids (the reconciler reads them in one call)."""
        return [f"{self.namespace}:runs:{shard}" for shard in range(RUN_SHARDS)]

    @property
    def timers(self) -> str:
        """Set of pending timers ``<wakeAt>|<JSON>``, ``wakeAt`` in epoch seconds with six
        decimals: a sleep's ``[runId, nodeId, iteration]``, or a retry's job (an object)."""
        return f"{self.namespace}:timers"

    @property
    def reconciling(self) -> str:
        """Lease of the worker that reconciles this period (workers elect one through it)."""
        return f"{self.namespace}:reconciling"

    def held(self, run: str) -> str:
        """Set of the run's jobs a live worker holds past a third of their lease (the lease
        heartbeat adds them with a TTL of one lease): the reconciler leaves the run alone."""
        return f"{self.namespace}:held:{run}"

    def live(self, run: str, job: str) -> str:
        """Counter the lease heartbeat of a long job raises (with a TTL of one lease): while
        it exists, a redelivered copy of the job waits instead of running it beside it."""
        return f"{self.namespace}:live:{run}:{job}"

    def bookkeeping(self, run: str) -> str:
        """The hash a grouping store keeps the run's per-node keys in (see :data:`FIELD`)."""
        return f"{self.namespace}:run:{run}"

    def final(self, run: str) -> str:
        """The run's final result, written once."""
        return f"{self.namespace}:final:{run}"

    def meta(self, run: str) -> str:
        """JSON ``[blueprintId, version]`` recorded when the run started (version may be null)."""
        return f"{self.namespace}:meta:{run}"

    def parent(self, run: str) -> str:
        """``[run, node, iteration]`` of the subflow node that started the child run ``run``."""
        return f"{self.namespace}:parent:{run}"

    def enqueued(self, run: str) -> str:
        """Set of job ids (``_payload.job_id``) counted in flight for the run."""
        return f"{self.namespace}:enq:{run}"

    def done(self, run: str) -> str:
        """Set of job ids whose effects are stored."""
        return f"{self.namespace}:done:{run}"

    def parked(self, run: str) -> str:
        """Set of parked nodes (waits, sleeps, subflows), as job ids (JSON ``[node,
        iteration, ""]``, see ``_payload.job_id``)."""
        return f"{self.namespace}:parked:{run}"

    def pending(self, run: str) -> str:
        """Set of join targets that got a taken edge but may not have fired."""
        return f"{self.namespace}:pending:{run}"

    def dynamic(self, run: str) -> str:
        """Set of nodes whose results spliced dynamic nodes into the run's graph."""
        return f"{self.namespace}:dyn:{run}"

    def resolved(self, run: str, target: str, iteration: int) -> str:
        """Set of predecessors that resolved their edges into ``target`` (join marks)."""
        return f"{self.namespace}:run:{run}{FIELD}resolved:{iteration}:{target}"

    def taken(self, run: str, target: str, iteration: int) -> str:
        """Set of ``source|position`` edges taken into ``target``."""
        return f"{self.namespace}:run:{run}{FIELD}taken:{iteration}:{target}"

    def fire(self, run: str, target: str, iteration: int) -> str:
        """Fence: ``fired:<job id>`` (the job that fired it; ``fired`` from a client) or
        ``skipped``, written once per target and iteration."""
        return f"{self.namespace}:run:{run}{FIELD}fire:{iteration}:{target}"

    def result(self, run: str, node: str, iteration: int) -> str:
        """A node's full result (output, action, dynamic nodes), first writer wins."""
        return f"{self.namespace}:run:{run}{FIELD}result:{iteration}:{node}"

    def rescue(self, run: str, primary: str, iteration: int) -> str:
        """The result of the fallback run for ``primary`` (one per rescued primary)."""
        return f"{self.namespace}:run:{run}{FIELD}rescue:{iteration}:{primary}"

    def resumed(self, run: str, node: str, iteration: int) -> str:
        """Fence: an awaiting node is resumed once."""
        return f"{self.namespace}:run:{run}{FIELD}resumed:{iteration}:{node}"

    def fallback(self, run: str, node: str, iteration: int) -> str:
        """Fence: a failed node's fallback is started once."""
        return f"{self.namespace}:run:{run}{FIELD}fallback:{iteration}:{node}"

    def attempts(self, run: str, node: str, iteration: int, role: str = "") -> str:
        """Counter of the attempts started at a node with retries (durable: a crash neither
        resets nor repeats a number)."""
        return f"{self.namespace}:attempts:{run}:{iteration}:{node}:{role}"

    def events(self, run: str) -> str:
        """The run's event log, where the backend keeps it in the coordination store."""
        return f"{self.namespace}:events:{run}"

    def timer_fired(self, timer: str) -> str:
        """Fence: a timer wakes its node once."""
        return f"{self.namespace}:timerfired:{timer}"
