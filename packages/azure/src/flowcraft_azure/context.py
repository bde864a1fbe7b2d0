"""``CosmosContextStore``: each run's context in Cosmos DB, one item per run.

Item: ``{"id": <escaped run id>, "runId": <run id>, "c": {<key>: <JSON value>, ...}}`` in the
context container (partition key ``/runId``), values as native JSON. One item per run rather
than one per key, measured and chosen because:

* a multi-key patch must be atomic, and Cosmos makes a write atomic across items only in a
  transactional batch, which the emulators here do not have; within one item, a patch request
  of up to 10 operations is atomic, and a larger patch is an etag-checked replace (a concurrent
  write makes it read and try again, so none is lost);
* a job's arrival read is one point read (1 RU) rather than a query over the run's partition.

The cost: a run's whole context is bounded by Cosmos's 2 MB item limit. A node's write sends
only its keys (patch operations ``set``/``remove`` on ``/c/<key>``, the key JSON-Pointer
escaped: ``~`` → ``~0``, ``/`` → ``~1``); only a patch of more than 10 keys, or one whose
``remove`` meets an absent key, resends the item.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterable
from typing import Any

import orjson
from azure.core import MatchConditions
from azure.cosmos import exceptions as cosmos_exceptions

from flowcraft.backend import AdapterError, patch_writes
from flowcraft.node import PatchOperation
from flowcraft_azure._errors import cosmos_errors
from flowcraft_azure.cosmos import CosmosAccount, item_id

__all__ = ["MAX_ITEM", "MAX_PATCH", "CosmosContextStore", "pointer"]

MAX_PATCH = 10
"""The most operations one Cosmos patch request may carry."""
MAX_ITEM = 2 * 1024 * 1024
"""Cosmos's limit on an item (a run's whole context), in bytes of JSON."""
_REWRITE_TRIES = 100


def pointer(key: str) -> str:
    """The patch path of a context key: ``/c/`` and the key JSON-Pointer escaped."""
    return "/c/" + key.replace("~", "~0").replace("/", "~1")


class CosmosContextStore:
    """A :class:`~flowcraft.backend.ContextStore` on Cosmos DB (``azure.cosmos.aio``).

    Args:
        account: The adapter's Cosmos client and containers.
    """

    def __init__(self, account: CosmosAccount) -> None:
        self._account = account
        self._container = account.settings.context_container

    async def _context(self, run_id: str) -> dict[str, Any]:
        item = await self._account.read(self._container, run_id)
        context: dict[str, Any] = item.get("c", {}) if item else {}
        return context

    async def get(self, run_id: str, key: str) -> Any:
        return (await self._context(run_id)).get(key)

    async def set(self, run_id: str, key: str, value: Any) -> None:
        await self.patch(run_id, [{"op": "set", "key": key, "value": value}])

    async def has(self, run_id: str, key: str) -> bool:
        return key in await self._context(run_id)

    async def delete(self, run_id: str, key: str) -> bool:
        proxy = await self._account.container(self._container)
        operations = [{"op": "remove", "path": pointer(key)}]
        async with cosmos_errors:
            try:
                await proxy.patch_item(
                    item_id(run_id), partition_key=run_id, patch_operations=operations
                )
            except cosmos_exceptions.CosmosResourceNotFoundError:
                return False
            except cosmos_exceptions.CosmosHttpResponseError as exc:
                # A remove of an absent path is refused (400) and removes nothing.
                if exc.status_code != 400 or await self.has(run_id, key):
                    raise
                return False
        return True

    async def get_many(self, run_id: str, keys: Iterable[str]) -> dict[str, Any]:
        wanted = list(keys)
        if not wanted:
            return {}
        context = await self._context(run_id)
        return {key: context[key] for key in wanted if key in context}

    async def patch(self, run_id: str, operations: Iterable[PatchOperation]) -> None:
        sets, deletes = patch_writes(operations)
        if not sets and not deletes:
            return
        values = {key: orjson.loads(raw) for key, raw in sets.items()}
        if len(values) + len(deletes) <= MAX_PATCH:
            proxy = await self._account.container(self._container)
            patch = [{"op": "set", "path": pointer(k), "value": v} for k, v in values.items()]
            patch += [{"op": "remove", "path": pointer(key)} for key in deletes]
            async with cosmos_errors:
                try:
                    await proxy.patch_item(
                        item_id(run_id), partition_key=run_id, patch_operations=patch
                    )
                    return
                except cosmos_exceptions.CosmosResourceNotFoundError:
                    pass  # the run's first write: the item is created below
                except cosmos_exceptions.CosmosHttpResponseError as exc:
                    # A remove of an absent key refuses the whole patch; the rewrite below
                    # removes only what is there.
                    if exc.status_code != 400 or not deletes:
                        raise
        await self._rewrite(run_id, values, deletes)

    async def _rewrite(self, run_id: str, values: dict[str, Any], deletes: list[str]) -> None:
        """Create the run's item, or replace it if unchanged since read (etag), until one
        succeeds: atomic, and a concurrent write makes it read again rather than be lost."""
        for attempt in range(_REWRITE_TRIES):
            if attempt:
                await asyncio.sleep(random.uniform(0, min(0.5, 0.005 * 2**attempt)))
            item = await self._account.read(self._container, run_id)
            proxy = await self._account.container(self._container)
            async with cosmos_errors:
                try:
                    if item is None:
                        if values:
                            body = {"id": item_id(run_id), "runId": run_id, "c": values}
                            await proxy.create_item(body)
                        return
                    context = {**item.get("c", {}), **values}
                    for key in deletes:
                        context.pop(key, None)
                    body = {"id": item["id"], "runId": run_id, "c": context}
                    await proxy.replace_item(
                        item["id"],
                        body,
                        etag=item["_etag"],
                        match_condition=MatchConditions.IfNotModified,
                    )
                    return
                except (
                    cosmos_exceptions.CosmosResourceExistsError,
                    cosmos_exceptions.CosmosAccessConditionFailedError,
                ):
                    continue  # written by another since the read
                except cosmos_exceptions.CosmosResourceNotFoundError:
                    # Deleted since the read, or (on create) the container is gone.
                    if item is None and not self._account.recreate():
                        raise
        raise AdapterError(f"cosmos error: the context of run {run_id!r} kept changing")

    async def to_dict(self, run_id: str) -> dict[str, Any]:
        return dict(await self._context(run_id))

    async def delete_run(self, run_id: str) -> None:
        proxy = await self._account.container(self._container)
        async with cosmos_errors:
            with contextlib.suppress(cosmos_exceptions.CosmosResourceNotFoundError):
                await proxy.delete_item(item_id(run_id), partition_key=run_id)
