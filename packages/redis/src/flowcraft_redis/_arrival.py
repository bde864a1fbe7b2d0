"""The read a job makes when it arrives, as one Lua script over both stores.

A job needs its run's final status, recorded version, stored result, spliced nodes and taken
edge marks (coordination keys), plus the context fields its input can need (the run's hash).
One script answers all of it in one command, which the worker's batcher then shares with the
other jobs arriving in the same tick.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from flowcraft.distributed._protocols import Arrival
from flowcraft_redis._batch import Batcher
from flowcraft_redis._errors import text
from flowcraft_redis._settings import RedisSettings
from flowcraft_redis.context import decode_fields

__all__ = ["ArrivalReader", "arrival"]

# KEYS: the string keys, the set keys, then the state hash. ARGV: how many string keys, how
# many set keys, then the hash fields. Missing strings and fields come back as nil.
_READ = """
local strings, sets = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 1, strings do out[i] = redis.call('GET', KEYS[i]) end
for i = strings + 1, strings + sets do out[i] = redis.call('SMEMBERS', KEYS[i]) end
if #ARGV > 2 then
  out[strings + sets + 1] = redis.call('HMGET', KEYS[strings + sets + 1], unpack(ARGV, 3))
else
  out[strings + sets + 1] = {}
end
return out
"""


class ArrivalReader:
    """Runs the arrival read against the stores' key layout."""

    def __init__(self, client: aioredis.Redis, settings: RedisSettings, batcher: Batcher) -> None:
        self._settings = settings
        self._batcher = batcher
        self._script = client.register_script(_READ)

    async def read(
        self, run_id: str, keys: list[str], set_keys: list[str], context_keys: list[str]
    ) -> Arrival:
        """Coordination ``keys`` and ``set_keys`` and the present ``context_keys`` of the run."""
        key = self._settings.coordination_key
        fields = list(dict.fromkeys(context_keys))
        reply = await self._batcher.script(
            self._script,
            [*map(key, keys), *map(key, set_keys), self._settings.state_key(run_id)],
            [len(keys), len(set_keys), *fields],
        )
        return arrival(reply, fields, len(keys))


def arrival(reply: Any, fields: list[str], strings: int = 3) -> Arrival:
    """A job's arrival read from a script's reply: ``strings`` values, then member lists
    (the rest but the last), then the values of the hash ``fields``."""
    sets = len(reply) - strings - 1
    return (
        [None if r is None else text(r) for r in reply[:strings]],
        [{text(m) for m in r} for r in reply[strings : strings + sets]],
        decode_fields(fields, reply[-1]),
    )
