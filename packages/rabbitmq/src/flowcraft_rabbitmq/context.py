"""``PostgresContextStore``: one row per ``(run_id, key)`` with a ``jsonb`` value.

A patch is one statement (a delete and an upsert in one CTE), so it applies all-or-nothing and
writes only the keys it names. Keys and values are always bound as parameters. Every row
carries ``expires_at`` (``state_ttl_seconds`` after its last write, reset when the run ends);
reads ignore expired rows and the pool's cleanup deletes them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from flowcraft.backend import SerializationError, decode_value, patch_writes
from flowcraft.node import PatchOperation
from flowcraft_rabbitmq._pg import Pool

__all__ = ["PostgresContextStore", "encoded_values"]

# A NUL escape in encoded JSON: "\u0000" after an even number of backslashes.
_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def encoded_values(sets: dict[str, bytes]) -> list[str]:
    """The values of ``patch_writes`` as the text ``jsonb`` parses, in order.

    Raises:
        SerializationError: A string holds NUL, which ``jsonb`` cannot store.
    """
    values = []
    for key, raw in sets.items():
        if _NUL.search(raw):
            raise SerializationError(
                f"context key '{key}' holds a string with a NUL character, which"
                " PostgreSQL's jsonb cannot store"
            )
        values.append(raw.decode())
    return values


class PostgresContextStore:
    """A :class:`~flowcraft.backend.ContextStore` on PostgreSQL (table ``<prefix>context``).

    A value is one ``jsonb`` datum: up to 255 MB, but a job's whole arrival read travels in one
    reply, so keep values far smaller. ``jsonb`` cannot hold the NUL character (``\\u0000``)
    in a string; such a value is refused with :class:`~flowcraft.backend.SerializationError`.
    """

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        ttl = f"now() + make_interval(secs => {int(pool.settings.state_ttl_seconds)})"
        alive = "expires_at > now()"
        q = pool.query
        self._get = q(
            f"SELECT value::text FROM {{context}} WHERE run_id = %s AND key = %s AND {alive}"
        )
        self._has = q(f"SELECT 1 FROM {{context}} WHERE run_id = %s AND key = %s AND {alive}")
        self._many = q(
            "SELECT key, value::text FROM {context}"
            f" WHERE run_id = %s AND key = ANY(%s) AND {alive}"
        )
        self._all = q(f"SELECT key, value::text FROM {{context}} WHERE run_id = %s AND {alive}")
        self._delete = q(
            f"DELETE FROM {{context}} WHERE run_id = %s AND key = %s RETURNING {alive}"
        )
        self._delete_run = q("DELETE FROM {context} WHERE run_id = %s")
        self._patch = q(
            "WITH gone AS (DELETE FROM {context} WHERE run_id = %(run)s AND key = ANY(%(deletes)s))"
            " INSERT INTO {context} (run_id, key, value, expires_at)"
            f" SELECT %(run)s, k, v::jsonb, {ttl}"
            " FROM unnest(%(keys)s::text[], %(values)s::text[]) AS w(k, v)"
            " ON CONFLICT (run_id, key)"
            " DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at"
        )

    async def get(self, run_id: str, key: str) -> Any:
        rows = await self._pool.fetch(self._get, (run_id, key))
        return decode_value(str(rows[0][0])) if rows else None

    async def set(self, run_id: str, key: str, value: Any) -> None:
        await self.patch(run_id, [{"op": "set", "key": key, "value": value}])

    async def has(self, run_id: str, key: str) -> bool:
        return bool(await self._pool.fetch(self._has, (run_id, key)))

    async def delete(self, run_id: str, key: str) -> bool:
        rows = await self._pool.fetch(self._delete, (run_id, key))
        return bool(rows) and bool(rows[0][0])

    async def get_many(self, run_id: str, keys: Iterable[str]) -> dict[str, Any]:
        wanted = list(keys)
        if not wanted:
            return {}
        rows = await self._pool.fetch(self._many, (run_id, wanted))
        return {str(k): decode_value(str(v)) for k, v in rows}

    async def patch(self, run_id: str, operations: Iterable[PatchOperation]) -> None:
        sets, deletes = patch_writes(operations)
        if not sets and not deletes:
            return
        values = encoded_values(sets)
        params = {"run": run_id, "deletes": deletes, "keys": list(sets), "values": values}
        await self._pool.fetch(self._patch, params)

    async def to_dict(self, run_id: str) -> dict[str, Any]:
        rows = await self._pool.fetch(self._all, (run_id,))
        return {str(k): decode_value(str(v)) for k, v in rows}

    async def delete_run(self, run_id: str) -> None:
        await self._pool.fetch(self._delete_run, (run_id,))
