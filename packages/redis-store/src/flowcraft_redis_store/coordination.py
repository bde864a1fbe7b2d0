"""``RedisCoordinationStore``: atomic join marks, fences, counters and timers, each with a TTL.

Every operation is one atomic server-side step (a MULTI block, a script or a single command),
so any number of workers can race on the same key. The commands join the worker's per-tick
batch (``_batch.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

import orjson
from redis.commands.core import AsyncScript

from flowcraft.backend import FIELD, Hop
from flowcraft.backend import write_token as token
from flowcraft_redis_store.batch import BatchedStore, Command
from flowcraft_redis_store.errors import text, translated

__all__ = ["FIELDS", "RedisCoordinationStore"]

FIELDS = """
local function fc_split(name)
  local at = string.find(name, '\\31', 1, true)
  if at then return string.sub(name, 1, at - 1), string.sub(name, at + 1) end
  return name, false
end
local function fc_get(name)
  local hash, field = fc_split(name)
  if field then return redis.call('HGET', hash, field) end
  return redis.call('GET', name)
end
local function fc_members(name)
  local hash, field = fc_split(name)
  if not field then return redis.call('SMEMBERS', name) end
  local raw = redis.call('HGET', hash, field)
  if raw then return cjson.decode(raw) end
  return {}
end
local function fc_set(name, value, ttl)
  local hash, field = fc_split(name)
  if not field then return redis.call('SET', name, value, 'PX', ttl) end
  redis.call('HSET', hash, field, value)
  redis.call('PEXPIRE', hash, ttl)
end
local function fc_set_nx(name, value, ttl)
  local hash, field = fc_split(name)
  if not field then return redis.call('SET', name, value, 'NX', 'PX', ttl) ~= false end
  if redis.call('HSETNX', hash, field, value) == 0 then return false end
  redis.call('PEXPIRE', hash, ttl)
  return true
end
local function fc_note(name, value, ms)
  local hash, field = fc_split(name)
  if not field then return redis.call('SET', name, value, 'PX', ms) end
  redis.call('HSET', hash, field, value)
end
local function fc_add(name, member, ttl)
  local hash, field = fc_split(name)
  if not field then
    redis.call('SADD', name, member)
    redis.call('PEXPIRE', name, ttl)
    return redis.call('SCARD', name)
  end
  local set = fc_members(name)
  for _, known in ipairs(set) do
    if known == member then
      redis.call('PEXPIRE', hash, ttl)
      return #set
    end
  end
  set[#set + 1] = member
  redis.call('HSET', hash, field, cjson.encode(set))
  redis.call('PEXPIRE', hash, ttl)
  return #set
end
"""
"""Lua helpers over the coordination keys as they are stored: a name holding the unit separator
(``flowcraft``'s ``_keys.FIELD``) is a field of the hash named before it, a run's bookkeeping,
whose TTL every write of a field renews (``fc_note`` writes one that lives as long as its hash);
a set kept in a field is a JSON array (join marks: a few members). Every name is one key or a
field of one, so a script declares it in KEYS; in a cluster every key of a deployment carries
its hash tag. The Redis hop script (``flowcraft_redis/hop.py``) and arrival reads use them too."""

# A string, or a set's size (as counters are read), so callers need not know the type; a set
# kept in a field reads as its JSON text.
_GET = (
    FIELDS
    + """
local hash, field = fc_split(KEYS[1])
if field then return redis.call('HGET', hash, field) end
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'string' then return redis.call('GET', KEYS[1]) end
if kind == 'set' then return tostring(redis.call('SCARD', KEYS[1])) end
return false
"""
)

# SET NX that recognises its own earlier attempt. The client retries a command whose connection
# dropped; if the first SET took effect and only its reply was lost, the retry must still read
# as won, not as the key taken by another writer (which would skip what the winner must do:
# enqueue the successor, publish the final result). So the writer's token is kept beside the
# key (KEYS[2]) for as long as a retry can come: a minute, or as long as the hash of a field.
_SET_NX = (
    FIELDS
    + """
if fc_set_nx(KEYS[1], ARGV[1], ARGV[2]) then
  fc_note(KEYS[2], ARGV[3], ARGV[4])
  return 1
end
if fc_get(KEYS[2]) == ARGV[3] then return 1 end
return 0
"""
)
_ADD = FIELDS + "return fc_add(KEYS[1], ARGV[1], ARGV[2])"
_REMOVE = (
    FIELDS
    + """
local hash, field = fc_split(KEYS[1])
if not field then
  redis.call('SREM', KEYS[1], ARGV[1])
  return redis.call('SCARD', KEYS[1])
end
local kept = {}
for _, member in ipairs(fc_members(KEYS[1])) do
  if member ~= ARGV[1] then kept[#kept + 1] = member end
end
if #kept == 0 then
  redis.call('HDEL', hash, field)
else
  redis.call('HSET', hash, field, cjson.encode(kept))
end
return #kept
"""
)
# HopCoordination.claim_hop, or with an empty record HopMarking.mark_hop (the readable
# references are flowcraft.memory.hop.claim and marks). KEYS: the result, the splices set,
# enqueued, pending, done, then taken/resolved/fence per target. ARGV: the record, the TTL (ms),
# the fence mark, then per target its taken-mark, source, member, number of predecessors and
# the predecessors.
_CLAIM = (
    FIELDS
    + """
local ttl = ARGV[2]
if redis.call('SCARD', KEYS[2]) > 0 then return false end
if ARGV[1] ~= '' then
  if fc_get(KEYS[1]) then return false end
  fc_set(KEYS[1], ARGV[1], ttl)
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
  fc_add(KEYS[k], ARGV[a], ttl)
  fc_add(resolved, ARGV[a + 1], ttl)
  local complete = true
  if npreds > 0 then
    local marks = {}
    for _, source in ipairs(fc_members(resolved)) do marks[source] = true end
    for p = a + 4, a + 3 + npreds do
      if not marks[ARGV[p]] then complete = false break end
    end
  end
  a = a + 4 + npreds
  if not complete then
    add(KEYS[4], member)
  else
    add(KEYS[3], member)
    if fc_set_nx(fence, ARGV[3], ttl) then
      won[#won + 1] = member
    elseif fc_get(fence) == 'skipped' then
      add(KEYS[5], member)
    end
  end
end
return won
"""
)
_WRITER_PREFIX = "nx-writer:"
_WRITER_MS = 60_000
"""How long a writer's token is kept: longer than any retry of its SET."""


def _ms(ttl: float) -> int:
    return max(1, int(ttl * 1000))


def _members(raw: Any) -> set[str]:
    # A set kept in a hash field is its JSON array; a missing one reads as empty.
    if raw is None:
        return set()
    if isinstance(raw, bytes | str):
        return {str(m) for m in orjson.loads(raw)}
    return {text(m) for m in raw}


class RedisCoordinationStore(BatchedStore):
    """A :class:`~flowcraft.distributed.CoordinationStore` on Redis keys; every key gets
    ``settings.coordination_prefix`` (arguments: those of
    :class:`~flowcraft_redis_store.batch.BatchedStore`).

    The keys a node execution writes (result, fences, join marks: ``flowcraft``'s
    ``_keys.FIELD``) are fields of one hash per run, with one TTL, which every write renews;
    the run's end deletes the hash (see :data:`FIELDS`).
    """

    @cached_property
    def _get(self) -> AsyncScript:
        return self._client.register_script(_GET)

    @cached_property
    def _set_nx(self) -> AsyncScript:
        return self._client.register_script(_SET_NX)

    @cached_property
    def _add(self) -> AsyncScript:
        return self._client.register_script(_ADD)

    @cached_property
    def _remove(self) -> AsyncScript:
        return self._client.register_script(_REMOVE)

    @cached_property
    def _claim(self) -> AsyncScript:
        return self._client.register_script(_CLAIM)

    def _key(self, key: str) -> str:
        return self._settings.coordination_key(key)

    def _token(self, key: str) -> str:
        # Beside the key: a field's token is a field of the same hash, gone with it.
        hash_, field, name = key.partition(FIELD)
        if field:
            return self._key(f"{hash_}{FIELD}{_WRITER_PREFIX}{name}")
        return self._key(_WRITER_PREFIX + key)

    def _read(self, key: str) -> Command:
        hash_, field, name = self._key(key).partition(FIELD)
        return ("HGET", hash_, name) if field else ("GET", hash_)

    def _members(self, key: str) -> Command:
        hash_, field, name = self._key(key).partition(FIELD)
        return ("HGET", hash_, name) if field else ("SMEMBERS", hash_)

    async def increment(self, key: str, ttl: float) -> int:
        hash_, field, name = self._key(key).partition(FIELD)
        bump: Command = ("HINCRBY", hash_, name, 1) if field else ("INCR", hash_)
        async with translated():
            value, _ = await self._batch.transaction([bump, ("PEXPIRE", hash_, _ms(ttl))])
        return int(value)

    async def set_if_not_exist(self, key: str, value: str, ttl: float) -> bool:
        keys = [self._key(key), self._token(key)]
        args: list[str | int] = [value, _ms(ttl), token(), _WRITER_MS]
        async with translated():
            return bool(await self._batch.script(self._set_nx, keys, args))

    async def add_to_set(self, key: str, member: str, ttl: float) -> int:
        async with translated():
            size = await self._batch.script(self._add, [self._key(key)], [member, _ms(ttl)])
        return int(size)

    async def remove_from_set(self, key: str, member: str) -> int:
        async with translated():
            size = await self._batch.script(self._remove, [self._key(key)], [member])
        return int(size)

    async def members(self, key: str) -> set[str]:
        async with translated():
            (raw,) = await self._batch.run([self._members(key)])
        return _members(raw)

    async def read(
        self, keys: Sequence[str], set_keys: Sequence[str]
    ) -> tuple[list[str | None], list[set[str]]]:
        # The keys read as strings are only ever strings (or fields), so plain GET does.
        commands = [self._read(key) for key in keys] + [self._members(key) for key in set_keys]
        if not commands:
            return [], []
        async with translated():
            replies = await self._batch.run(commands)
        strings = [None if r is None else text(r) for r in replies[: len(keys)]]
        return strings, [_members(r) for r in replies[len(keys) :]]

    async def extend_ttl(self, key: str, ttl: float) -> bool:
        """Renew the key's TTL; a field's is its hash's, so the whole run's bookkeeping."""
        hash_ = self._key(key).partition(FIELD)[0]
        async with translated():
            (done,) = await self._batch.run([("PEXPIRE", hash_, _ms(ttl))])
        return bool(done)

    async def get(self, key: str) -> str | None:
        async with translated():
            raw = await self._batch.script(self._get, [self._key(key)], [])
        return None if raw is None else text(raw)

    async def delete(self, key: str) -> None:
        await self.delete_many([key])

    async def delete_many(self, keys: Sequence[str]) -> None:
        """One ``UNLINK`` (freed off Redis' main thread) for the keys, and an ``HDEL`` per
        hash for the fields of hashes not deleted with them (a field goes with its token)."""
        names: list[str] = []
        fields: dict[str, list[str]] = {}
        for key in keys:
            hash_, field, name = self._key(key).partition(FIELD)
            if field:
                fields.setdefault(hash_, []).extend((name, _WRITER_PREFIX + name))
            else:
                names.append(hash_)
        unlinked = set(names)
        commands: list[Command] = [("UNLINK", *names)] if names else []
        commands += [("HDEL", h, *f) for h, f in fields.items() if h not in unlinked]
        if not commands:
            return
        async with translated():
            await self._batch.run(commands)

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
