"""``DynamoContextStore``: each run's context as one DynamoDB item per key.

A value is JSON text in its item (``pk = <prefix>x#<run id>``, ``sk = <key>``). One larger
than ``INLINE_BYTES`` is split into ``CHUNK_BYTES`` continuation items beside it (the item
limit is 400 KB), written in the same transaction as its head. Every item expires
``retention_seconds`` after its last write (DynamoDB TTL); reads skip expired items.

A patch is one ``TransactWriteItems`` (all-or-nothing) while it fits DynamoDB's limits of 100
items and 4 MB; a larger patch is applied as several transactions in order, each whole, so a
crash between them leaves a prefix of it applied. Core re-applies a node's whole patch when
its job is redelivered, so the context still ends as if the patch were atomic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, cast

from flowcraft.backend import SerializationError, decode_value, encode_value, patch_writes
from flowcraft.node import PatchOperation
from flowcraft_sqs.clients import error_code, translated
from flowcraft_sqs.table import SK, Item, Key, Table, expiry, key

__all__ = ["CHUNK_BYTES", "INLINE_BYTES", "MAX_VALUE_BYTES", "DynamoContextStore"]

INLINE_BYTES = 350_000
"""Largest encoded value kept in its key's own item."""
CHUNK_BYTES = 350_000
"""Size of each continuation item of a larger value."""
MAX_VALUE_BYTES = 3_500_000
"""Largest encoded value: it and its head must fit one transaction (4 MB)."""
_TX_ITEMS = 100
_TX_BYTES = 3_800_000
_VAL, _PARTS, _DATA = "val", "parts", "data"
_CANCELLED = "TransactionCanceledException"


class DynamoContextStore:
    """A :class:`~flowcraft.backend.ContextStore` on the backend's DynamoDB table."""

    def __init__(self, table: Table) -> None:
        self._table = table
        self._prefix = table.settings.key_prefix
        self._retention = float(table.settings.retention_seconds)

    def _pk(self, run_id: str) -> str:
        return f"{self._prefix}x#{run_id}"

    def _parts_pk(self, run_id: str) -> str:
        return f"{self._prefix}p#{run_id}"

    # ----------------------------------------------------------------------------- reads

    async def get(self, run_id: str, key: str) -> Any:
        return (await self.get_many(run_id, [key])).get(key)

    async def has(self, run_id: str, key: str) -> bool:
        heads = await self._table.batch_get([(self._pk(run_id), key)], projection=[_PARTS])
        return bool(heads)

    async def get_many(self, run_id: str, keys: Iterable[str]) -> dict[str, Any]:
        wanted = self.item_keys(run_id, keys)
        if not wanted:
            return {}
        heads = await self._table.batch_get(wanted)
        return await self.decode(run_id, [heads[k] for k in wanted if k in heads])

    def item_keys(self, run_id: str, keys: Iterable[str]) -> list[Key]:
        """The table keys of the head items of ``keys``."""
        pk = self._pk(run_id)
        return [(pk, name) for name in keys]

    async def to_dict(self, run_id: str) -> dict[str, Any]:
        return await self.decode(run_id, await self._table.query(self._pk(run_id)))

    async def decode(self, run_id: str, heads: Sequence[Item]) -> dict[str, Any]:
        """The values of head items (reading the continuation items of large ones)."""
        out: dict[str, Any] = {}
        chunked: list[tuple[str, int]] = []
        for head in heads:
            name = head[SK]["S"]
            if _VAL in head:
                out[name] = decode_value(head[_VAL]["S"])
            elif _PARTS in head:
                chunked.append((name, int(head[_PARTS]["N"])))
        if chunked:
            ppk = self._parts_pk(run_id)
            parts = await self._table.batch_get(
                [(ppk, f"{i}:{name}") for name, count in chunked for i in range(count)]
            )
            for name, count in chunked:
                chunks = [parts.get((ppk, f"{i}:{name}")) for i in range(count)]
                if all(chunks):
                    out[name] = decode_value(b"".join(c[_DATA]["B"] for c in chunks if c))
        return out

    # ---------------------------------------------------------------------------- writes

    async def set(self, run_id: str, key: str, value: Any) -> None:
        await self._write(run_id, {key: encode_value(key, value)}, [])

    async def delete(self, run_id: str, key: str) -> bool:
        existed = await self.has(run_id, key)
        await self._write(run_id, {}, [key])
        return existed

    async def patch(self, run_id: str, operations: Iterable[PatchOperation]) -> None:
        sets, deletes = patch_writes(operations)
        await self._write(run_id, sets, deletes)

    async def delete_run(self, run_id: str) -> None:
        heads = await self._table.query(self._pk(run_id), projection=[_PARTS])
        parts = await self._table.query(self._parts_pk(run_id), projection=[])
        keys: list[Key] = [(self._pk(run_id), h[SK]["S"]) for h in heads]
        keys += [(self._parts_pk(run_id), p[SK]["S"]) for p in parts]
        await self._table.batch_delete(keys)

    async def _write(self, run_id: str, sets: dict[str, bytes], deletes: list[str]) -> None:
        for name, raw in sets.items():
            if len(raw) > MAX_VALUE_BYTES:
                raise SerializationError(
                    f"context key '{name}' holds {len(raw)} bytes of JSON; the SQS backend"
                    f" stores at most {MAX_VALUE_BYTES} per value"
                )
        if not sets and not deletes:
            return
        # Fast path: no key had continuation items, so none can be left behind (the
        # conditions check it); otherwise read the old heads and delete their extra parts.
        stale: dict[str, int] | None = None
        while True:
            groups = self._transactions(run_id, sets, deletes, stale)
            try:
                for group in groups:
                    await self._transact(group)
                return
            except _Stale:
                pk = self._pk(run_id)
                heads = await self._table.batch_get(
                    [(pk, k) for k in (*sets, *deletes)], projection=[_PARTS]
                )
                stale = {k[1]: int(h[_PARTS]["N"]) for k, h in heads.items() if _PARTS in h}

    def hop_items(
        self, run_id: str, sets: dict[str, bytes], deletes: list[str]
    ) -> list[dict[str, Any]] | None:
        """A validated patch's items for a hop's transaction; None when it needs more than
        one transaction or continuation items (the generic path then writes it)."""
        if any(len(raw) > INLINE_BYTES for raw in sets.values()):
            return None
        if not sets and not deletes:
            return []
        groups = self._transactions(run_id, sets, deletes, None)
        return groups[0] if len(groups) == 1 else None

    def _transactions(
        self,
        run_id: str,
        sets: dict[str, bytes],
        deletes: list[str],
        stale: dict[str, int] | None,
    ) -> list[list[dict[str, Any]]]:
        """The patch as groups of transaction items, each key's items in one group."""
        table, pk, ppk = self._table.name, self._pk(run_id), self._parts_pk(run_id)
        ttl = expiry(self._retention)
        units: list[tuple[list[dict[str, Any]], int]] = []

        def guarded(name: str, count: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
            # The head's old part count, as known: the write fails (and the slow path runs)
            # if more parts than this write replaces might be left behind.
            names = {"#p": _PARTS}
            if stale is None or name not in stale:
                return "attribute_not_exists(#p) OR #p <= :n", names, {":n": {"N": str(count)}}
            return "#p = :old", names, {":old": {"N": str(stale[name])}}

        def cleanup(name: str, keep: int) -> list[dict[str, Any]]:
            old = 0 if stale is None else stale.get(name, 0)
            return [
                {"Delete": {"TableName": table, "Key": key(ppk, f"{i}:{name}")}}
                for i in range(keep, old)
            ]

        for name, raw in sets.items():
            count = 0 if len(raw) <= INLINE_BYTES else math.ceil(len(raw) / CHUNK_BYTES)
            head: Item = {**key(pk, name), **ttl}
            if count:
                head[_PARTS] = {"N": str(count)}
            else:
                head[_VAL] = {"S": raw.decode()}
            condition, names, values = guarded(name, count)
            items: list[dict[str, Any]] = [
                {
                    "Put": {
                        "TableName": table,
                        "Item": head,
                        "ConditionExpression": condition,
                        "ExpressionAttributeNames": names,
                        "ExpressionAttributeValues": values,
                    }
                }
            ]
            for i in range(count):
                chunk = raw[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES]
                part = {**key(ppk, f"{i}:{name}"), _DATA: {"B": chunk}, **ttl}
                items.append({"Put": {"TableName": table, "Item": part}})
            units.append((items + cleanup(name, count), len(raw) + 200))
        for name in deletes:
            condition, names, values = guarded(name, 0)
            delete = {
                "Delete": {
                    "TableName": table,
                    "Key": key(pk, name),
                    "ConditionExpression": condition,
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": values,
                }
            }
            units.append(([delete, *cleanup(name, 0)], 200))
        groups: list[list[dict[str, Any]]] = [[]]
        size = 0
        for items, weight in units:
            if groups[-1] and (
                len(groups[-1]) + len(items) > _TX_ITEMS or size + weight > _TX_BYTES
            ):
                groups.append([])
                size = 0
            groups[-1].extend(items)
            size += weight
        return groups

    async def _transact(self, items: list[dict[str, Any]]) -> None:
        client = await self._table.client()
        with translated("dynamodb"):
            try:
                if len(items) == 1:
                    await _single(client, items[0])
                else:
                    await client.transact_write_items(TransactItems=cast(Any, items))
            except Exception as exc:
                code = error_code(exc)
                if code == "ConditionalCheckFailedException" or (
                    code == _CANCELLED and "ConditionalCheckFailed" in str(exc)
                ):
                    raise _Stale from exc
                raise


class _Stale(Exception):
    """A key of the patch had continuation items the write did not expect."""


async def _single(client: Any, item: dict[str, Any]) -> None:
    # One item needs no transaction: a plain conditional write is cheaper (half the
    # write capacity) and atomic by itself.
    if "Put" in item:
        await client.put_item(**item["Put"])
    else:
        await client.delete_item(**item["Delete"])
