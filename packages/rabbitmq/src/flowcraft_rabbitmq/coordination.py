"""``PostgresCoordinationStore``: fences, join sets and counters in one PostgreSQL table.

For deployments on RabbitMQ and PostgreSQL alone. One row per key (``value`` for strings and
counters, ``members`` for sets) with ``expires_at``; an expired row reads as absent and is
overwritten by the next write, and the pool's cleanup deletes it. Each operation is one
statement, atomic under concurrent writers through the row lock of the upsert.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flowcraft.backend import write_token
from flowcraft_rabbitmq._pg import Pool

__all__ = ["PostgresCoordinationStore", "assemble"]

_TTL = "now() + make_interval(secs => %(ttl)s)"
_LIVE = "c.expires_at > now()"


def assemble(
    found: dict[str, tuple[Any, Any]], keys: Sequence[str], set_keys: Sequence[str]
) -> tuple[list[str | None], list[set[str]]]:
    """A ``read``'s answer from the live rows found, ``key → (value, members)``."""
    strings: list[str | None] = []
    for key in keys:
        value, members = found.get(key, (None, None))
        # Sets read as their size, as in the Redis store, so callers need not know types.
        strings.append(str(len(members)) if members is not None else value)
    sets = [set(found.get(key, (None, None))[1] or ()) for key in set_keys]
    return strings, sets


class PostgresCoordinationStore:
    """A :class:`~flowcraft.backend.CoordinationStore` on PostgreSQL (``<prefix>coordination``).

    Calls whose connection drops are tried again (:meth:`Pool.fetch`); ``set_if_not_exist``
    keeps the writer's token in the row, so a retried win still reads as won.
    """

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        upsert = "INSERT INTO {coordination} AS c (key, value, members, token, expires_at)"
        q = pool.query
        self._increment = q(
            f"{upsert} VALUES (%(key)s, '1', NULL, NULL, {_TTL})"
            " ON CONFLICT (key) DO UPDATE SET members = NULL, expires_at = EXCLUDED.expires_at,"
            f" value = CASE WHEN {_LIVE} THEN (coalesce(c.value, '0')::bigint + 1)::text"
            " ELSE '1' END"
            " RETURNING value"
        )
        self._set_nx = q(
            f"{upsert} VALUES (%(key)s, %(value)s, NULL, %(token)s, {_TTL})"
            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, members = NULL,"
            " token = EXCLUDED.token, expires_at = EXCLUDED.expires_at"
            f" WHERE NOT ({_LIVE}) OR c.token = EXCLUDED.token"
            " RETURNING 1"
        )
        self._add = q(
            f"{upsert} VALUES (%(key)s, NULL, ARRAY[%(member)s]::text[], NULL, {_TTL})"
            " ON CONFLICT (key) DO UPDATE SET value = NULL, expires_at = EXCLUDED.expires_at,"
            f" members = CASE WHEN NOT ({_LIVE}) OR c.members IS NULL THEN EXCLUDED.members"
            " WHEN %(member)s = ANY(c.members) THEN c.members"
            " ELSE array_append(c.members, %(member)s) END"
            " RETURNING cardinality(members)"
        )
        self._remove = q(
            "UPDATE {coordination} AS c SET members = array_remove(c.members, %(member)s)"
            f" WHERE key = %(key)s AND {_LIVE} AND c.members IS NOT NULL"
            " RETURNING cardinality(members)"
        )
        self._read = q(
            "SELECT key, value, members FROM {coordination} AS c"
            f" WHERE key = ANY(%(keys)s) AND {_LIVE}"
        )
        self._extend = q(
            f"UPDATE {{coordination}} AS c SET expires_at = {_TTL}"
            f" WHERE key = %(key)s AND {_LIVE} RETURNING 1"
        )
        self._delete = q("DELETE FROM {coordination} WHERE key = %(key)s")
        self._delete_many = q("DELETE FROM {coordination} WHERE key = ANY(%(keys)s)")

    async def _one(self, statement: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
        rows = await self._pool.fetch(statement, params)
        return rows[0] if rows else None

    async def increment(self, key: str, ttl: float) -> int:
        row = await self._one(self._increment, {"key": key, "ttl": ttl})
        assert row is not None
        return int(row[0])

    async def set_if_not_exist(self, key: str, value: str, ttl: float) -> bool:
        params = {"key": key, "value": value, "token": write_token(), "ttl": ttl}
        return await self._one(self._set_nx, params) is not None

    async def add_to_set(self, key: str, member: str, ttl: float) -> int:
        row = await self._one(self._add, {"key": key, "member": member, "ttl": ttl})
        assert row is not None
        return int(row[0])

    async def remove_from_set(self, key: str, member: str) -> int:
        row = await self._one(self._remove, {"key": key, "member": member})
        return 0 if row is None else int(row[0] or 0)

    async def members(self, key: str) -> set[str]:
        return (await self.read([], [key]))[1][0]

    async def read(
        self, keys: Sequence[str], set_keys: Sequence[str]
    ) -> tuple[list[str | None], list[set[str]]]:
        wanted = list({*keys, *set_keys})
        if not wanted:
            return [], []
        rows = await self._pool.fetch(self._read, {"keys": wanted})
        found = {str(key): (value, members) for key, value, members in rows}
        return assemble(found, keys, set_keys)

    async def extend_ttl(self, key: str, ttl: float) -> bool:
        return await self._one(self._extend, {"key": key, "ttl": ttl}) is not None

    async def get(self, key: str) -> str | None:
        return (await self.read([key], []))[0][0]

    async def delete(self, key: str) -> None:
        await self._pool.fetch(self._delete, {"key": key})

    async def delete_many(self, keys: Sequence[str]) -> None:
        """Remove every present key of ``keys`` in one statement (a finished run's
        bookkeeping is a dozen keys per node)."""
        wanted = list(keys)
        if wanted:
            await self._pool.fetch(self._delete_many, {"keys": wanted})
