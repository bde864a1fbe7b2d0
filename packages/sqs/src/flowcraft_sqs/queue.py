"""``SqsQueue``: jobs on an SQS queue, leased by the visibility timeout.

* A receive long-polls (``WaitTimeSeconds`` up to 20) for up to ten messages. The poll keeps
  running when the worker's shorter ``wait`` ends: what it brings is handed out by the next
  receive, so an empty queue costs one request per ``wait_seconds``, not a busy loop.
* The lease is the visibility timeout. The queue renews every job it received and has not
  settled yet (acked, dead-lettered, released or given back as unsettled) by itself, every
  third of the visibility timeout, with one ``ChangeMessageVisibilityBatch`` per ten jobs:
  a job comes back to the queue only when its worker dies, is cut off, or gives it back.
  Core's lease heartbeat (``extend_lease``) has nothing left to do: it also writes two
  DynamoDB marks per job and does not renew again until they return, so a slow table (DynamoDB
  Local on a loaded machine took over three seconds) let a live worker's job run out its
  lease and run twice. SQS caps a message's invisibility at 12 hours after its first receive:
  renewals stop short of that, the message becomes visible when its last extension runs out,
  and another worker runs the node again (its first stored result wins).
* Acks are ``DeleteMessageBatch`` and sends ``SendMessageBatch`` requests, gathering the
  calls of one event-loop tick.
* The redrive policy moves a job received ``max_receive_count`` times to the dead-letter
  queue; ``dead_letter`` sends a job there itself, with its reason as the message attribute
  ``reason``, then deletes it.
* A job that arrives to find its node's result stored (its first delivery died after the
  result, or lost its lease) re-routes from it and sends again the successors whose fences
  it holds: the first delivery may have sent them already, and such a successor may still be
  queued or running. So those sends are copies: delayed by one visibility timeout and marked
  (message attribute ``copy``), and a marked job is handed out as a redelivery
  (``delivery_count`` at least 2), which core makes wait while another copy of it runs and
  route from its result once stored, instead of running the node a second time beside it.
* Bodies are the TypeScript adapters' plain JSON; the run id also travels as the message
  attribute ``runId``. A FIFO queue deduplicates by a digest of the body (the same job sent
  twice within five minutes, e.g. a successor re-sent by a redelivered job, is kept once); every
  job is a message group of its own, so no job waits behind another.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from flowcraft.backend import AdapterError, Delivery
from flowcraft_sqs.batch import Batcher
from flowcraft_sqs.clients import Clients, error_code, translated

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient
    from types_aiobotocore_sqs.literals import QueueAttributeNameType
    from types_aiobotocore_sqs.type_defs import (
        ChangeMessageVisibilityBatchRequestEntryTypeDef,
        DeleteMessageBatchRequestEntryTypeDef,
        MessageTypeDef,
        SendMessageBatchRequestEntryTypeDef,
    )

__all__ = ["MAX_BODY_BYTES", "Receipt", "SqsQueue", "rerouting"]

_log = logging.getLogger("flowcraft.sqs")

MAX_BODY_BYTES = 262_144
"""SQS's message size limit (body and attributes)."""
VISIBILITY_CAP = 12 * 3600
"""SQS's longest invisibility of a message, counted from its first receive."""
_CAP_MARGIN = 120
"""Seconds short of the cap at which heartbeats stop asking for more."""
_REASON_CHARS = 4096
_COPY = "copy"

_REROUTING: ContextVar[bool] = ContextVar("flowcraft_sqs_rerouting", default=False)


def rerouting(stored: bool) -> None:
    """Tell the queue whether the job handled in the current task found its result stored:
    its sends are then copies (see the module docstring)."""
    _REROUTING.set(stored)


@dataclass(slots=True)
class Receipt:
    """The handle of a received message."""

    receipt: str
    message_id: str
    first_received: float
    """Epoch seconds of the message's first receive (the start of its 12-hour cap)."""
    warned: bool = False


@dataclass(frozen=True, slots=True)
class _Send:
    body: str
    run_id: str | None
    dedup: str | None
    copy: bool


class SqsQueue:
    """A :class:`~flowcraft.backend.Queue` on an SQS queue with a dead-letter queue."""

    def __init__(self, clients: Clients) -> None:
        self._clients = clients
        self.settings = clients.settings
        self._urls: asyncio.Future[tuple[str, str]] | None = None
        self._poll: asyncio.Task[list[Delivery]] | None = None
        self._buffer: list[Delivery] = []
        self._sends: Batcher[_Send] = Batcher(self._send_batch)
        self._deletes: Batcher[Receipt] = Batcher(self._delete_batch)
        self._leases: Batcher[tuple[Receipt, int]] = Batcher(self._lease_batch)
        self._held: dict[str, Receipt] = {}
        """Received and not settled yet, by receipt handle: what :meth:`_keep` renews."""
        self._keeper: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------------- the queues

    async def _client(self) -> tuple[SQSClient, str, str]:
        """The client, the job queue's URL and the dead-letter queue's URL."""
        client = await self._clients.sqs()
        if self._urls is None or (self._urls.done() and self._urls.exception() is not None):
            self._urls = asyncio.ensure_future(self._ensure(client))
        url, dead = await asyncio.shield(self._urls)
        return client, url, dead

    async def urls(self) -> tuple[str, str]:
        """The job queue's and dead-letter queue's URLs (created when missing and allowed)."""
        _, url, dead = await self._client()
        return url, dead

    async def _ensure(self, client: SQSClient) -> tuple[str, str]:
        settings = self.settings
        fifo: dict[QueueAttributeNameType, str] = {"FifoQueue": "true"} if settings.fifo else {}
        retention = str(min(settings.retention_seconds, 14 * 86_400))
        dead = await self._queue(
            client, settings.dead_letter_queue_name, {**fifo, "MessageRetentionPeriod": retention}
        )
        with translated("sqs"):
            arn = (await client.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"]))[
                "Attributes"
            ]["QueueArn"]
        redrive = orjson.dumps(
            {"deadLetterTargetArn": arn, "maxReceiveCount": settings.max_receive_count}
        ).decode()
        attributes: dict[QueueAttributeNameType, str] = {
            **fifo,
            "MessageRetentionPeriod": retention,
            "VisibilityTimeout": str(settings.visibility),
            "RedrivePolicy": redrive,
        }
        return await self._queue(client, settings.queue_name, attributes), dead

    async def _queue(
        self, client: SQSClient, name: str, attributes: dict[QueueAttributeNameType, str]
    ) -> str:
        with translated("sqs"):
            try:
                return (await client.get_queue_url(QueueName=name))["QueueUrl"]
            except Exception as exc:
                if not self.settings.create or not _missing(exc):
                    raise
            return (await client.create_queue(QueueName=name, Attributes=attributes))["QueueUrl"]

    # -------------------------------------------------------------------------- receive

    async def receive(self, max_jobs: int, wait: float) -> list[Delivery]:
        if not self._buffer:
            if self._poll is None:
                self._poll = asyncio.ensure_future(self._fetch(min(10, max(1, max_jobs))))
            done, _ = await asyncio.wait({self._poll}, timeout=max(0.0, wait))
            if not done:
                return []
            poll, self._poll = self._poll, None
            self._buffer = poll.result()
        out, self._buffer = self._buffer[:max_jobs], self._buffer[max_jobs:]
        return out

    async def _fetch(self, count: int) -> list[Delivery]:
        client, url, _ = await self._client()
        with translated("sqs"):
            reply = await client.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=count,
                WaitTimeSeconds=self.settings.wait_seconds,
                VisibilityTimeout=self.settings.visibility,
                MessageSystemAttributeNames=[
                    "ApproximateReceiveCount",
                    "ApproximateFirstReceiveTimestamp",
                ],
                MessageAttributeNames=[_COPY],
            )
        deliveries = [_delivery(m) for m in reply.get("Messages", [])]
        self._hold(deliveries)
        return deliveries

    # -------------------------------------------------------------------------- enqueue

    async def enqueue(self, body: str) -> None:
        size = len(body.encode())
        if size > MAX_BODY_BYTES - 1024:
            raise AdapterError(
                f"sqs error: a job body of {size} bytes exceeds SQS's message limit"
                f" ({MAX_BODY_BYTES} bytes with attributes); jobs carry ids, not data"
            )
        if self.settings.fifo:
            # The FIFO queue drops a copy sent within five minutes of the first by itself.
            run_id, dedup = _identity(body)
            await self._sends.submit(_Send(body, run_id, dedup, copy=False))
        else:
            await self._sends.submit(_Send(body, _run_id(body), None, _REROUTING.get()))

    async def _send_batch(self, sends: Sequence[_Send]) -> list[BaseException | None]:
        client, url, _ = await self._client()
        entries: list[SendMessageBatchRequestEntryTypeDef] = []
        for i, send in enumerate(sends):
            entry: SendMessageBatchRequestEntryTypeDef = {"Id": str(i), "MessageBody": send.body}
            attributes = _attributes(runId=send.run_id) if send.run_id else {}
            if send.copy:
                attributes.update(_attributes(**{_COPY: "1"}))
                entry["DelaySeconds"] = self.settings.visibility
            if attributes:
                entry["MessageAttributes"] = attributes
            if send.dedup is not None:
                entry["MessageDeduplicationId"] = send.dedup
                entry["MessageGroupId"] = send.dedup
            entries.append(entry)
        with translated("sqs"):
            reply = await client.send_message_batch(QueueUrl=url, Entries=entries)
        return _outcomes(len(sends), reply.get("Failed", []), "sending a job")

    # ------------------------------------------------------------------------ settling

    async def ack(self, delivery: Delivery) -> None:
        # A delivery this queue did not receive (built by hand) has nothing to settle.
        if isinstance(delivery.handle, Receipt):
            # Unheld first: a renewal sent after the delete would only fail.
            self._unhold(delivery)
            await self._deletes.submit(delivery.handle)

    async def _delete_batch(self, receipts: Sequence[Receipt]) -> list[BaseException | None]:
        client, url, _ = await self._client()
        entries: list[DeleteMessageBatchRequestEntryTypeDef] = [
            {"Id": str(i), "ReceiptHandle": r.receipt} for i, r in enumerate(receipts)
        ]
        with translated("sqs"):
            reply = await client.delete_message_batch(QueueUrl=url, Entries=entries)
        # A receipt that is no longer valid means the job was handed to another worker
        # after its lease ran out: that delivery will settle it.
        failed = [f for f in reply.get("Failed", []) if f.get("Code") != "ReceiptHandleIsInvalid"]
        return _outcomes(len(receipts), failed, "deleting a job")

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        client, url, dead = await self._client()
        receipt = delivery.handle if isinstance(delivery.handle, Receipt) else None
        self._unhold(delivery)
        attributes = _attributes(reason=reason[:_REASON_CHARS] or "unknown")
        run_id = _run_id(delivery.body)
        if run_id:
            attributes.update(_attributes(runId=run_id))
        extra: dict[str, Any] = {}
        if self.settings.fifo:
            # The dead letter's own id: a job dead-lettered twice is kept twice.
            dedup = receipt.message_id if receipt is not None else _identity(delivery.body)[1]
            extra = {"MessageGroupId": dedup, "MessageDeduplicationId": dedup}
        with translated("sqs"):
            await client.send_message(
                QueueUrl=dead,
                MessageBody=delivery.body or "(empty body)",
                MessageAttributes=attributes,
                **extra,
            )
            if receipt is not None:
                await client.delete_message(QueueUrl=url, ReceiptHandle=receipt.receipt)

    async def release(self, delivery: Delivery) -> None:
        if isinstance(delivery.handle, Receipt):
            self._unhold(delivery)
            await self._leases.submit((delivery.handle, 0))

    async def unsettled(self, delivery: Delivery, lease: float) -> None:
        """No longer renewed: the visibility timeout runs out and the job comes back."""
        self._unhold(delivery)

    async def extend_lease(self, delivery: Delivery, seconds: float) -> None:
        """Nothing to do: the queue renews what it handed out (see the module docstring)."""

    # ------------------------------------------------------------------------- leases

    def _hold(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            if isinstance(delivery.handle, Receipt):
                self._held[delivery.handle.receipt] = delivery.handle
        if self._held and self._keeper is None:
            self._keeper = asyncio.ensure_future(self._keep())

    def _unhold(self, delivery: Delivery) -> None:
        if isinstance(delivery.handle, Receipt):
            self._held.pop(delivery.handle.receipt, None)

    async def _keep(self) -> None:
        """Renew the visibility of every held job each third of the visibility timeout."""
        period = self.settings.visibility / 3
        loop = asyncio.get_running_loop()
        due = loop.time() + period
        try:
            while self._held:
                await asyncio.sleep(max(0.0, due - loop.time()))
                # A round slower than the period is followed at once, not a period later.
                due = loop.time() + period
                renewals = [(r, s) for r in self._held.values() if (s := self._extension(r))]
                outcomes = await asyncio.gather(
                    *(self._leases.submit(renewal) for renewal in renewals),
                    return_exceptions=True,
                )
                failed = [o for o in outcomes if isinstance(o, Exception)]
                if failed:
                    # Retried at the next tick: one lost request costs a third of the lease.
                    _log.warning("renewing %d job lease(s) failed: %s", len(failed), failed[0])
        finally:
            if self._keeper is asyncio.current_task():
                self._keeper = None

    def _extension(self, receipt: Receipt) -> int | None:
        """The visibility to renew ``receipt`` with; None once SQS's 12-hour cap is too near."""
        left = receipt.first_received + VISIBILITY_CAP - _CAP_MARGIN - time.time()
        wanted = self.settings.visibility
        if left >= wanted:
            return wanted
        if not receipt.warned:
            receipt.warned = True
            _log.warning(
                "job %s has been leased for nearly SQS's 12-hour cap: its lease is no"
                " longer extended, and another worker will run it again",
                receipt.message_id,
            )
        return int(left) if left >= 1 else None

    async def _lease_batch(
        self, leases: Sequence[tuple[Receipt, int]]
    ) -> list[BaseException | None]:
        # One round renews every job a worker holds at once: one request per ten jobs.
        client, url, _ = await self._client()
        entries: list[ChangeMessageVisibilityBatchRequestEntryTypeDef] = [
            {"Id": str(i), "ReceiptHandle": r.receipt, "VisibilityTimeout": seconds}
            for i, (r, seconds) in enumerate(leases)
        ]
        with translated("sqs"):
            reply = await client.change_message_visibility_batch(QueueUrl=url, Entries=entries)
        failed = []
        for failure in reply.get("Failed", []):
            if _settled(failure.get("Code", "")):
                # Deleted or handed out again meanwhile: there is nothing left to lease.
                self._held.pop(leases[int(failure["Id"])][0].receipt, None)
            else:
                failed.append(failure)
        return _outcomes(len(leases), failed, "changing a job's visibility")

    async def stop_receiving(self) -> None:
        poll, self._poll = self._poll, None
        if poll is not None:
            poll.cancel()
            with contextlib.suppress(BaseException):
                await poll
            if not poll.cancelled() and poll.exception() is None:
                self._buffer += poll.result()
        buffered, self._buffer = self._buffer, []
        if buffered:
            await self._release_all(buffered)

    async def _release_all(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            self._unhold(delivery)
        client, url, _ = await self._client()
        for start in range(0, len(deliveries), 10):
            entries: list[ChangeMessageVisibilityBatchRequestEntryTypeDef] = [
                {"Id": str(i), "ReceiptHandle": d.handle.receipt, "VisibilityTimeout": 0}
                for i, d in enumerate(deliveries[start : start + 10])
            ]
            with translated("sqs"):
                await client.change_message_visibility_batch(QueueUrl=url, Entries=entries)

    def abandon(self) -> None:
        poll, self._poll = self._poll, None
        if poll is not None:
            poll.cancel()
        self._buffer = []
        # As a killed worker: nothing it held is renewed any more.
        self._held.clear()
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()

    async def close(self) -> None:
        self.abandon()


def _delivery(message: MessageTypeDef) -> Delivery:
    attributes = message.get("Attributes", {})
    first = attributes.get("ApproximateFirstReceiveTimestamp")
    receipt = Receipt(
        message["ReceiptHandle"],
        message.get("MessageId", ""),
        int(first) / 1000 if first else time.time(),
    )
    count = max(1, int(attributes.get("ApproximateReceiveCount", "1")))
    if _COPY in message.get("MessageAttributes", {}):
        count = max(2, count)
    return Delivery(message.get("Body", ""), receipt, count)


def _settled(code: str) -> bool:
    """Whether a receipt's error means its message was deleted or handed out again."""
    return "ReceiptHandleIsInvalid" in code or "MessageNotInflight" in code


def _missing(exc: BaseException) -> bool:
    code = error_code(exc)
    return "NonExistentQueue" in code or code == "QueueDoesNotExist"


def _attributes(**values: str) -> dict[str, Any]:
    return {name: {"DataType": "String", "StringValue": value} for name, value in values.items()}


def _run_id(body: str) -> str | None:
    try:
        run_id = orjson.loads(body).get("runId")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return run_id if isinstance(run_id, str) and run_id else None


def _identity(body: str) -> tuple[str | None, str]:
    """The run id and the FIFO deduplication id of a body: a digest of the whole body, so
    only the same job sent again is dropped (a retry's next attempt, a fallback standing in
    for another primary, a resume differ from it in their bodies)."""
    return _run_id(body), hashlib.sha256(body.encode()).hexdigest()


def _outcomes(count: int, failed: Sequence[Any], doing: str) -> list[BaseException | None]:
    out: list[BaseException | None] = [None] * count
    for failure in failed:
        message = f"sqs error {doing}: {failure.get('Code')}: {failure.get('Message', '')}"
        out[int(failure["Id"])] = AdapterError(message)
    return out
