"""``RedisContextStore``: each run's context in one hash, one JSON-encoded field per key.

This is the TypeScript adapter's layout (``workflow:state:<runId>``), so a TS client that HSETs
the initial state is understood. A field holds at most 512 MB (Redis' limit).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from flowcraft.errors import SerializationError
from flowcraft.node import PatchOperation
from flowcraft_redis._batch import BatchedStore, Command, pairs
from flowcraft_redis._errors import text, translated

__all__ = ["RedisContextStore", "decode_fields", "hash_writes"]


def _encode(key: str, value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError as exc:
        raise SerializationError(
            f"context key '{key}' holds a value that is not JSON: {exc}"
        ) from exc


def _decode(raw: bytes | str | None) -> Any:
    # The TS client writes empty strings for undefined values.
    if raw is None or raw == b"":
        return None
    return orjson.loads(raw)


def hash_writes(operations: Iterable[PatchOperation]) -> tuple[dict[str, bytes], list[str]]:
    """The net field writes and deletions of patch ``operations`` on a run's hash.

    Raises:
        ValueError: An operation is not a set (with a value) or delete of a string key.
        SerializationError: A value is not JSON.
    """
    sets: dict[str, bytes] = {}
    deletes: list[str] = []
    for op in operations:
        kind, key = op.get("op"), op.get("key")
        if not isinstance(key, str) or kind not in ("set", "delete"):
            raise ValueError(f"invalid patch operation {op!r}: need op set/delete and a key")
        if kind == "set":
            if "value" not in op:
                raise ValueError(f"patch operation {op!r} sets no value")
            sets[key] = _encode(key, op["value"])
            if key in deletes:
                deletes.remove(key)
        else:
            sets.pop(key, None)
            deletes.append(key)
    return sets, deletes


def decode_fields(keys: list[str], values: list[Any]) -> dict[str, Any]:
    """The present ``keys`` of an HMGET reply ``values``, decoded."""
    return {k: _decode(v) for k, v in zip(keys, values, strict=True) if v is not None}


class RedisContextStore(BatchedStore):
    """A :class:`~flowcraft.distributed.ContextStore` on Redis hashes (arguments: those of
    :class:`~flowcraft_redis._batch.BatchedStore`)."""

    def _key(self, run_id: str) -> str:
        return self._settings.state_key(run_id)

    async def _one(self, *command: Any) -> Any:
        async with translated():
            return (await self._batch.run([command]))[0]

    async def get(self, run_id: str, key: str) -> Any:
        return _decode(await self._one("HGET", self._key(run_id), key))

    async def set(self, run_id: str, key: str, value: Any) -> None:
        await self._one("HSET", self._key(run_id), key, _encode(key, value))

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
        sets, deletes = hash_writes(operations)
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
        return {text(k): _decode(v) for k, v in pairs(raw)}

    async def delete_run(self, run_id: str) -> None:
        await self._one("DEL", self._key(run_id))
