"""``Claims``: at most one live holder per job, as leases on Redis keys.

Core's generic path may put a second copy of a job on the topic while the first still waits or
runs: a job redelivered after its worker died between enqueueing a successor and acking
enqueues that successor again (its fence is its own). On Pub/Sub both copies are ordinary
messages, so two workers (or one, in one pull) would run the node at once. A worker therefore
claims each job it pulls, under a key per job body, naming the message and the delivery:

* claim absent, or held by this very delivery: taken (the TTL is the lease, renewed with it);
* held by another message: a copy of a job someone holds. It is acked (dropped), which is safe
  because the holder's message stays unacked until the job's effects are stored, so it comes
  back by itself if its holder dies, and then finds the claim gone or its own message's;
* held by another delivery of the same message (its ack deadline lapsed while the holder may
  still run it, or its holder died moments ago): it is handed back until the claim would have
  expired, so it runs only once its first holder has settled it or stopped renewing.

A settled job's claim is deleted (compare-and-delete: only by its holder). A claim's key is
in the adapter's coordination namespace; every command touches one key (Redis Cluster).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from flowcraft_redis_store import BatchedStore, Batcher, RedisSettings, text, translated

__all__ = ["Claim", "Claims", "Verdict"]

_CLAIM = """
local held = redis.call('GET', KEYS[1])
if not held or held == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1}
end
return {0, held, redis.call('PTTL', KEYS[1])}
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class Claim:
    """One delivery's claim: its key and the holder it names (``<message id> <ack id>``)."""

    key: str
    message_id: str
    holder: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a pulled delivery.

    Attributes:
        mine: The claim is this delivery's: run the job.
        copy: A copy of a job another message holds: ack it.
        retry_in: Another delivery of the same message holds it: hand it back for this many
            seconds (the claim's remaining TTL).
    """

    mine: bool
    copy: bool = False
    retry_in: float = 0.0


class Claims(BatchedStore):
    """Claims of one adapter's jobs, in its Redis coordination namespace.

    Args:
        client: The adapter's Redis client.
        settings: Its key layout.
        batcher: Its per-tick batch.
        scope: Separates the claims of different subscriptions.
        ttl: Seconds a claim lasts unrenewed (the lease).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        settings: RedisSettings,
        batcher: Batcher,
        *,
        scope: str,
        ttl: float,
    ) -> None:
        super().__init__(client, settings, batcher)
        self._scope = hashlib.blake2b(scope.encode(), digest_size=16).digest()
        self._ms = max(1, int(ttl * 1000))

    @cached_property
    def _claim(self) -> AsyncScript:
        return self._client.register_script(_CLAIM)

    @cached_property
    def _release(self) -> AsyncScript:
        return self._client.register_script(_RELEASE)

    def of(self, body: bytes, message_id: str, ack_id: str) -> Claim:
        """The claim a delivery of ``body`` would hold."""
        digest = hashlib.blake2b(body, digest_size=16, key=self._scope).hexdigest()
        key = self._settings.coordination_key(f"pubsub-claim:{digest}")
        return Claim(key, message_id, f"{message_id} {ack_id}")

    async def take(self, claims: Sequence[Claim]) -> list[Verdict]:
        """Claim each delivery; of two copies of a job in one pull, one wins."""
        # One tick, so one batch: every claim goes out in a single round trip.
        async with translated():
            replies = await asyncio.gather(
                *(self._batch.script(self._claim, [c.key], [c.holder, self._ms]) for c in claims)
            )
        return [_verdict(claim, reply) for claim, reply in zip(claims, replies, strict=True)]

    async def renew(self, claim: Claim) -> None:
        """Extend the claim by the TTL (taken again if it lapsed and nobody else holds it)."""
        async with translated():
            await self._batch.script(self._claim, [claim.key], [claim.holder, self._ms])

    async def release(self, claim: Claim) -> None:
        """Delete the claim if this delivery still holds it."""
        async with translated():
            await self._batch.script(self._release, [claim.key], [claim.holder])


def _verdict(claim: Claim, reply: Any) -> Verdict:
    if int(reply[0]) == 1:
        return Verdict(mine=True)
    holder, left_ms = text(reply[1]), int(reply[2])
    if holder.partition(" ")[0] != claim.message_id:
        return Verdict(mine=False, copy=True)
    return Verdict(mine=False, retry_in=max(0.0, left_ms) / 1000)
