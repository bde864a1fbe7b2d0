"""The one DynamoDB table behind the context and coordination stores.

Layout: partition key ``pk`` and sort key ``sk`` (strings), DynamoDB TTL on ``expires_at``
(epoch seconds). Coordination items are ``pk = <prefix>c#<key>``, ``sk = "-"``; context items
``pk = <prefix>x#<run id>``, ``sk = <context key>``; the continuation items of a large
context value ``pk = <prefix>p#<run id>``, ``sk = <index>:<context key>``. DynamoDB deletes
expired items only eventually (within days), so every read checks ``expires_ms`` itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from flowcraft_sqs.clients import Clients, error_code, translated

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

__all__ = ["Item", "Key", "Table", "now_ms"]

Item = dict[str, Any]
"""A DynamoDB item in the low-level wire form (``{"pk": {"S": "…"}, …}``)."""
Key = tuple[str, str]

PK, SK = "pk", "sk"
EXPIRES_AT = "expires_at"
EXPIRES_MS = "expires_ms"
_BATCH_GET = 100
_BATCH_WRITE = 25


def now_ms() -> int:
    """Wall-clock milliseconds: expiries are compared across processes and machines."""
    return int(time.time() * 1000)


def expiry(ttl: float) -> dict[str, Any]:
    """The two expiry attributes of an item living ``ttl`` more seconds."""
    at = now_ms() + max(1, int(ttl * 1000))
    return {EXPIRES_MS: {"N": str(at)}, EXPIRES_AT: {"N": str(at // 1000 + 1)}}


def live(item: Mapping[str, Any] | None, now: int | None = None) -> bool:
    """Whether ``item`` exists and has not expired."""
    if not item:
        return False
    raw = item.get(EXPIRES_MS)
    return raw is None or int(raw["N"]) > (now_ms() if now is None else now)


def key(pk: str, sk: str) -> dict[str, Any]:
    return {PK: {"S": pk}, SK: {"S": sk}}


class Table:
    """The table of one deployment (created with its TTL on first use when allowed)."""

    def __init__(self, clients: Clients) -> None:
        self.clients = clients
        self.settings = clients.settings
        self.name = clients.settings.table
        self._ready: asyncio.Future[None] | None = None
        self._reads: list[tuple[list[Key], asyncio.Future[dict[Key, Item]]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def client(self) -> DynamoDBClient:
        """The DynamoDB client, once the table exists."""
        client = await self.clients.dynamodb()
        if self._ready is None or (self._ready.done() and self._ready.exception() is not None):
            self._ready = asyncio.ensure_future(self._ensure(client))
        await asyncio.shield(self._ready)
        return client

    async def _ensure(self, client: DynamoDBClient) -> None:
        with translated("dynamodb"):
            try:
                await client.describe_table(TableName=self.name)
                return
            except Exception as exc:
                if error_code(exc) != "ResourceNotFoundException" or not self.settings.create:
                    raise
            try:
                await client.create_table(
                    TableName=self.name,
                    AttributeDefinitions=[
                        {"AttributeName": PK, "AttributeType": "S"},
                        {"AttributeName": SK, "AttributeType": "S"},
                    ],
                    KeySchema=[
                        {"AttributeName": PK, "KeyType": "HASH"},
                        {"AttributeName": SK, "KeyType": "RANGE"},
                    ],
                    BillingMode="PAY_PER_REQUEST",
                )
            except Exception as exc:
                # Another process created it first.
                if error_code(exc) != "ResourceInUseException":
                    raise
            waiter = client.get_waiter("table_exists")
            await waiter.wait(TableName=self.name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
            try:
                await client.update_time_to_live(
                    TableName=self.name,
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": EXPIRES_AT},
                )
            except Exception as exc:
                # Already enabled by the process that created the table.
                if error_code(exc) != "ValidationException":
                    raise

    async def batch_get(
        self, keys: Sequence[Key], projection: Sequence[str] | None = None
    ) -> dict[Key, Item]:
        """The live items among ``keys`` (strongly consistent), by key.

        Whole-item reads asked for in the same event-loop tick (the arrival reads of jobs
        received together, a reconciler's scan of many runs) share ``BatchGetItem``
        requests of up to 100 keys.
        """
        if projection:
            return await self._batch_get(keys, projection)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[Key, Item]] = loop.create_future()
        if not self._reads:
            loop.call_soon(self._read_together)
        self._reads.append((list(keys), future))
        return await future

    def _read_together(self) -> None:
        reads, self._reads = self._reads, []
        task = asyncio.ensure_future(self._serve(reads))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reads: list[tuple[list[Key], asyncio.Future[dict[Key, Item]]]]) -> None:
        try:
            found = await self._batch_get([k for keys, _ in reads for k in keys], None)
        except Exception as exc:
            for _, future in reads:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:
            for _, future in reads:
                future.cancel()
            raise
        for keys, future in reads:
            if not future.done():
                future.set_result({k: found[k] for k in keys if k in found})

    async def _batch_get(
        self, keys: Sequence[Key], projection: Sequence[str] | None
    ) -> dict[Key, Item]:
        client = await self.client()
        unique = list(dict.fromkeys(keys))
        found: dict[Key, Item] = {}
        now = now_ms()

        async def chunk(part: Sequence[Key]) -> None:
            request: dict[str, Any] = {
                "Keys": [key(pk, sk) for pk, sk in part],
                "ConsistentRead": True,
            }
            if projection:
                names = {f"#a{i}": name for i, name in enumerate({PK, SK, *projection})}
                request["ProjectionExpression"] = ", ".join(names)
                request["ExpressionAttributeNames"] = names
            pending: Any = {self.name: request}
            pause = 0.01
            while pending:
                with translated("dynamodb"):
                    reply = await client.batch_get_item(RequestItems=pending)
                for item in reply.get("Responses", {}).get(self.name, []):
                    if live(item, now):
                        found[(item[PK]["S"], item[SK]["S"])] = item
                pending = reply.get("UnprocessedKeys") or None
                if pending:
                    # Throttled: back off before asking for the rest.
                    await asyncio.sleep(pause)
                    pause = min(1.0, pause * 2)

        parts = [unique[i : i + _BATCH_GET] for i in range(0, len(unique), _BATCH_GET)]
        if len(parts) == 1:
            await chunk(parts[0])
        elif parts:
            await asyncio.gather(*(chunk(part) for part in parts))
        return found

    async def query(self, pk: str, projection: Sequence[str] | None = None) -> list[Item]:
        """Every live item of partition ``pk`` (strongly consistent, all pages)."""
        client = await self.client()
        items: list[Item] = []
        request: dict[str, Any] = {
            "TableName": self.name,
            "KeyConditionExpression": "#pk = :pk",
            "ExpressionAttributeNames": {"#pk": PK},
            "ExpressionAttributeValues": {":pk": {"S": pk}},
            "ConsistentRead": True,
        }
        if projection:
            names = {f"#a{i}": name for i, name in enumerate({SK, *projection})}
            request["ProjectionExpression"] = ", ".join(names)
            request["ExpressionAttributeNames"].update(names)
        now = now_ms()
        while True:
            with translated("dynamodb"):
                reply = await client.query(**request)
            items += [item for item in reply.get("Items", []) if live(item, now)]
            last = reply.get("LastEvaluatedKey")
            if not last:
                return items
            request["ExclusiveStartKey"] = last

    async def batch_delete(self, keys: Sequence[Key]) -> None:
        """Delete ``keys`` (not atomically: for cleaning up).

        The requests of 25 keys go out together: a finished run's bookkeeping (a few dozen
        items) is deleted by its last job, which holds a worker slot meanwhile.
        """
        client = await self.client()
        unique = list(dict.fromkeys(keys))

        async def chunk(part: Sequence[Key]) -> None:
            pending: Any = {self.name: [{"DeleteRequest": {"Key": key(*k)}} for k in part]}
            pause = 0.01
            while pending:
                with translated("dynamodb"):
                    reply = await client.batch_write_item(RequestItems=pending)
                pending = reply.get("UnprocessedItems") or None
                if pending:
                    # Throttled: back off before deleting the rest.
                    await asyncio.sleep(pause)
                    pause = min(1.0, pause * 2)

        parts = [unique[i : i + _BATCH_WRITE] for i in range(0, len(unique), _BATCH_WRITE)]
        await asyncio.gather(*(chunk(part) for part in parts))
