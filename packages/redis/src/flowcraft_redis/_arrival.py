"""The read a job makes when it arrives, as one Lua script over both stores.

A job needs its run's final status, recorded version, stored result, spliced nodes and taken
edge marks (coordination keys), plus the context fields its input can need (the run's hash).
One script answers all of it in one command, which the worker's batcher then shares with the
other jobs arriving in the same tick.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from flowcraft.backend import Arrival
from flowcraft_redis_store.batch import Batcher
from flowcraft_redis_store.context import decode_fields
from flowcraft_redis_store.coordination import FIELDS
from flowcraft_redis_store.errors import text, translated
from flowcraft_redis_store.settings import RedisSettings

__all__ = ["READ_ARRIVAL", "RedisArrivalReader", "arrival", "arrival_keys"]

READ_ARRIVAL = (
    FIELDS
    + """
local function read_arrival(strings, sets, hash, fields)
  local got = {}
  for _, k in ipairs(strings) do got[#got + 1] = fc_get(k) end
  for _, k in ipairs(sets) do got[#got + 1] = fc_members(k) end
  local values = {}
  if #fields > 0 then values = redis.call('HMGET', hash, unpack(fields)) end
  got[#got + 1] = values
  return got
end
"""
)
"""Lua: a job's arrival read (missing strings and fields come back as nil), as :func:`arrival`
decodes it (a key may be a field of a run's bookkeeping hash, see ``FIELDS``). This script, the
hop's (for the successor it reserves) and the stream read's (for the jobs it takes) make it."""

# KEYS: the string keys, the set keys, then the state hash. ARGV: how many string keys, how
# many set keys, then the hash fields.
_READ = (
    READ_ARRIVAL
    + """
local strings, sets = tonumber(ARGV[1]), tonumber(ARGV[2])
return read_arrival({unpack(KEYS, 1, strings)}, {unpack(KEYS, strings + 1, strings + sets)},
  KEYS[strings + sets + 1], {unpack(ARGV, 3)})
"""
)


def arrival_keys(
    settings: RedisSettings,
    run_id: str,
    keys: Sequence[str],
    set_keys: Sequence[str],
    context_keys: Sequence[str] | None,
) -> tuple[list[str], list[str], str, list[str]]:
    """The Redis names of an arrival read: its string keys, its set keys, the run's state hash
    and the hash fields (once each)."""
    key = settings.coordination_key
    return (
        [key(k) for k in keys],
        [key(k) for k in set_keys],
        settings.state_key(run_id),
        list(dict.fromkeys(context_keys or ())),
    )


class RedisArrivalReader:
    """The :class:`~flowcraft.backend.ArrivalReader` of both transports: one script reads
    the coordination keys and the run's hash fields."""

    def __init__(self, client: aioredis.Redis, settings: RedisSettings, batcher: Batcher) -> None:
        self._settings = settings
        self._batcher = batcher
        self._script = client.register_script(_READ)

    async def read_arrival(
        self,
        run_id: str,
        keys: Sequence[str],
        set_keys: Sequence[str],
        context_keys: Sequence[str] | None,
    ) -> Arrival:
        """Coordination ``keys`` and ``set_keys`` and the present ``context_keys`` of the run."""
        strings, sets, state, fields = arrival_keys(
            self._settings, run_id, keys, set_keys, context_keys
        )
        async with translated():
            reply = await self._batcher.script(
                self._script, [*strings, *sets, state], [len(strings), len(sets), *fields]
            )
        return arrival(reply, fields, len(strings))


def arrival(reply: Any, fields: list[str], strings: int = 3) -> Arrival:
    """A job's arrival read from a script's reply: ``strings`` values, then member lists
    (the rest but the last), then the values of the hash ``fields``."""
    sets = len(reply) - strings - 1
    return (
        [None if r is None else text(r) for r in reply[:strings]],
        [{text(m) for m in r} for r in reply[strings : strings + sets]],
        decode_fields(fields, reply[-1]),
    )
