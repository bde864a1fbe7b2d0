"""``RedisContextStore``: each run's context in one hash, one JSON-encoded field per key.

This is the TypeScript adapter's layout (``workflow:state:<runId>``), so a TS client that HSETs
the initial state is understood. A field holds at most 512 MB (Redis' limit).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flowcraft.backend import decode_value, encode_value, patch_writes
from flowcraft.node import PatchOperation
from flowcraft_redis_store.batch import BatchedStore, Command, pairs
from flowcraft_redis_store.errors import text, translated

__all__ = ["RedisContextStore", "decode_fields"]


def decode_fields(keys: list[str], values: list[Any]) -> dict[str, Any]:
    """The present ``keys`` of an HMGET reply ``values``, decoded."""
    return {k: decode_value(v) for k, v in zip(keys, values, strict=True) if v is not None}


class RedisContextStore(BatchedStore):
    """A :class:`~flowcraft.distributed.ContextStore` on Redis hashes (arguments: those of
    :class:`~flowcraft_redis_store.batch.BatchedStore`)."""

    def _key(self, run_id: str) -> str:
        return self._settings.state_key(run_id)

    async def _one(self, *command: Any) -> Any:
        async with translated():
            return (await self._batch.run([command]))[0]

    async def get(self, run_id: str, key: str) -> Any:
        return decode_value(await self._one("HGET", self._key(run_id), key))

    async def set(self, run_id: str, key: str, value: Any) -> None:
        await self._one("HSET", self._key(run_id), key, encode_value(key, value))

    async def has(self, run_id: str, key: str) -> bool:
        return bool(await self._one("HEXISTS", self._key(run_id), key))

    async def delete(self, run_id: str, key: str) -> bool:
        return bool(await self._one("HDEL", self._key(run_id), key))

    async def get_many(self, run_id: str, keys: Iterable[str]) -> dict[str, Any]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        return decode_fields(wanted, await self._one("HMGET", self._key(run_id), *wanted))

    async def patch(self, run_id: str, operations: Iterable[PatchOperation]) -> None:
        sets, deletes = patch_writes(operations)
        if not sets and not deletes:
            return
        name = self._key(run_id)
        commands: list[Command] = []
        if sets:
            commands.append(("HSET", name, *(x for pair in sets.items() for x in pair)))
        if deletes:
            commands.append(("HDEL", name, *deletes))
        async with translated():
            await self._batch.transaction(commands)

    async def to_dict(self, run_id: str) -> dict[str, Any]:
        raw = await self._one("HGETALL", self._key(run_id))
        return {text(k): decode_value(v) for k, v in pairs(raw)}

    async def delete_run(self, run_id: str) -> None:
        await self._one("DEL", self._key(run_id))
