"""``CosmosContextStore``: each run's context in Cosmos DB, one item per run.

Item: ``{"id": <escaped run id>, "runId": <run id>, "c": {<key>: <JSON value>, ...}}`` in the
context container (partition key ``/runId``), values as native JSON. One item per run rather
than one per key, measured and chosen because:

* a multi-key patch must be atomic, and Cosmos makes a write atomic across items only in a
  transactional batch, which the emulators here do not have; within one item, a patch request
  of up to 10 operations is atomic, and a larger patch is an etag-checked replace (a concurrent
  write makes it read and try again, so none is lost);
* a job's arrival read is one point read (1 RU) rather than a query over the run's partition.

Reads of several runs made in the same event-loop tick (the jobs of one receive arriving, the
waits a result wakes, the reconciler asking for the last progress of every unfinished run) go
out as one query over those runs' partition keys instead of a point read per run; a ``get``
projects only its key. A read alone in its tick is a point read.

The cost: a run's whole context is bounded by Cosmos's 2 MB item limit. A node's write sends
only its keys (patch operations ``set``/``remove`` on ``/c/<key>``, the key JSON-Pointer
escaped: ``~`` → ``~0``, ``/`` → ``~1``); only a patch of more than 10 keys, or one whose
``remove`` meets an absent key, resends the item.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
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
_GATHER_MAX = 256
"""Most runs one gathered read asks for (the reconciler reads 256 runs at once)."""
_ITEMS_QUERY = "SELECT c.runId, c.c FROM c WHERE ARRAY_CONTAINS(@runs, c.runId)"
_VALUES_QUERY = "SELECT c.runId, c.c[@key] AS v FROM c WHERE ARRAY_CONTAINS(@runs, c.runId)"


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
        self._items = _Gathered(self._read_items)
        self._values = _Gathered(self._read_values)

    async def _context(self, run_id: str) -> dict[str, Any]:
        context: dict[str, Any] | None = await self._items.read("", run_id)
        return {} if context is None else context

    async def _read_items(self, _: str, run_ids: Sequence[str]) -> dict[str, Any]:
        if len(run_ids) == 1:
            item = await self._account.read(self._container, run_ids[0])
            return {run_ids[0]: item.get("c", {})} if item else {}
        rows = await self._query(_ITEMS_QUERY, [{"name": "@runs", "value": list(run_ids)}])
        return {row["runId"]: row.get("c", {}) for row in rows}

    async def _read_values(self, key: str, run_ids: Sequence[str]) -> dict[str, Any]:
        if len(run_ids) == 1:
            return {run_ids[0]: (await self._context(run_ids[0])).get(key)}
        parameters: list[dict[str, object]] = [
            {"name": "@key", "value": key},
            {"name": "@runs", "value": list(run_ids)},
        ]
        return {row["runId"]: row.get("v") for row in await self._query(_VALUES_QUERY, parameters)}

    async def _query(self, query: str, parameters: list[dict[str, object]]) -> list[Any]:
        proxy = await self._account.container(self._container)
        async with cosmos_errors:
            try:
                return [row async for row in proxy.query_items(query, parameters=parameters)]
            except cosmos_exceptions.CosmosHttpResponseError as exc:
                # No container: no run has an item, as a point read finds.
                if self._account.absent(exc):
                    return []
                raise

    async def get(self, run_id: str, key: str) -> Any:
        return await self._values.read(key, run_id)

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
        absent = False
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
                    absent = True  # the run's first write: the item is created below, unread
                except cosmos_exceptions.CosmosHttpResponseError as exc:
                    # A remove of an absent key refuses the whole patch; the rewrite below
                    # removes only what is there.
                    if exc.status_code != 400 or not deletes:
                        raise
        await self._rewrite(run_id, values, deletes, absent=absent)

    async def _rewrite(
        self, run_id: str, values: dict[str, Any], deletes: list[str], *, absent: bool = False
    ) -> None:
        """Create the run's item, or replace it if unchanged since read (etag), until one
        succeeds: atomic, and a concurrent write makes it read again rather than be lost.
        ``absent``: a patch just found no item, so the first try creates it unread."""
        for attempt in range(_REWRITE_TRIES):
            if attempt:
                await asyncio.sleep(random.uniform(0, min(0.5, 0.005 * 2**attempt)))
            if absent and not attempt:
                item = None
            else:
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


Fetch = Callable[[str, Sequence[str]], Awaitable[dict[str, Any]]]
"""Reads ``group`` of each run; runs without one are left out."""


class _Gathered:
    """Reads of many runs made in the same event-loop tick, sent together by ``fetch`` (at
    most ``_GATHER_MAX`` runs a call); each caller awaits its own run's value (None if the
    run has none) or the call's error."""

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch
        self._waiting: dict[str, dict[str, list[asyncio.Future[Any]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def read(self, group: str, run_id: str) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._flush)
        self._waiting.setdefault(group, {}).setdefault(run_id, []).append(future)
        return await future

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for group, runs in waiting.items():
            run_ids = list(runs)
            for start in range(0, len(run_ids), _GATHER_MAX):
                chunk = {r: runs[r] for r in run_ids[start : start + _GATHER_MAX]}
                task = asyncio.ensure_future(self._send(group, chunk))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _send(self, group: str, runs: dict[str, list[asyncio.Future[Any]]]) -> None:
        try:
            values = await self._fetch(group, list(runs))
        except asyncio.CancelledError:
            for futures in runs.values():
                for future in futures:
                    future.cancel()
            raise
        except Exception as exc:
            for futures in runs.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        for run_id, futures in runs.items():
            for future in futures:
                if not future.done():
                    future.set_result(values.get(run_id))
