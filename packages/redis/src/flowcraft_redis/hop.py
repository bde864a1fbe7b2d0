"""One atomic step per hop on Redis, as a Lua script.

It applies a :class:`flowcraft.distributed._hop.Hop` — result record, context writes, join
marks, the successors' fences and counts, the done mark — in one script.

* Streams transport: the script also appends the successor jobs to the stream and acks the
  job's entry, so a worker that dies mid-hop leaves either nothing (the entry is redelivered
  and the node's work redone) or everything.
* BullMQ transport: BullMQ's own scripts must add and complete jobs, so the successors are
  added right after the script and BullMQ completes the job after that. A worker that dies in
  between leaves a successor counted but not queued, which ``reconcile`` re-enqueues (the same
  window the step-by-step path has between a fence and its enqueue).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis

from flowcraft.backend import ArrivalRead, Delivery, Hop, HopCommit, patch_writes
from flowcraft.backend import write_token as token
from flowcraft_redis._arrival import arrival, arrival_keys
from flowcraft_redis.streams import GROUP, READ_ENTRIES, StreamsQueue
from flowcraft_redis_store.batch import Batcher
from flowcraft_redis_store.errors import text, translated
from flowcraft_redis_store.settings import RedisSettings

__all__ = ["RedisHopCommitter"]

# KEYS: result, state hash, enqueued, done, pending, dynamic, this commit's receipt, then per
# target its fence, resolved and taken sets, then (Streams only) the stream, the delayed set and,
# when a successor may be reserved, its arrival keys (final, version, result). ARGV[1]: JSON
# {ttl, record, member, token, stream, entry, reserved, group, consumer, take, nset, reserve,
# lease, fields, targets: [{member, source, mark, preds (how many), body, read (JSON, see
# streams.READ_ENTRIES)}]}; then nset field/value pairs for HSET, then the fields to HDEL.
# Reply: {outcome, fired members, reserved job or false, taken entry or false}; a reserved job
# is {delayed-set entry, final, version, result, splices, taken marks, context fields}; with
# ``take`` and no job reserved, the next new entry of the stream is read for the consumer (as
# streams.READ_ENTRIES answers it). The receipt (kept a minute) makes a retry of the same call
# — the client retries when a connection drops, even after the script ran — answer what the
# first did. The result, fences, marks and receipt are fields of the run's bookkeeping hash
# (``flowcraft_redis_store.coordination.FIELDS``).
_COMMIT = (
    READ_ENTRIES
    + """
local meta = cjson.decode(ARGV[1])
local ttl = meta.ttl
if fc_get(KEYS[1]) then
  local receipt = fc_get(KEYS[7])
  if receipt then
    local earlier = cjson.decode(receipt)
    if earlier.token == meta.token then return earlier.out end
  end
  return {'slow', {}, false}
end
if redis.call('SCARD', KEYS[6]) > 0 then return {'slow', {}, false} end
fc_set(KEYS[1], meta.record, ttl)
local first_delete = 2 + meta.nset * 2
if meta.nset > 0 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 2, first_delete - 1))
end
if #ARGV >= first_delete then
  redis.call('HDEL', KEYS[2], unpack(ARGV, first_delete, #ARGV))
end
local enq, done, pending = KEYS[3], KEYS[4], KEYS[5]
local after = 7 + #meta.targets * 3
local stream, delayed = false, false
if meta.stream then stream, delayed = KEYS[after + 1], KEYS[after + 2] end
for i, t in ipairs(meta.targets) do
  local base = 7 + (i - 1) * 3
  fc_add(KEYS[base + 3], t.mark, ttl)
  fc_add(KEYS[base + 2], t.source, ttl)
end
local fired = {}
local reserved = false
for i, t in ipairs(meta.targets) do
  local base = 7 + (i - 1) * 3
  -- Only predecessors ever join a target's resolved set, so counting them is enough.
  if t.preds == 0 or #fc_members(KEYS[base + 2]) >= t.preds then
    redis.call('SADD', enq, t.member)
    if fc_set_nx(KEYS[base + 1], 'fired:' .. meta.member, ttl) then
      if i == meta.reserve then
        -- Leased to this worker in the delayed set: if the worker dies, it comes due.
        local now = redis.call('TIME')
        local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
        local entry = meta.token .. '|' .. t.body
        redis.call('ZADD', delayed, ms + meta.lease, entry)
        -- Its set keys are the run's splices and its own taken marks, both among KEYS.
        reserved = {entry, unpack(read_arrival({KEYS[after + 3], KEYS[after + 4],
          KEYS[after + 5]}, {KEYS[6], KEYS[base + 3]}, KEYS[2], meta.fields))}
      elseif stream and t.read ~= '' then
        redis.call('XADD', stream, '*', 'body', t.body, 'read', t.read)
      elseif stream then
        redis.call('XADD', stream, '*', 'body', t.body)
      end
      fired[#fired + 1] = t.member
    elseif fc_get(KEYS[base + 1]) == 'skipped' then
      redis.call('SADD', done, t.member)
    end
  else
    redis.call('SADD', pending, t.member)
    redis.call('PEXPIRE', pending, ttl)
  end
end
redis.call('SADD', done, meta.member)
redis.call('SADD', enq, meta.member)
redis.call('PEXPIRE', done, ttl)
redis.call('PEXPIRE', enq, ttl)
local taken = false
if meta.take and not reserved then
  -- Under pcall: a stream that cannot be read (its group lost) must not fail an applied hop.
  local ok, entries = pcall(read_entries, stream, meta.group, meta.consumer, 1)
  if ok and entries[1] then taken = entries[1] end
end
local out = {'committed', fired, reserved, taken}
if redis.call('SCARD', done) >= redis.call('SCARD', enq) then
  out[1] = 'quiescent'
elseif not stream then
  out[1] = 'applied'
elseif meta.reserved then
  redis.call('ZREM', delayed, meta.entry)
else
  redis.call('XACK', stream, meta.group, meta.entry)
  redis.call('XDEL', stream, meta.entry)
end
fc_note(KEYS[7], cjson.encode({token = meta.token, out = out}), 60000)
return out
"""
)


class RedisHopCommitter:
    """The :class:`~flowcraft.backend.HopCommitter` of both transports: the hop script against
    the stores' key layout.

    Args:
        client: The adapter's client.
        settings: Key layout.
        batcher: The adapter's per-tick pipeline.
        stream: The Streams transport's queue (the script enqueues and acks there), or None.
        enqueue: Otherwise, how successor jobs are queued after the script (BullMQ's add).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        settings: RedisSettings,
        batcher: Batcher,
        *,
        stream: StreamsQueue | None = None,
        enqueue: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._settings = settings
        self._stream = stream
        # Queued successors carry their arrival read, which the stream read makes (streams.py).
        self.reads_ahead = stream is not None
        self._enqueue = enqueue
        self._batcher = batcher
        self._script = client.register_script(_COMMIT)

    def _read(self, hop: Hop, read: ArrivalRead) -> str:
        # Stored beside a queued job (its entry's ``read`` field), for the stream read to make.
        strings, sets, state, fields = arrival_keys(
            self._settings, hop.run_id, read.keys, read.set_keys, read.context_keys
        )
        return orjson.dumps({"k": strings, "s": sets, "h": state, "f": fields}).decode()

    async def commit(self, delivery: Delivery, hop: Hop) -> HopCommit:
        """Apply ``hop`` (and, on Streams, ack ``delivery``); ``slow`` when the delivery is
        not this transport's (a job handed in by hand)."""
        stream = self._stream
        if stream is not None and not stream.owns(delivery):
            return HopCommit("slow")
        key = self._settings.coordination_key
        sets, deletes = patch_writes(hop.context_ops)
        keys = [
            key(hop.result_key),
            self._settings.state_key(hop.run_id),
            key(hop.enqueued),
            key(hop.done),
            key(hop.pending),
            key(hop.dynamic),
            key(hop.result_key) + ":receipt",
        ]
        targets: list[dict[str, Any]] = []
        for target in hop.targets:
            keys += [key(target.fence), key(target.resolved), key(target.taken)]
            read = target.arrival
            # A queued job's entry carries its read; a reserved one gets it in the reply.
            queued = stream is not None and read is not None and not target.reserve
            targets.append(
                {
                    "member": target.member,
                    "source": target.source,
                    "mark": target.mark,
                    "preds": len(target.preds),
                    "body": target.body if stream is not None else "",
                    "read": self._read(hop, read) if queued and read is not None else "",
                }
            )
        reserve = 0
        fields: list[str] = []
        entry = delivery.handle if stream is not None else ""
        if stream is not None:
            keys += [stream.stream, stream.delayed]
            if stream.reserving:
                for index, target in enumerate(hop.targets, 1):
                    if target.reserve and target.arrival is not None:
                        reserve, read = index, target.arrival
                        strings, _, _, fields = arrival_keys(
                            self._settings, hop.run_id, read.keys, (), read.context_keys
                        )
                        keys += strings
                        break
        meta = {
            "ttl": max(1, int(hop.ttl * 1000)),
            "record": hop.result_record,
            "member": hop.member,
            "token": token(),
            "stream": stream is not None,
            "entry": entry,
            "reserved": stream is not None and stream.is_reserved(delivery),
            "group": GROUP,
            "consumer": stream.consumer if stream is not None else "",
            "take": stream is not None and hop.follow and stream.taking,
            "nset": len(sets),
            "reserve": reserve,
            "lease": stream.lease_ms if stream is not None else 0,
            "fields": fields,
            "targets": targets,
        }
        args: list[Any] = [orjson.dumps(meta)]
        for name, value in sets.items():
            args += [name, value]
        args += deletes
        async with translated():
            reply = await self._batcher.script(self._script, keys, args)
        outcome, fired, reserved, *rest = reply
        outcome, fired, taken = text(outcome), [text(m) for m in fired], rest and rest[0]
        if outcome == "slow":
            return HopCommit("slow")
        if self._enqueue is not None:
            bodies = {t.member: t.body for t in hop.targets}
            for member in fired:
                await self._enqueue(bodies[member])
        nxt = None
        if stream is not None:
            if reserved:
                nxt = stream.reserved(text(reserved[0]), arrival(reserved[1:], fields))
            elif taken:
                nxt = stream.taken(taken)
        if outcome == "committed":
            if stream is not None:
                stream.settled(delivery)
            return HopCommit("committed", fired, nxt)
        if outcome == "quiescent":
            return HopCommit("quiescent", fired, nxt)
        return HopCommit("applied", fired)
