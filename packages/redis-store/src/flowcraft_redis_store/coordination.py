"""``RedisCoordinationStore``: atomic join marks, fences, counters and timers, each with a TTL.

Every operation is one atomic server-side step (a MULTI block, a script or a single command),
so any number of workers can race on the same key. The commands join the worker's per-tick
batch (``_batch.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from redis.commands.core import AsyncScript

from flowcraft.backend import Hop
from flowcraft.backend import write_token as token
from flowcraft_redis_store.batch import BatchedStore, Command
from flowcraft_redis_store.errors import text, translated

__all__ = ["RedisCoordinationStore"]

# Sets read through get() as their size, like counters, so callers need not know the type.
_GET = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'string' then return redis.call('GET', KEYS[1]) end
if kind == 'set' then return tostring(redis.call('SCARD', KEYS[1])) end
return false
"""


# SET NX that recognises its own earlier attempt. The client retries a command whose connection
# dropped; if the first SET took effect and only its reply was lost, the retry must still read
# as won, not as the key taken by another writer (which would skip what the winner must do:
# enqueue the successor, publish the final result). So the writer's token is kept beside the
# key (KEYS[2]) for as long as a retry can come.
_SET_NX = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
  return 1
end
if redis.call('GET', KEYS[2]) == ARGV[3] then return 1 end
return 0
"""
# HopCoordination.claim_hop, or with an empty record HopMarking.mark_hop (the readable
# references are flowcraft.memory.hop.claim and marks). KEYS: the result, the splices set,
# enqueued, pending, done, then taken/resolved/fence per target. ARGV: the record, the TTL (ms),
# the fence mark, then per target its taken-mark, source, member, number of predecessors and
# the predecessors.
_CLAIM = """
local ttl = ARGV[2]
if redis.call('SCARD', KEYS[2]) > 0 then return false end
if ARGV[1] ~= '' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return false end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
end
local function add(key, member)
  redis.call('SADD', key, member)
  redis.call('PEXPIRE', key, ttl)
end
local won = {}
local a = 4
for k = 6, #KEYS, 3 do
  local resolved, fence = KEYS[k + 1], KEYS[k + 2]
  local member, npreds = ARGV[a + 2], tonumber(ARGV[a + 3])
  add(KEYS[k], ARGV[a])
  add(resolved, ARGV[a + 1])
  local complete = true
  for p = a + 4, a + 3 + npreds do
    if redis.call('SISMEMBER', resolved, ARGV[p]) == 0 then complete = false break end
  end
  a = a + 4 + npreds
  if not complete then
    add(KEYS[4], member)
  else
    add(KEYS[3], member)
    if redis.call('SET', fence, ARGV[3], 'NX', 'PX', ttl) then
      won[#won + 1] = member
    elseif redis.call('GET', fence) == 'skipped' then
      add(KEYS[5], member)
    end
  end
end
return won
"""
_WRITER_PREFIX = "nx-writer:"
_WRITER_MS = 60_000
"""How long a writer's token is kept: longer than any retry of its SET."""


def _ms(ttl: float) -> int:
    return max(1, int(ttl * 1000))


class RedisCoordinationStore(BatchedStore):
    """A :class:`~flowcraft.distributed.CoordinationStore` on plain Redis keys; every key gets
    ``settings.coordination_prefix`` (arguments: those of
    :class:`~flowcraft_redis_store.batch.BatchedStore`)."""

    @cached_property
    def _get(self) -> AsyncScript:
        return self._client.register_script(_GET)

    @cached_property
    def _set_nx(self) -> AsyncScript:
        return self._client.register_script(_SET_NX)

    @cached_property
    def _claim(self) -> AsyncScript:
        return self._client.register_script(_CLAIM)

    def _key(self, key: str) -> str:
        return self._settings.coordination_key(key)

    async def increment(self, key: str, ttl: float) -> int:
        name = self._key(key)
        async with translated():
            value, _ = await self._batch.transaction([("INCR", name), ("PEXPIRE", name, _ms(ttl))])
        return int(value)

    async def set_if_not_exist(self, key: str, value: str, ttl: float) -> bool:
        keys = [self._key(key), self._key(_WRITER_PREFIX + key)]
        args: list[str | int] = [value, _ms(ttl), token(), _WRITER_MS]
        async with translated():
            return bool(await self._batch.script(self._set_nx, keys, args))

    async def add_to_set(self, key: str, member: str, ttl: float) -> int:
        name = self._key(key)
        async with translated():
            _, _, size = await self._batch.transaction(
                [("SADD", name, member), ("PEXPIRE", name, _ms(ttl)), ("SCARD", name)]
            )
        return int(size)

    async def remove_from_set(self, key: str, member: str) -> int:
        name = self._key(key)
        async with translated():
            _, size = await self._batch.transaction([("SREM", name, member), ("SCARD", name)])
        return int(size)

    async def members(self, key: str) -> set[str]:
        async with translated():
            (raw,) = await self._batch.run([("SMEMBERS", self._key(key))])
        return {text(m) for m in raw}

    async def read(
        self, keys: Sequence[str], set_keys: Sequence[str]
    ) -> tuple[list[str | None], list[set[str]]]:
        # The keys read as strings are only ever strings, so plain GET does.
        commands: list[Command] = [("GET", self._key(key)) for key in keys]
        commands += [("SMEMBERS", self._key(key)) for key in set_keys]
        if not commands:
            return [], []
        async with translated():
            replies = await self._batch.run(commands)
        strings = [None if r is None else text(r) for r in replies[: len(keys)]]
        return strings, [{text(m) for m in r} for r in replies[len(keys) :]]

    async def extend_ttl(self, key: str, ttl: float) -> bool:
        async with translated():
            (done,) = await self._batch.run([("PEXPIRE", self._key(key), _ms(ttl))])
        return bool(done)

    async def get(self, key: str) -> str | None:
        async with translated():
            raw = await self._batch.script(self._get, [self._key(key)], [])
        return None if raw is None else text(raw)

    async def delete(self, key: str) -> None:
        async with translated():
            await self._batch.run([("DEL", self._key(key))])

    async def delete_many(self, keys: Sequence[str]) -> None:
        """One ``UNLINK`` (freed off Redis' main thread) for all of ``keys``."""
        if not keys:
            return
        async with translated():
            await self._batch.run([("UNLINK", *(self._key(k) for k in keys))])

    async def claim_hop(self, hop: Hop, record: str, mark: str) -> list[str] | None:
        """``HopCoordination.claim_hop`` in one script (it joins the tick's batch)."""
        return await self._claim_or_mark(hop, record, mark)

    async def mark_hop(self, hop: Hop, mark: str) -> list[str] | None:
        """``HopMarking.mark_hop``: the claim's script without the record."""
        return await self._claim_or_mark(hop, "", mark)

    async def _claim_or_mark(self, hop: Hop, record: str, mark: str) -> list[str] | None:
        key = self._key
        keys = [key(hop.result_key), key(hop.dynamic), key(hop.enqueued)]
        keys += [key(hop.pending), key(hop.done)]
        args: list[str | int] = [record, _ms(hop.ttl), mark]
        for target in hop.targets:
            keys += [key(target.taken), key(target.resolved), key(target.fence)]
            args += [target.mark, target.source, target.member, len(target.preds)]
            args += target.preds
        async with translated():
            won = await self._batch.script(self._claim, keys, args)
        return None if won is None else [text(member) for member in won]

    async def count_done(self, done: str, enqueued: str, member: str, ttl: float) -> bool:
        """``HopCoordination.count_done`` as one MULTI block."""
        done, enqueued, ms = self._key(done), self._key(enqueued), _ms(ttl)
        async with translated():
            *_, done_size, enqueued_size = await self._batch.transaction(
                [
                    ("SADD", done, member),
                    ("PEXPIRE", done, ms),
                    ("SADD", enqueued, member),
                    ("PEXPIRE", enqueued, ms),
                    ("SCARD", done),
                    ("SCARD", enqueued),
                ]
            )
        return int(done_size) >= int(enqueued_size)
