"""``DynamoCoordinationStore``: fences, counters and join marks as DynamoDB items with TTLs.

One item per key (``pk = <prefix>c#<key>``): a string in ``val``, a counter in ``num`` or a
string set in ``members``, each with its expiry. Every operation is one conditional write or
one strongly consistent read; writes treat an expired item (which DynamoDB may still hold
for days) as absent, and reads skip it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flowcraft.backend import write_token
from flowcraft_sqs.clients import error_code, translated
from flowcraft_sqs.table import EXPIRES_MS, PK, Item, Key, Table, expiry, key, now_ms

__all__ = ["DynamoCoordinationStore"]

_SK = "-"
_VAL, _NUM, _MEMBERS, _WRITER = "val", "num", "members", "writer"
_NAMES = {"#pk": PK, "#exp": EXPIRES_MS}
# An absent or expired item: what set-if-absent may overwrite.
_GONE = "attribute_not_exists(#pk) OR #exp <= :now"
_LIVE = "attribute_exists(#pk) AND #exp > :now"
_FAILED = "ConditionalCheckFailedException"


class DynamoCoordinationStore:
    """A :class:`~flowcraft.backend.CoordinationStore` on the backend's DynamoDB table."""

    def __init__(self, table: Table) -> None:
        self._table = table
        self._prefix = table.settings.key_prefix + "c#"

    def _key(self, name: str) -> dict[str, Any]:
        return key(self._prefix + name, _SK)

    async def _update(
        self, name: str, expression: str, condition: str, **extra: Any
    ) -> Item | None:
        """One conditional UpdateItem; the item's attributes after it (all of them: an ADD or
        DELETE that leaves a set as it was does not count as an update for moto, which then
        returns no set), or None when the condition failed."""
        client = await self._table.client()
        values = extra.pop("values", {})
        names = {**_NAMES, **extra.pop("names", {})}
        with translated("dynamodb"):
            try:
                reply = await client.update_item(
                    TableName=self._table.name,
                    Key=self._key(name),
                    UpdateExpression=expression,
                    ConditionExpression=condition,
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues={":now": {"N": str(now_ms())}, **values},
                    ReturnValues="ALL_NEW",
                )
            except Exception as exc:
                if error_code(exc) == _FAILED:
                    return None
                raise
        return dict(reply.get("Attributes", {}))

    async def _put(self, name: str, attributes: Item, condition: str, **values: Any) -> bool:
        client = await self._table.client()
        with translated("dynamodb"):
            try:
                await client.put_item(
                    TableName=self._table.name,
                    Item={**self._key(name), **attributes},
                    ConditionExpression=condition,
                    ExpressionAttributeNames=_NAMES | ({"#w": _WRITER} if values else {}),
                    ExpressionAttributeValues={":now": {"N": str(now_ms())}, **values},
                )
            except Exception as exc:
                if error_code(exc) == _FAILED:
                    return False
                raise
        return True

    async def increment(self, key: str, ttl: float) -> int:
        while True:
            # if_not_exists covers an absent item; an expired one fails the condition and
            # is replaced by a fresh count below.
            updated = await self._update(
                key,
                "SET #n = if_not_exists(#n, :zero) + :one, #exp = :exp, #at = :at",
                "attribute_not_exists(#pk) OR #exp > :now",
                names={"#n": _NUM, "#at": "expires_at"},
                values=_expiry_values(ttl) | {":zero": {"N": "0"}, ":one": {"N": "1"}},
            )
            if updated is not None:
                return int(updated[_NUM]["N"])
            if await self._put(key, {_NUM: {"N": "1"}, **expiry(ttl)}, _GONE):
                return 1

    async def set_if_not_exist(self, key: str, value: str, ttl: float) -> bool:
        # botocore retries a request whose reply was lost with the same parameters, so the
        # token written with the value makes a retried, already applied put read as won.
        token = write_token()
        item = {_VAL: {"S": value}, _WRITER: {"S": token}, **expiry(ttl)}
        return await self._put(key, item, f"{_GONE} OR #w = :tok", **{":tok": {"S": token}})

    async def add_to_set(self, key: str, member: str, ttl: float) -> int:
        while True:
            updated = await self._update(
                key,
                "ADD #m :m SET #exp = :exp, #at = :at",
                "attribute_not_exists(#pk) OR #exp > :now",
                names={"#m": _MEMBERS, "#at": "expires_at"},
                values=_expiry_values(ttl) | {":m": {"SS": [member]}},
            )
            if updated is not None:
                return len(updated[_MEMBERS]["SS"])
            if await self._put(key, {_MEMBERS: {"SS": [member]}, **expiry(ttl)}, _GONE):
                return 1

    async def remove_from_set(self, key: str, member: str) -> int:
        updated = await self._update(
            key, "DELETE #m :m", _LIVE, names={"#m": _MEMBERS}, values={":m": {"SS": [member]}}
        )
        # DynamoDB drops a set attribute that becomes empty.
        return 0 if updated is None else len(updated.get(_MEMBERS, {}).get("SS", []))

    async def members(self, key: str) -> set[str]:
        return _members(await self._get(key))

    async def read(
        self, keys: Sequence[str], set_keys: Sequence[str]
    ) -> tuple[list[str | None], list[set[str]]]:
        if not keys and not set_keys:
            return [], []
        items = await self._table.batch_get(self.item_keys([*keys, *set_keys]))
        return self.parse(items, keys, set_keys)

    def item_keys(self, names: Sequence[str]) -> list[Key]:
        """The table keys of coordination keys ``names``."""
        return [(self._prefix + name, _SK) for name in names]

    def parse(
        self, items: Mapping[Key, Item], keys: Sequence[str], set_keys: Sequence[str]
    ) -> tuple[list[str | None], list[set[str]]]:
        """:meth:`read`'s answer from batch-read ``items``."""
        strings = [_text(items.get((self._prefix + k, _SK))) for k in keys]
        sets = [_members(items.get((self._prefix + k, _SK))) for k in set_keys]
        return strings, sets

    async def extend_ttl(self, key: str, ttl: float) -> bool:
        updated = await self._update(
            key,
            "SET #exp = :exp, #at = :at",
            _LIVE,
            names={"#at": "expires_at"},
            values=_expiry_values(ttl),
        )
        return updated is not None

    async def get(self, key: str) -> str | None:
        return _text(await self._get(key))

    async def _get(self, name: str) -> Item | None:
        # Through the table's batched reads: the gets of one tick (a client waiting on
        # thousands of runs checks each of them at once) share BatchGetItem requests.
        wanted = self.item_keys([name])[0]
        return (await self._table.batch_get([wanted])).get(wanted)

    async def delete(self, key: str) -> None:
        client = await self._table.client()
        with translated("dynamodb"):
            await client.delete_item(TableName=self._table.name, Key=self._key(key))

    async def delete_many(self, keys: Sequence[str]) -> None:
        """Delete every present key of ``keys`` (a finished run's bookkeeping), 25 per
        ``BatchWriteItem``."""
        await self._table.batch_delete(self.item_keys(keys))


def _expiry_values(ttl: float) -> dict[str, Any]:
    attributes = expiry(ttl)
    return {":exp": attributes[EXPIRES_MS], ":at": attributes["expires_at"]}


def _text(item: Item | None) -> str | None:
    if item is None:
        return None
    if _VAL in item:
        return str(item[_VAL]["S"])
    if _NUM in item:
        return str(item[_NUM]["N"])
    if _MEMBERS in item:
        return ",".join(sorted(item[_MEMBERS]["SS"]))
    return None


def _members(item: Item | None) -> set[str]:
    if item is None or _MEMBERS not in item:
        return set()
    return set(item[_MEMBERS]["SS"])
