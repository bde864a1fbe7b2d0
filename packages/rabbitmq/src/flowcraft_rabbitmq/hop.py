"""The fast paths of ``rabbitmq-postgres`` (docs/backends.md): both stores live in one
PostgreSQL, so a job's arrival read is one query and a finished node's hop one statement.

``PostgresHop.commit`` applies the hop in the ``<prefix>hop`` function (``_pg.py``): result
record, context writes, join marks, fences and the done count, all-or-nothing. The successors
whose fences it won are then published, their confirms awaited together, and core acks the job
(``applied``); the one core asks to reserve (``HopTarget.reserve``) is not published but handed
back as ``HopCommit.next``, for this worker to run next (``RabbitQueue.reserve``: the job's own
delivery stays unacked until that successor is settled). A crash between the commit and the
publishes, or while the reserved successor runs, loses nothing: the job comes back, finds its
result stored and takes core's generic path, which enqueues again every successor whose fence
names it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg

from flowcraft.backend import (
    AdapterError,
    Arrival,
    Delivery,
    Hop,
    HopCommit,
    decode_value,
    patch_writes,
    write_token,
)
from flowcraft_rabbitmq._pg import Pool
from flowcraft_rabbitmq.context import encoded_values
from flowcraft_rabbitmq.coordination import assemble
from flowcraft_rabbitmq.queue import RabbitQueue

__all__ = ["PostgresHop"]


class PostgresHop:
    """A :class:`~flowcraft.backend.HopCommitter` and
    :class:`~flowcraft.backend.ArrivalReader` over the PostgreSQL stores."""

    reads_ahead = False

    def __init__(self, pool: Pool, queue: RabbitQueue) -> None:
        self._pool = pool
        self._queue = queue
        self._state_ttl = float(pool.settings.state_ttl_seconds)
        q = pool.query
        self._hop = q("SELECT {hop}(%s::jsonb, %s::text[], %s::text[], %s::text[], %s)")
        self._arrival = q(
            "SELECT false, c.key, c.value, c.members FROM {coordination} AS c"
            " WHERE c.key = ANY(%(keys)s) AND c.expires_at > now()"
            " UNION ALL"
            " SELECT true, x.key, x.value::text, NULL FROM {context} AS x"
            " WHERE x.run_id = %(run)s AND x.key = ANY(%(fields)s) AND x.expires_at > now()"
        )

    async def commit(self, delivery: Delivery, hop: Hop) -> HopCommit:
        """Apply ``hop`` in one statement, then publish the successors it fired."""
        sets, deletes = patch_writes(hop.context_ops)
        keys = sorted(sets)
        values = encoded_values({key: sets[key] for key in keys})
        targets = sorted(hop.targets, key=lambda t: t.member)
        spec = {
            "run": hop.run_id,
            "member": hop.member,
            "result_key": hop.result_key,
            "record": hop.result_record,
            "token": write_token(),
            "dynamic": hop.dynamic,
            "pending": hop.pending,
            "enqueued": hop.enqueued,
            "done": hop.done,
            "ttl": hop.ttl,
            "targets": [
                {
                    "member": t.member,
                    "fence": t.fence,
                    "resolved": t.resolved,
                    "taken": t.taken,
                    "source": t.source,
                    "mark": t.mark,
                    "preds": list(t.preds),
                }
                for t in targets
            ],
        }
        params = (orjson.dumps(spec).decode(), keys, values, sorted(deletes), self._state_ttl)

        try:
            rows = await self._pool.fetch(self._hop, params)
        except AdapterError as exc:
            if isinstance(exc.__cause__, psycopg.errors.DeadlockDetected):
                # Rolled back whole, deadlocked again when tried again: the generic path
                # makes the same changes call by call.
                return HopCommit("slow")
            raise
        reply = rows[0][0] if rows else None
        if reply is None:
            return HopCommit("slow")
        outcome, fired = str(reply[0]), [str(v) for v in reply[1:]]
        won = set(fired)
        reserve = next((t for t in hop.targets if t.reserve and t.member in won), None)
        bodies = [t.body for t in hop.targets if t.member in won and t is not reserve]
        if reserve is None:
            await self._queue.enqueue_many(bodies)
            following = None
        else:
            following = await self._reserve(delivery, reserve.body, bodies)
        return HopCommit("quiescent" if outcome == "quiescent" else "applied", fired, following)

    async def _reserve(self, delivery: Delivery, body: str, bodies: list[str]) -> Delivery | None:
        # The successor's claim and the other successors' publishes at once.
        reserved, published = await asyncio.gather(
            self._queue.reserve(delivery, body),
            self._queue.enqueue_many(bodies),
            return_exceptions=True,
        )
        if isinstance(reserved, BaseException):
            raise reserved
        if isinstance(published, BaseException):
            # Core handles the job again; its generic path publishes every successor.
            if reserved is not None:
                self._queue.unreserve(delivery, reserved)
            raise published
        if reserved is None:
            await self._queue.enqueue(body)
        return reserved

    async def read_arrival(
        self,
        run_id: str,
        keys: Sequence[str],
        set_keys: Sequence[str],
        context_keys: Sequence[str] | None,
    ) -> Arrival:
        """The coordination reads and the context fields in one query."""
        params = {"keys": list({*keys, *set_keys}), "run": run_id, "fields": context_keys or []}

        found: dict[str, tuple[Any, Any]] = {}
        fields: dict[str, Any] = {}
        for is_field, key, value, members in await self._pool.fetch(self._arrival, params):
            if is_field:
                fields[str(key)] = value
            else:
                found[str(key)] = (value, members)
        strings, sets = assemble(found, keys, set_keys)
        return strings, sets, {k: decode_value(v) for k, v in fields.items()}
