"""``DynamoHopCommitter``: a finished node's hop in one DynamoDB transaction and one SQS send.

The generic path stores a hop in a score of small calls (result, context patch, two marks,
two reads, fence, in-flight and done sets per successor). Context and coordination items live
in one table here, so one ``TransactWriteItems`` makes all of it at once:

* the result record (only if absent: a redelivery or a duplicate answers ``slow`` and the
  generic path routes from the stored result), a check that no node was spliced in, and
  the node's context writes;
* every target's taken and resolved marks;
* for each target whose join needs nothing but this edge (one predecessor, or an ``any``
  join): its fence, won only if unset (a fence held by another job is left as it is), and
  its member in the run's in-flight set;
* a target joining several predecessors goes into the run's pending set, and whether its
  join is complete is read after the transaction (two last branches then both see it
  complete, and the fence lets one of them fire it);
* the job counted done when it fires a successor here (which keeps the run going);
  otherwise, as after a join's decision, it counts itself done after the transaction, as the
  generic path does, so exactly one last job learns that the run is over.

Then the won successors are sent (one ``SendMessageBatch``) and the adapter acks the job.
A crash after the transaction is repaired as any crash of the generic path: the job comes
back, finds its result and routes from it, re-sending a successor whose fence it holds.

A hop that does not fit one transaction (more than 100 items or about 3.5 MB, a context value
split over several items) answers ``slow`` and takes the generic path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any, cast

from flowcraft.backend import Delivery, Hop, HopCommit, HopTarget, patch_writes, write_token
from flowcraft_sqs.clients import error_code, translated
from flowcraft_sqs.context import DynamoContextStore
from flowcraft_sqs.coordination import DynamoCoordinationStore
from flowcraft_sqs.queue import SqsQueue
from flowcraft_sqs.table import EXPIRES_AT, EXPIRES_MS, PK, Table, expiry, key, now_ms

__all__ = ["DynamoHopCommitter"]

_FIRED = "fired:"
"""A fence won by job ``<member>`` holds ``fired:<member>`` (core's ``fired_by``)."""
_SKIPPED = "skipped"
_TX_ITEMS = 100
_TX_BYTES = 3_500_000
_ATTEMPTS = 20
_CANCELLED = "TransactionCanceledException"
_VAL, _MEMBERS, _WRITER = "val", "members", "writer"


class _Slow(Exception):
    """The hop must take the generic path (nothing of it was applied)."""


class DynamoHopCommitter:
    """A :class:`~flowcraft.backend.HopCommitter` on the backend's table and queue."""

    reads_ahead = False

    def __init__(
        self,
        table: Table,
        coordination: DynamoCoordinationStore,
        context: DynamoContextStore,
        queue: SqsQueue,
    ) -> None:
        self._table = table
        self._coordination = coordination
        self._context = context
        self._queue = queue

    async def commit(self, delivery: Delivery, hop: Hop) -> HopCommit:
        """Apply ``hop`` (see the module docstring); ``slow`` having changed nothing when it
        does not fit one transaction or its result is stored already."""
        # Validated first: an invalid patch fails the job before anything is written.
        sets, deletes = patch_writes(hop.context_ops)
        context = self._context.hop_items(hop.run_id, sets, deletes)
        if context is None:
            return HopCommit("slow")
        size = len(hop.result_record) + sum(len(v) for v in sets.values())
        if size > _TX_BYTES:
            return HopCommit("slow")
        joins = [t for t in hop.targets if len(set(t.preds) - {t.source}) > 0]
        direct = [t for t in hop.targets if t not in joins]
        token = write_token()
        try:
            fired, skipped, counted = await self._claim(hop, context, direct, joins, token)
        except _Slow:
            return HopCommit("slow")
        if joins:
            more, also_skipped = await self._settle_joins(hop, joins)
            fired += more
            skipped += also_skipped
        bodies = {t.member: t.body for t in hop.targets}
        sends = [self._queue.enqueue(bodies[m]) for m in fired]
        if counted:
            # Counted in the transaction only beside a successor it fired: the run goes on.
            await asyncio.gather(*sends)
            return HopCommit("applied", fired)
        # Every fired successor is in the run's in-flight set already, so counting the job
        # done beside their sends cannot make the run look finished.
        *_, quiet = await asyncio.gather(*sends, self._count_done(hop, skipped))
        return HopCommit("quiescent" if quiet else "applied", fired)

    # ------------------------------------------------------------------ the transaction

    async def _claim(
        self,
        hop: Hop,
        context: list[dict[str, Any]],
        direct: Sequence[HopTarget],
        joins: Sequence[HopTarget],
        token: str,
    ) -> tuple[list[str], list[str], bool]:
        """The one transaction; the members whose fences it won, those found skipped, and
        whether it counted the job (and those) done."""
        # A fence found taken is read and the transaction made again without it.
        held: dict[str, str | None] = {}
        for attempt in range(_ATTEMPTS):
            fences: dict[str, HopTarget] = {}
            for target in direct:
                if target.fence not in held:
                    fences.setdefault(target.fence, target)
            skipped = [t.member for t in direct if held.get(t.fence) == _SKIPPED]
            sets: dict[str, set[str]] = {}
            for target in hop.targets:
                sets.setdefault(target.taken, set()).add(target.mark)
                sets.setdefault(target.resolved, set()).add(target.source)
            for target in joins:
                sets.setdefault(hop.pending, set()).add(target.member)
            if direct:
                sets.setdefault(hop.enqueued, set()).update(t.member for t in direct)
            # A job that fires a successor here cannot empty the run's frontier, so it is
            # counted done here; one that fires none is counted after, by two updates whose
            # sizes tell exactly one last job that the run is over.
            counted = not joins and bool(fences)
            if counted:
                sets.setdefault(hop.enqueued, set()).add(hop.member)
                sets.setdefault(hop.done, set()).update([hop.member, *skipped])
            items = self._head(hop, token) + context
            tail = [self._add(name, members, hop.ttl) for name, members in sets.items()]
            fence_items = [
                self._fence(name, _FIRED + hop.member, token, hop.ttl) for name in fences
            ]
            items += tail + fence_items
            if len(items) > _TX_ITEMS:
                raise _Slow
            failed = await self._transact(items)
            if failed is None:
                fired = list(dict.fromkeys(t.member for t in fences.values()))
                return fired, skipped, counted
            first_fence = len(items) - len(fence_items)
            lost = [i - first_fence for i in failed if i >= first_fence]
            if len(lost) != len(failed):
                # The result is stored, a node was spliced in, an item expired, or a
                # context value has continuation items: the generic path handles each.
                raise _Slow
            names = list(fences)
            values, _ = await self._coordination.read([names[i] for i in lost], [])
            for index, value in zip(lost, values, strict=True):
                held[names[index]] = value
            if attempt:
                await asyncio.sleep(0.005 * attempt)
        raise _Slow

    def _head(self, hop: Hop, token: str) -> list[dict[str, Any]]:
        """The result record (only where none is stored) and the no-splice check."""
        table = self._table.name
        now = {":now": {"N": str(now_ms())}}
        result = {
            **self._key(hop.result_key),
            _VAL: {"S": hop.result_record},
            _WRITER: {"S": token},
            **expiry(hop.ttl),
        }
        return [
            {
                "Put": {
                    "TableName": table,
                    "Item": result,
                    # The token: a retry of a transaction whose reply was lost still wins.
                    "ConditionExpression": "attribute_not_exists(#pk) OR #exp <= :now OR #w = :tok",
                    "ExpressionAttributeNames": {"#pk": PK, "#exp": EXPIRES_MS, "#w": _WRITER},
                    "ExpressionAttributeValues": {**now, ":tok": {"S": token}},
                }
            },
            {
                "ConditionCheck": {
                    "TableName": table,
                    "Key": self._key(hop.dynamic),
                    # DynamoDB drops a set attribute that becomes empty.
                    "ConditionExpression": "attribute_not_exists(#m) OR #exp <= :now",
                    "ExpressionAttributeNames": {"#m": _MEMBERS, "#exp": EXPIRES_MS},
                    "ExpressionAttributeValues": now,
                }
            },
        ]

    def _key(self, name: str) -> dict[str, Any]:
        return key(*self._coordination.item_keys([name])[0])

    def _add(self, name: str, members: Iterable[str], ttl: float) -> dict[str, Any]:
        """Add ``members`` to a set, unless it holds an expired item (then ``slow``: the
        generic path replaces it)."""
        attributes = expiry(ttl)
        return {
            "Update": {
                "TableName": self._table.name,
                "Key": self._key(name),
                "UpdateExpression": "ADD #m :m SET #exp = :exp, #at = :at",
                "ConditionExpression": "attribute_not_exists(#pk) OR #exp > :now",
                "ExpressionAttributeNames": {
                    "#m": _MEMBERS,
                    "#exp": EXPIRES_MS,
                    "#at": EXPIRES_AT,
                    "#pk": PK,
                },
                "ExpressionAttributeValues": {
                    ":m": {"SS": sorted(members)},
                    ":exp": attributes[EXPIRES_MS],
                    ":at": attributes[EXPIRES_AT],
                    ":now": {"N": str(now_ms())},
                },
            }
        }

    def _fence(self, name: str, mark: str, token: str, ttl: float) -> dict[str, Any]:
        item = {**self._key(name), _VAL: {"S": mark}, _WRITER: {"S": token}, **expiry(ttl)}
        return {
            "Put": {
                "TableName": self._table.name,
                "Item": item,
                "ConditionExpression": "attribute_not_exists(#pk) OR #exp <= :now OR #w = :tok",
                "ExpressionAttributeNames": {"#pk": PK, "#exp": EXPIRES_MS, "#w": _WRITER},
                "ExpressionAttributeValues": {
                    ":now": {"N": str(now_ms())},
                    ":tok": {"S": token},
                },
            }
        }

    async def _transact(self, items: list[dict[str, Any]]) -> list[int] | None:
        """Run the transaction; None when it committed, else the indexes of the items whose
        conditions failed (a conflict with another transaction is retried here)."""
        client = await self._table.client()
        pause = 0.005
        for _ in range(_ATTEMPTS):
            with translated("dynamodb"):
                try:
                    await client.transact_write_items(TransactItems=cast(Any, items))
                    return None
                except Exception as exc:
                    if error_code(exc) != _CANCELLED:
                        raise
                    codes = _reasons(exc, len(items))
            failed = [i for i, code in enumerate(codes) if code == "ConditionalCheckFailed"]
            if failed:
                return failed
            # Another transaction held one of the items (TransactionConflict): again.
            await asyncio.sleep(pause)
            pause = min(0.2, pause * 2)
        raise _Slow

    # ------------------------------------------------------------------ after the transaction

    async def _settle_joins(
        self, hop: Hop, joins: Sequence[HopTarget]
    ) -> tuple[list[str], list[str]]:
        """Fire the joins the transaction completed; the members fired and found skipped."""
        names = list(dict.fromkeys(t.resolved for t in joins))
        _, resolved = await self._coordination.read([], names)
        marks = dict(zip(names, resolved, strict=True))
        complete = [t for t in joins if set(t.preds) <= marks[t.resolved]]
        fired: list[str] = []
        skipped: list[str] = []
        seen: set[str] = set()
        for target in complete:
            if target.fence in seen:
                continue
            seen.add(target.fence)
            # In the in-flight set before the job counts itself done and before the send,
            # both of which wait for this; the fence need not wait for it.
            _, won = await asyncio.gather(
                self._coordination.add_to_set(hop.enqueued, target.member, hop.ttl),
                self._coordination.set_if_not_exist(target.fence, _FIRED + hop.member, hop.ttl),
            )
            if won:
                fired.append(target.member)
            elif await self._coordination.get(target.fence) == _SKIPPED:
                skipped.append(target.member)
        return fired, skipped

    async def _count_done(self, hop: Hop, skipped: Sequence[str]) -> bool:
        """Count the job (and skipped targets) done; whether the run's frontier is empty."""
        for member in skipped:
            await self._coordination.add_to_set(hop.done, member, hop.ttl)
        done = await self._coordination.add_to_set(hop.done, hop.member, hop.ttl)
        return done >= await self._coordination.add_to_set(hop.enqueued, hop.member, hop.ttl)


def _reasons(exc: BaseException, count: int) -> list[str]:
    """The cancellation reason of each item of a cancelled transaction."""
    reasons = getattr(exc, "response", {}).get("CancellationReasons")
    if isinstance(reasons, list) and len(reasons) == count:
        return [str(r.get("Code", "None")) for r in reasons]
    # Older servers only name them in the message: "... reasons [None, ConditionalCheckFailed]".
    text = str(exc)
    start, end = text.rfind("["), text.rfind("]")
    codes = [c.strip() for c in text[start + 1 : end].split(",")] if 0 <= start < end else []
    return codes if len(codes) == count else ["TransactionConflict"] * count
