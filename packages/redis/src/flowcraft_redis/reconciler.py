"""``create_reconciler``: finds stalled runs by their state hashes and re-enqueues them.

The Python counterpart of the TS adapter's ``createBullMQReconciler``: it SCANs the run state
hashes (``workflow:state:*``) and treats a run as stalled when its hash has been idle for the
threshold, by ``OBJECT IDLETIME``: the server's own clock, so worker and reconciler clocks need
not agree, and no read that would reset the idle time. Under an LFU ``maxmemory-policy`` Redis
tracks no idle time (the command errors); the reconciler then falls back to the last-progress
time the workers store in the context (``_flowcraft.progress``), as the generic
:class:`~flowcraft.distributed.Reconciler` does.

Only runs the adapter lists as unfinished are considered (a finished run's hash lingers until
its TTL). A stalled run is handed to the generic reconciler's per-run step, which re-enqueues
its unfinished jobs through ``adapter.reconcile`` once per stall episode.

The threshold must exceed the longest node: a node runs without touching its run's hash, so a
run busy in a long node looks idle, and reconciling it would run that node a second time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from flowcraft.distributed import Reconciler, ReconcileStats
from flowcraft_redis.adapter import RedisAdapter, RedisStreamsAdapter
from flowcraft_redis_store.errors import translated

__all__ = ["RedisReconciler", "create_reconciler"]

_log = logging.getLogger("flowcraft.reconciler")


@dataclass
class RedisReconciler:
    """Scans state hashes for stalled runs; build it with :func:`create_reconciler`.

    Attributes:
        adapter: The adapter whose runs are reconciled.
        redis: The client that scans.
        stalled_threshold_seconds: Idle time after which an unfinished run is stalled.
        key_prefix: Prefix of the state hashes.
        scan_count: ``COUNT`` hint of each SCAN step.
        detection: How the last scan measured idleness: ``idletime`` or, under an LFU policy,
            ``progress``; None before the first scan.
    """

    adapter: RedisAdapter | RedisStreamsAdapter
    redis: aioredis.Redis
    stalled_threshold_seconds: float
    key_prefix: str
    scan_count: int = 100
    detection: Literal["idletime", "progress"] | None = None

    async def run(self) -> ReconcileStats:
        """One scan over every state hash."""
        stats: ReconcileStats = {
            "scanned_keys": 0,
            "stalled_runs": 0,
            "reconciled_runs": 0,
            "failed_runs": 0,
        }
        adapter = self.adapter
        generic = Reconciler(adapter, stalled_after=self.stalled_threshold_seconds)
        _, listed = await adapter.coordination.read([], adapter.keys.run_sets)
        unfinished = set().union(*listed)
        self.detection = None
        scan = self.redis.scan_iter(match=f"{self.key_prefix}*", count=self.scan_count)
        async with translated():
            async for raw in scan:
                stats["scanned_keys"] += 1
                key = raw.decode() if isinstance(raw, bytes) else str(raw)
                run_id = key[len(self.key_prefix) :]
                if run_id not in unfinished:
                    continue
                stalled, episode = await self._stall(generic, key, run_id)
                if not stalled:
                    continue
                stats["stalled_runs"] += 1
                outcome = await generic.reconcile_stalled(run_id, episode)
                if outcome == "reconciled":
                    stats["reconciled_runs"] += 1
                    _log.info("reconciled stalled run %s", run_id)
                elif outcome == "failed":
                    stats["failed_runs"] += 1
        return stats

    async def _stall(self, generic: Reconciler, key: str, run_id: str) -> tuple[bool, object]:
        """Whether the run is stalled, and its stall episode: its last progress time."""
        threshold = self.stalled_threshold_seconds
        if self.detection != "progress":
            try:
                idle = await self.redis.object("idletime", key)
            except ResponseError as exc:
                if "LFU" not in str(exc):
                    raise
                # An LFU policy: Redis keeps access counts, not times.
                self.detection = "progress"
            else:
                self.detection = "idletime"
                if idle is None or float(idle) < threshold:
                    return False, None
                # Read only now: reading the hash resets its idle time, so a run that stays
                # stalled is looked at once per threshold.
                return True, await generic.last_progress(run_id)
        progress = await generic.last_progress(run_id)
        stalled = progress is not None and time.time() - progress >= threshold
        return stalled, progress


def create_reconciler(
    *,
    adapter: RedisAdapter | RedisStreamsAdapter,
    redis: aioredis.Redis | None = None,
    stalled_threshold_seconds: float = 300.0,
    key_prefix: str | None = None,
    scan_count: int = 100,
) -> RedisReconciler:
    """A reconciler of ``adapter``'s runs; call its ``run()`` periodically.

    Args:
        adapter: The Redis adapter (BullMQ or Streams) whose stalled runs are re-enqueued.
        redis: The client to scan with (default: the adapter's).
        stalled_threshold_seconds: Idle seconds after which an unfinished run is stalled;
            longer than the longest node.
        key_prefix: Prefix of the state hashes (default: the adapter's, hash tag included).
        scan_count: ``COUNT`` hint of each SCAN step.
    """
    return RedisReconciler(
        adapter=adapter,
        redis=redis if redis is not None else adapter.redis,
        stalled_threshold_seconds=stalled_threshold_seconds,
        key_prefix=key_prefix if key_prefix is not None else adapter.settings.state_key(""),
        scan_count=scan_count,
    )
