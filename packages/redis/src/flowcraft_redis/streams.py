"""``StreamsQueue``: the job queue on a Redis Stream with one consumer group.

Layout (``<queue>`` is ``RedisSettings.queue_name``, behind the hash tag in a cluster):

* ``<queue>:jobs`` — the stream; each entry has a field ``body``, the job's JSON text, and, when
  a hop queued it, ``read``: the keys the job reads on arrival, which the stream read then
  reads with it. Consumer group ``flowcraft``; a worker process is one consumer.
* ``<queue>:delayed`` — sorted set of jobs not yet due, scored by due time (server clock, ms),
  each member ``<32 hex>|<body>``. A successor the hop step reserved for the worker that ran its
  predecessor waits here too, due when its lease runs out: the worker renews it while handling
  it and removes it when done, so only a dead worker's reservation ever comes due.
* ``<queue>:dead`` — the dead-letter stream: ``body``, ``reason``, ``at``.

A delivered entry stays in the group's pending list until acked (XACK + XDEL, so the stream
holds only live jobs). An entry idle for longer than the lease — its worker died — is taken
over with XAUTOCLAIM; a worker renews the entries it holds by XCLAIMing them to itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from flowcraft.backend import Arrival, Delivery
from flowcraft_redis._arrival import READ_ARRIVAL, arrival
from flowcraft_redis_store.batch import Batcher, Command
from flowcraft_redis_store.errors import text, translated
from flowcraft_redis_store.settings import RedisSettings

__all__ = ["StreamsQueue"]

GROUP = "flowcraft"
_CLAIM_BATCH = 100

# Renews a reservation's lease: its due time, from the server clock so that workers on several
# hosts agree; XX, as a reservation must not come back once removed.
_DELAY = """
local now = redis.call('TIME')
local due = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[3], due, ARGV[2])
"""

_PROMOTE = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms, 'LIMIT', 0, tonumber(ARGV[1]))
for _, entry in ipairs(due) do
  redis.call('ZREM', KEYS[1], entry)
  redis.call('XADD', KEYS[2], '*', 'body', string.sub(entry, 34))
end
return #due
"""

# Lua: ``read_entries`` takes up to ``count`` new entries for ``consumer``, each with the arrival
# read its field ``read`` names (written by the hop that queued it: {k: string keys, s: set keys,
# h: the run's state hash, f: its fields}). The keys come from the entries, so they cannot be
# declared; in a cluster they carry the stream's hash tag (every key of a deployment does), so
# they are in the slot of the declared keys. A read that cannot be made (a foreign or damaged
# field) is left to the job. Per entry: {id, body, read or false, values (strings, member
# lists, field values) or false}. The stream read makes it, and so does the hop step for the
# job its worker takes next.
READ_ENTRIES = (
    READ_ARRIVAL
    + """
local function read_entry(read)
  local r = cjson.decode(read)
  return read_arrival(r.k, r.s, r.h, r.f)
end
local function read_entries(stream, group, consumer, count)
  local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count,
    'STREAMS', stream, '>')
  local out = {}
  if not reply then return out end
  for i, entry in ipairs(reply[1][2]) do
    local fields, body, read, got = entry[2], false, false, false
    for j = 1, #fields, 2 do
      if fields[j] == 'body' then
        body = fields[j + 1]
      elseif fields[j] == 'read' then
        read = fields[j + 1]
      end
    end
    if read then
      local ok, values = pcall(read_entry, read)
      if ok then got = values else read = false end
    end
    out[i] = {entry[1], body, read, got}
  end
  return out
end
"""
)

# A batch of new entries with their arrival reads. ARGV: group, consumer, count.
_RECEIVE = READ_ENTRIES + "return read_entries(KEYS[1], ARGV[1], ARGV[2], ARGV[3])\n"


class StreamsQueue:
    """Producer and consumer of one job stream.

    Args:
        client: A ``redis.asyncio`` client (not closed here).
        settings: Queue name.
        lease: Seconds an entry may stay unacked and unrenewed before another worker takes it.
        batch: Most entries one read fetches.
        dead_letter_max: Approximate length the dead-letter stream is trimmed to.
        batcher: The per-tick batch acks join (default: one through ``client``'s pool).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        settings: RedisSettings,
        *,
        lease: float = 30.0,
        batch: int = 16,
        dead_letter_max: int = 100_000,
        batcher: Batcher | None = None,
    ) -> None:
        self._redis = client
        self._batcher = batcher or Batcher(client, RedisSettings().retry(), wire=False)
        self.stream = settings.queue_key("jobs")
        self.delayed = settings.queue_key("delayed")
        self.dead = settings.queue_key("dead")
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._lease_ms = max(1, int(lease * 1000))
        self._dead_max = dead_letter_max
        self._batch = max(1, batch)
        self._delay = client.register_script(_DELAY)
        self._promote = client.register_script(_PROMOTE)
        self._receive = client.register_script(_RECEIVE)
        self._group_ready = False
        self._next_promote = 0.0
        self._next_claim = 0.0
        self._claim_cursor = "0-0"
        self._held: set[str] = set()
        self._reserved: set[str] = set()
        self._stopped = False
        self._abandoned = False

    # ----------------------------------------------------------------- producing

    async def enqueue(self, body: str) -> None:
        """Append a job."""
        async with translated():
            await self._batcher.run([("XADD", self.stream, "*", "body", body)])

    # ----------------------------------------------------------------- consuming

    async def receive(self, max_jobs: int, wait: float) -> list[Delivery]:
        """Up to ``max_jobs`` deliveries: taken-over entries of dead workers first, then new."""
        if self._stopped:
            return []
        max_jobs = min(max_jobs, self._batch)
        async with translated():
            try:
                out = await self._receive_ready(max_jobs, wait)
            except ResponseError as exc:
                if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                    raise
                # The group is gone (the server restarted without persistence, or the stream
                # was deleted, which also ends a blocked read): make it again on the next
                # receive, which comes at once.
                self._group_ready = False
                return []
        self._held.update(d.handle for d in out)
        return out

    async def _receive_ready(self, max_jobs: int, wait: float) -> list[Delivery]:
        await self._ensure_group()
        now = time.monotonic()
        if now >= self._next_promote:
            # Delayed jobs are rare (back-off); a tenth of a second is their resolution.
            self._next_promote = now + 0.1
            await self._promote(keys=[self.delayed, self.stream], args=[_CLAIM_BATCH])
        out: list[Delivery] = []
        if now >= self._next_claim:
            self._next_claim = now + self._lease_ms / 4000
            out = await self._claim_stale(max_jobs)
        if not out:
            out = await self._read_new(max_jobs, wait)
        return out

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # From id 0: jobs added before any worker existed are delivered too.
            await self._redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def _read_new(self, max_jobs: int, wait: float) -> list[Delivery]:
        if self._batcher.pipelined:
            # Under load there is nearly always something to read: try without blocking, in
            # the tick's batch, before a blocking read (which must have a connection of its
            # own). The jobs' arrival reads come with it.
            args = [GROUP, self.consumer, max_jobs]
            received = await self._batcher.script(self._receive, [self.stream], args)
            if received:
                return [_received(entry) for entry in received]
        reply = await self._redis.xreadgroup(
            GROUP,
            self.consumer,
            {self.stream: ">"},
            count=max_jobs,
            block=max(1, int(wait * 1000)),
        )
        return _deliveries(reply)

    async def _claim_stale(self, max_jobs: int) -> list[Delivery]:
        reply = await self._redis.xautoclaim(
            self.stream,
            GROUP,
            self.consumer,
            min_idle_time=self._lease_ms,
            start_id=self._claim_cursor,
            count=max(max_jobs, 1),
        )
        cursor, entries = reply[0], reply[1]
        self._claim_cursor = text(cursor)
        out: list[Delivery] = []
        for entry_id, fields in entries:
            if fields is None:
                continue  # deleted while pending: XAUTOCLAIM already dropped it
            entry = text(entry_id)
            info = await self._redis.xpending_range(
                self.stream, GROUP, min=entry, max=entry, count=1
            )
            count = int(info[0]["times_delivered"]) if info else 2
            out.append(Delivery(body=_body(fields), handle=entry, delivery_count=count))
        return out

    # ----------------------------------------------------------------- reservations

    @property
    def reserving(self) -> bool:
        """Whether hop steps may reserve successors for this consumer (not once stopping)."""
        return not self._stopped

    @property
    def taking(self) -> bool:
        """Whether hop steps may take the stream's next entry for this consumer: not once
        stopping, nor when promoting delayed jobs or taking over stale entries is due, which
        only a receive does (a slot that keeps taking never receives)."""
        now = time.monotonic()
        return not self._stopped and now < self._next_promote and now < self._next_claim

    @property
    def lease_ms(self) -> int:
        """How long a delivery, or a reservation, is this consumer's without renewal."""
        return self._lease_ms

    def reserved(self, entry: str, arrival: Arrival) -> Delivery:
        """The delivery of a successor a hop step reserved as delayed-set ``entry``."""
        self._held.add(entry)
        self._reserved.add(entry)
        return Delivery(body=entry[33:], handle=entry, arrival=arrival)

    def taken(self, entry: Any) -> Delivery:
        """The delivery of an entry a hop step read for this consumer (``read_entries``)."""
        delivery = _received(entry)
        self._held.add(delivery.handle)
        return delivery

    def is_reserved(self, delivery: Delivery) -> bool:
        """Whether ``delivery`` is a reservation (settled in the delayed set, not the stream)."""
        return delivery.handle in self._reserved

    # ----------------------------------------------------------------- settling

    def owns(self, delivery: Delivery) -> bool:
        """Whether ``delivery`` is an entry of this stream (not one handed in by hand)."""
        return isinstance(delivery.handle, str) and delivery.handle in self._held

    def settled(self, delivery: Delivery) -> None:
        """Forget an entry acked elsewhere (by the atomic hop step)."""
        self._held.discard(delivery.handle)
        self._reserved.discard(delivery.handle)

    def _removal(self, delivery: Delivery) -> list[Command]:
        if self.is_reserved(delivery):
            return [("ZREM", self.delayed, delivery.handle)]
        return [
            ("XACK", self.stream, GROUP, delivery.handle),
            ("XDEL", self.stream, delivery.handle),
        ]

    async def ack(self, delivery: Delivery) -> None:
        """Remove a handled entry."""
        if not self.owns(delivery):
            return
        async with translated():
            await self._batcher.transaction(self._removal(delivery))
        self.settled(delivery)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the entry to the dead-letter stream with ``reason``, in one transaction."""
        fields = ("body", delivery.body, "reason", reason, "at", str(time.time()))
        commands: list[Command] = [("XADD", self.dead, "MAXLEN", "~", self._dead_max, "*", *fields)]
        if self.owns(delivery):
            commands += self._removal(delivery)
        async with translated():
            await self._batcher.transaction(commands)
        self.settled(delivery)

    async def release(self, delivery: Delivery) -> None:
        """Hand the job back now: a fresh entry replaces the held one."""
        if not self.owns(delivery):
            return
        commands: list[Command] = [("XADD", self.stream, "*", "body", delivery.body)]
        async with translated():
            await self._batcher.transaction(commands + self._removal(delivery))
        self.settled(delivery)

    async def unsettled(self, delivery: Delivery, seconds: float) -> None:
        """Nothing to do: an entry (or reservation) nobody renews is taken over after the
        lease."""

    async def extend_lease(self, delivery: Delivery, seconds: float) -> None:
        """Reset the entry's idle time so that no other worker takes it over."""
        if not self.owns(delivery):
            return
        async with translated():
            if self.is_reserved(delivery):
                await self._delay(
                    keys=[self.delayed], args=[int(seconds * 1000), delivery.handle, "XX"]
                )
                return
            await self._redis.xclaim(
                self.stream, GROUP, self.consumer, 0, [delivery.handle], justid=True
            )

    # ----------------------------------------------------------------- lifecycle

    async def stop_receiving(self) -> None:
        """Fetch no more entries."""
        self._stopped = True

    def abandon(self) -> None:
        """Stop as a killed process would: held entries stay pending until taken over."""
        self._stopped = True
        self._abandoned = True

    async def close(self) -> None:
        """Stop, and hand back entries this consumer received but never handed over.

        A receive cancelled mid-read (a worker stopping) can leave entries in this consumer's
        pending list that no job holds; they would otherwise wait a lease for a takeover.
        """
        self._stopped = True
        if self._abandoned or not self._group_ready:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._release_orphans(), 5.0)

    async def _release_orphans(self) -> None:
        pending = await self._redis.xpending_range(
            self.stream, GROUP, min="-", max="+", count=1000, consumername=self.consumer
        )
        for item in pending:
            entry = text(item["message_id"])
            if entry in self._held:
                continue
            found = await self._redis.xrange(self.stream, min=entry, max=entry)
            async with self._redis.pipeline(transaction=True) as pipe:
                if found:
                    pipe.xadd(self.stream, {"body": _body(found[0][1])})
                pipe.xack(self.stream, GROUP, entry)
                pipe.xdel(self.stream, entry)
                await pipe.execute()


def _deliveries(reply: Any) -> list[Delivery]:
    """The entries of an XREADGROUP reply: [[stream, [[id, fields], ...]], ...]."""
    return [
        Delivery(body=_body(fields), handle=text(entry))
        for _, entries in reply or ()
        for entry, fields in entries
    ]


def _received(reply: Any) -> Delivery:
    """The delivery of one ``read_entries`` entry, with the arrival read made for it."""
    entry, body, read, values = reply
    got = None
    if read and values:
        fields = orjson.loads(read)["f"]
        got = arrival(values, [str(f) for f in fields], 3)
    return Delivery(body=text(body) if body else "", handle=text(entry), arrival=got)


def _body(fields: Any) -> str:
    # A foreign producer may add entries without a body: they arrive empty and are rejected.
    # redis-py answers the fields as a dict, the raw reply as a flat list.
    if isinstance(fields, list):
        fields = dict(zip(fields[::2], fields[1::2], strict=False))
    if not isinstance(fields, dict):
        return ""
    raw = fields.get(b"body", fields.get("body"))
    return "" if raw is None else text(raw)
