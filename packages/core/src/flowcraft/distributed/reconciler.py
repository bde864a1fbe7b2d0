"""``Reconciler``: finds unfinished runs without progress and re-enqueues their frontier."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Literal, TypedDict

from flowcraft.distributed._keys import PROGRESS
from flowcraft.distributed.adapter import DistributedAdapter

__all__ = ["ReconcileStats", "Reconciler"]

_log = logging.getLogger("flowcraft.reconciler")
_CHUNK = 256
"""Runs whose progress one step of a scan reads at once."""


class ReconcileStats(TypedDict):
    """What one :meth:`Reconciler.run` did: the TypeScript ``ReconciliationStats`` in
    snake_case, the keys the Redis reconciler reports too.

    Attributes:
        scanned_keys: Unfinished runs looked at.
        stalled_runs: Those idle for at least the threshold.
        reconciled_runs: Stalled runs whose lost jobs were re-enqueued.
        failed_runs: Stalled runs whose reconcile raised (logged).
    """

    scanned_keys: int
    stalled_runs: int
    reconciled_runs: int
    failed_runs: int


class Reconciler:
    """Re-enqueues the frontier of runs idle for ``stalled_after`` seconds.

    Only runs without a final result are scanned (the adapter keeps them in a set, and drops a
    run once what follows its final result is done); awaiting runs have an empty frontier and
    are left alone. A stall episode is reconciled once: the fence is keyed by the run's last
    progress time.
    """

    def __init__(self, adapter: DistributedAdapter, *, stalled_after: float = 300.0) -> None:
        self.adapter = adapter
        self.stalled_after = stalled_after

    async def run(self, now: float | None = None) -> ReconcileStats:
        """One scan."""
        now = time.time() if now is None else now
        adapter = self.adapter
        stats: ReconcileStats = {
            "scanned_keys": 0,
            "stalled_runs": 0,
            "reconciled_runs": 0,
            "failed_runs": 0,
        }
        _, listed = await adapter.coordination.read([], adapter.keys.run_sets)
        run_ids = sorted(set().union(*listed))
        for start in range(0, len(run_ids), _CHUNK):
            chunk = run_ids[start : start + _CHUNK]
            # Read concurrently: a backend that batches answers a chunk in one round trip.
            progress = await asyncio.gather(*(self.last_progress(r) for r in chunk))
            for run_id, last in zip(chunk, progress, strict=True):
                stats["scanned_keys"] += 1
                if last is None or now - last < self.stalled_after:
                    continue
                if await adapter.coordination.members(adapter.keys.held(run_id)):
                    continue  # a live worker is running a long node of it
                stats["stalled_runs"] += 1
                outcome = await self.reconcile_stalled(run_id, last)
                if outcome == "reconciled":
                    stats["reconciled_runs"] += 1
                elif outcome == "failed":
                    stats["failed_runs"] += 1
        return stats

    async def last_progress(self, run_id: str) -> float | None:
        """Epoch seconds of the run's last stored progress (its start or a node's result)."""
        progress = await self.adapter.context.get(run_id, PROGRESS)
        return float(progress) if isinstance(progress, int | float) else None

    async def reconcile_stalled(
        self, run_id: str, episode: object
    ) -> Literal["reconciled", "skipped", "failed"]:
        """Reconcile a run found stalled, once per stall ``episode`` (its last progress time).

        Backends with their own stall detection call this for each run they find stalled.
        ``skipped``: the episode was reconciled before, or nothing needed re-enqueueing;
        ``failed``: reconciling raised (logged).
        """
        adapter = self.adapter
        fence = f"{adapter.keys.namespace}:reconciled:{run_id}:{episode}"
        # A finished run still listed was left half-way by a crash (its children or parent
        # not yet told): retried on every scan until that is done, whatever the fence.
        finished = await adapter.coordination.get(adapter.keys.final(run_id)) is not None
        if not finished and not await adapter.coordination.set_if_not_exist(
            fence, "1", adapter.ttl
        ):
            return "skipped"
        try:
            return "reconciled" if await adapter.reconcile(run_id) else "skipped"
        except Exception:
            _log.exception("reconciling run %s failed", run_id)
            return "failed"
