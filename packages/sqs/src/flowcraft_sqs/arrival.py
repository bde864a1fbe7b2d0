"""``DynamoArrivalReader``: what a job reads on arrival, from both stores in one batch get."""

from __future__ import annotations

from collections.abc import Sequence

from flowcraft.backend import Arrival
from flowcraft_sqs.context import DynamoContextStore
from flowcraft_sqs.coordination import DynamoCoordinationStore
from flowcraft_sqs.queue import rerouting
from flowcraft_sqs.table import Table

__all__ = ["DynamoArrivalReader"]


class DynamoArrivalReader:
    """An :class:`~flowcraft.backend.ArrivalReader`: the coordination items and context
    heads of a job live in one table, so one ``BatchGetItem`` reads them all."""

    def __init__(
        self,
        table: Table,
        coordination: DynamoCoordinationStore,
        context: DynamoContextStore,
    ) -> None:
        self._table = table
        self._coordination = coordination
        self._context = context

    async def read_arrival(
        self,
        run_id: str,
        keys: Sequence[str],
        set_keys: Sequence[str],
        context_keys: Sequence[str] | None,
    ) -> Arrival:
        coordination = self._coordination.item_keys([*keys, *set_keys])
        context = self._context.item_keys(run_id, context_keys or ())
        items = await self._table.batch_get([*coordination, *context])
        strings, sets = self._coordination.parse(items, keys, set_keys)
        # The job's result is the third key: found stored, the job re-routes from it.
        rerouting(len(strings) > 2 and strings[2] is not None)
        heads = [items[k] for k in context if k in items]
        return strings, sets, await self._context.decode(run_id, heads)
