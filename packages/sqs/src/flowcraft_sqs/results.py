"""``SqsResultChannel``: result wakes pushed to one reply queue per waiting process.

A process that waits on runs creates its own SQS reply queue on its first wait and registers
it as an item of the table (``pk = <prefix>l#<queue>``, one item per listener, TTL
``REGISTRATION_SECONDS``, refreshed every third of that). ``publish`` reads the live
registrations (one strongly consistent query) and sends the run id to each reply queue; the
listener long-polls its queue and wakes core's result waiter, which reads the result from the
table, the source of truth. A wake is lost by no one: the waiter re-reads the stores after its
registration is stored, and a publisher reads the registrations after the result is.

``close`` deletes the registration and the queue. A killed process's registration expires
by itself; its queue is deleted by the next listener to start once it is older than a
registration's lifetime with none naming it, and meanwhile keeps wakes for at most
``MessageRetentionPeriod`` (60 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from flowcraft.backend import AdapterError, Woken
from flowcraft.result import WorkflowResult
from flowcraft_sqs.batch import Batcher
from flowcraft_sqs.clients import Clients, error_code, translated
from flowcraft_sqs.table import SK, Table, expiry, key

__all__ = ["REGISTRATION_SECONDS", "SqsResultChannel"]

_log = logging.getLogger("flowcraft.sqs")

REGISTRATION_SECONDS = 120
"""Lifetime of a listener's registration without a refresh."""
_URL = "url"
_RETRY = 1.0


class SqsResultChannel:
    """A :class:`~flowcraft.backend.ResultChannel` over per-process SQS reply queues."""

    def __init__(self, clients: Clients, table: Table) -> None:
        self._clients = clients
        self._table = table
        settings = clients.settings
        self._registry = f"{settings.key_prefix}l#{settings.queue}"
        self._queue_prefix = f"{settings.queue[:60]}-reply-"
        self._id = uuid.uuid4().hex
        self._url: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wakes: dict[str, Batcher[str]] = {}

    async def publish(self, run_id: str, result: WorkflowResult | None) -> None:
        """Send ``run_id`` to every live listener's reply queue."""
        listeners = await self._table.query(self._registry, projection=[_URL])
        if not listeners:
            return
        client = await self._clients.sqs()
        await asyncio.gather(
            *(self._wake(client, item[_URL]["S"], item[SK]["S"], run_id) for item in listeners)
        )

    async def _wake(self, client: Any, url: str, listener: str, run_id: str) -> None:
        wakes = self._wakes.get(url)
        if wakes is None:
            wakes = self._wakes[url] = Batcher(functools.partial(self._send_wakes, client, url))
        try:
            await wakes.submit(run_id)
        except Exception as exc:
            if not _gone(exc.__cause__ or exc):
                raise
            # Its process closed or died since it registered.
            self._wakes.pop(url, None)
            await self._unregister(listener)

    async def _send_wakes(
        self, client: Any, url: str, run_ids: Sequence[str]
    ) -> list[BaseException | None]:
        """One ``SendMessageBatch`` of wakes (a thousand runs ending at once cost a hundred
        requests per listener, not a thousand)."""
        entries = [{"Id": str(i), "MessageBody": run_id} for i, run_id in enumerate(run_ids)]
        with translated("sqs"):
            reply = await client.send_message_batch(QueueUrl=url, Entries=entries)
        out: list[BaseException | None] = [None] * len(run_ids)
        for failure in reply.get("Failed", []):
            message = f"sqs error sending a wake: {failure.get('Code')}: {failure.get('Message')}"
            out[int(failure["Id"])] = AdapterError(message)
        return out

    async def listen(self, woken: Woken) -> None:
        """Create and register this process's reply queue, then wake ``woken`` from it."""
        if self._url is not None:
            return
        client = await self._clients.sqs()
        name = self._queue_prefix + self._id
        with translated("sqs"):
            reply = await client.create_queue(
                QueueName=name,
                Attributes={"MessageRetentionPeriod": "60", "VisibilityTimeout": "30"},
            )
        self._url = url = reply["QueueUrl"]
        await self._register()
        self._tasks = [
            asyncio.ensure_future(self._poll(url, woken)),
            asyncio.ensure_future(self._refresh(woken)),
            asyncio.ensure_future(self._sweep()),
        ]

    async def _register(self) -> None:
        client = await self._table.client()
        item = {
            **key(self._registry, self._id),
            _URL: {"S": self._url},
            **expiry(REGISTRATION_SECONDS),
        }
        with translated("dynamodb"):
            await client.put_item(TableName=self._table.name, Item=item)

    async def _unregister(self, listener: str) -> None:
        client = await self._table.client()
        with translated("dynamodb"):
            await client.delete_item(TableName=self._table.name, Key=key(self._registry, listener))

    async def _poll(self, url: str, woken: Woken) -> None:
        client = await self._clients.sqs()
        wait = self._clients.settings.wait_seconds
        failed = False
        while True:
            try:
                with translated("sqs"):
                    reply = await client.receive_message(
                        QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=wait
                    )
                    messages = reply.get("Messages", [])
                    if failed:
                        # Wakes sent while the queue was out of reach may be lost.
                        failed = False
                        woken(None)
                    for message in messages:
                        woken(message.get("Body") or None)
                    if messages:
                        await client.delete_message_batch(
                            QueueUrl=url,
                            Entries=[
                                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                                for i, m in enumerate(messages)
                            ],
                        )
            except Exception as exc:
                _log.warning("reading result wakes failed (%s); retrying", exc)
                failed = True
                await asyncio.sleep(_RETRY)

    async def _refresh(self, woken: Woken) -> None:
        lapsed = False
        while True:
            await asyncio.sleep(REGISTRATION_SECONDS / 3)
            try:
                await self._register()
            except Exception as exc:
                _log.warning("refreshing the result listener failed (%s)", exc)
                lapsed = True
                continue
            if lapsed:
                # The registration may have expired: publishers skipped this process.
                lapsed = False
                woken(None)

    async def _sweep(self) -> None:
        """Delete reply queues of dead processes (old, and named by no registration)."""
        try:
            client = await self._clients.sqs()
            live = {item[SK]["S"] for item in await self._table.query(self._registry)}
            with translated("sqs"):
                reply = await client.list_queues(QueueNamePrefix=self._queue_prefix)
                for url in reply.get("QueueUrls", []):
                    if url.rsplit("-", 1)[-1] in live:
                        continue
                    attributes = await client.get_queue_attributes(
                        QueueUrl=url, AttributeNames=["CreatedTimestamp"]
                    )
                    created = int(attributes["Attributes"].get("CreatedTimestamp", "0"))
                    if time.time() - created > 2 * REGISTRATION_SECONDS:
                        with contextlib.suppress(Exception):
                            await client.delete_queue(QueueUrl=url)
        except Exception as exc:
            _log.info("could not sweep stale reply queues (%s)", exc)

    async def close(self) -> None:
        """Stop listening, unregister and delete the reply queue; safe to call twice."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        url, self._url = self._url, None
        if url is None:
            return
        with contextlib.suppress(Exception):
            await self._unregister(self._id)
        with contextlib.suppress(Exception):
            client = await self._clients.sqs()
            await client.delete_queue(QueueUrl=url)


def _gone(exc: BaseException) -> bool:
    code = error_code(exc)
    return "NonExistentQueue" in code or code == "QueueDoesNotExist"
