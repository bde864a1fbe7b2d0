"""``StorageQueue``: jobs on an Azure Storage Queue (``azure.storage.queue.aio``).

* **Bodies** are base64 of the job's JSON, as the TypeScript adapter sends them
  (``BinaryBase64EncodePolicy``). Received text is decoded here rather than by the SDK's
  ``BinaryBase64DecodePolicy``, which fails the whole page on one foreign message that is not
  base64: such a message reaches core as it is (plain JSON runs; anything else is
  dead-lettered with its reason, and the worker keeps serving). Messages are at most 64 KiB of
  base64, about 48 KiB of JSON: jobs carry ids, never the context.
* **Lease = visibility timeout.** Get Messages takes up to 32 messages and hides them for the
  lease (whole seconds, at least 1). ``extend_lease`` is Update Message, which answers with a
  new pop receipt that replaces the delivery's old one (the old one no longer deletes or
  updates the message); it asks for two leases, and a lease still longer than one is left
  alone, so a long node costs one Update per lease, not one per heartbeat. A delivery's updates
  and its delete are serialised, so none of them uses a receipt that another just replaced.
* **Delivery count** is the message's ``dequeue_count``, kept by the service.
* **Dead letters** go to ``<queue>-poison`` as base64 JSON ``{"reason", "body", "messageId",
  "dequeueCount", "queue"}``, then the message is deleted.
* **Empty queue**: Storage Queues have no long poll, so an empty queue is polled with capped
  exponential back-off (``poll_min`` doubling to ``poll_max``); a job enqueued in this process
  wakes its receivers at once. A job enqueued by another process waits up to ``poll_max`` on
  an idle worker.
* **Reserved successors** (:class:`~flowcraft.backend.ReservingQueue`): the successor a hop
  leases to its own worker is not sent. The predecessor's message vouches for it: it stays
  unacked, its lease renewed by the successor's heartbeat, and is deleted when the successor
  is acked (released when it is released). Should the worker die, that message comes back,
  and its redelivery routes from its stored result and enqueues the successor: one copy of
  the job, never two. (A Put with the lease as visibility timeout would lease the successor
  too, but on a death it would come back beside the copy the predecessor's redelivery
  enqueues, and the two would run at once.)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from azure.core import exceptions as azure_errors
from azure.storage.queue import BinaryBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from flowcraft.backend import AdapterError, Delivery
from flowcraft_azure._errors import queue_errors
from flowcraft_azure._http import HttpPool
from flowcraft_azure.settings import AzureSettings, visibility_seconds

__all__ = ["MAX_BODY", "MAX_MESSAGE", "StorageQueue"]

MAX_MESSAGE = 64 * 1024
"""The most bytes of (base64) text one message may hold."""
MAX_BODY = MAX_MESSAGE // 4 * 3
"""The longest job body, in UTF-8 bytes, whose base64 fits one message."""
_REASON_MAX = 4096

R = TypeVar("R")

_wakes: dict[str, weakref.WeakSet[StorageQueue]] = {}
"""The receivers of each queue in this process, woken by a local enqueue."""


class _Lease:
    """A received message's id and newest pop receipt; its updates and delete take turns."""

    __slots__ = ("holder", "lock", "message_id", "pop_receipt", "until")

    def __init__(self, message_id: str, pop_receipt: str, until: float) -> None:
        self.message_id = message_id
        self.pop_receipt = pop_receipt
        self.until = until
        """When the message becomes visible again (this process's monotonic clock)."""
        self.lock = asyncio.Lock()
        self.holder: _Lease | _Vouched = self
        """The handle of the delivery that settles the message: the received one, or the
        last successor reserved along a chain of them."""


class _Vouched:
    """A reserved successor's handle: the message of the job that reserved it."""

    __slots__ = ("lease",)

    def __init__(self, lease: _Lease) -> None:
        self.lease = lease


def _lease_of(handle: object) -> _Lease | None:
    if isinstance(handle, _Vouched):
        return handle.lease
    return handle if isinstance(handle, _Lease) else None


def decode_body(text: str) -> str:
    """A message's job body: its base64 decoded, or the text itself when it is not base64 of
    UTF-8 (a foreign producer's message)."""
    try:
        return base64.b64decode(text, validate=True).decode()
    except (binascii.Error, ValueError):
        return text


class StorageQueue:
    """A :class:`~flowcraft.backend.Queue` on an Azure Storage Queue.

    Args:
        settings: Connection string, queue, lease, poll back-off.
        http: The adapter's aiohttp pool for the storage account.
        leases: A pool of its own for lease renewals and releases, so that a heartbeat never
            waits behind the jobs' traffic for a connection (a renewal that came too late
            would hand a live worker's job to another).
    """

    def __init__(self, settings: AzureSettings, http: HttpPool, leases: HttpPool) -> None:
        self._settings = settings
        self._http = http
        self._leases = leases
        self._jobs: QueueClient | None = None
        self._poison: QueueClient | None = None
        self._renewals: QueueClient | None = None
        self._ready = False
        self._setup_lock: asyncio.Lock | None = None
        self._delay = settings.poll_min
        self._next_poll = 0.0
        self._woken: asyncio.Event | None = None
        self._abandoned = False
        self._message_ttl = min(settings.retention_seconds, 7 * 86_400)

    # Setup

    def _client(self, name: str, http: HttpPool | None = None) -> QueueClient:
        return QueueClient.from_connection_string(
            self._settings.connection_string,
            name,
            message_encode_policy=BinaryBase64EncodePolicy(),
            transport=(http or self._http).transport(),
            # Few tries: the worker backs off and retries itself once ConnectionFailed is out.
            retry_total=2,
        )

    def _clients(self) -> tuple[QueueClient, QueueClient]:
        if self._jobs is None or self._poison is None:
            self._jobs = self._client(self._settings.queue)
            self._poison = self._client(self._settings.poison_queue)
        return self._jobs, self._poison

    def _renewer(self) -> QueueClient:
        if self._renewals is None:
            self._renewals = self._client(self._settings.queue, self._leases)
        return self._renewals

    @property
    def url(self) -> str:
        """The job queue's URL."""
        return self._clients()[0].url

    async def _ensure(self) -> None:
        if self._ready:
            return
        if self._setup_lock is None:
            self._setup_lock = asyncio.Lock()
        async with self._setup_lock:
            if not self._ready and self._settings.create:
                async with queue_errors:
                    for client in self._clients():
                        with contextlib.suppress(azure_errors.ResourceExistsError):
                            await client.create_queue()
            self._ready = True

    async def _call(self, call: Callable[[], Awaitable[R]]) -> R:
        """``call()`` with errors translated; after QueueNotFound (the queue was deleted) the
        queues are made again and the call retried once."""
        await self._ensure()
        async with queue_errors:
            try:
                return await call()
            except azure_errors.ResourceNotFoundError as exc:
                if not self._settings.create or _code(exc) != "QueueNotFound":
                    raise
            self._ready = False
        await self._ensure()
        async with queue_errors:
            return await call()

    # Receiving

    def _waiter(self) -> asyncio.Event:
        if self._woken is None:
            self._woken = asyncio.Event()
            _wakes.setdefault(self.url, weakref.WeakSet()).add(self)
        return self._woken

    def _wake(self) -> None:
        self._delay = self._settings.poll_min
        self._next_poll = 0.0
        if self._woken is not None:
            self._woken.set()

    async def receive(self, max_jobs: int, wait: float) -> list[Delivery]:
        """Up to ``max_jobs`` jobs (at most ``batch_size``), polling the queue with back-off
        for up to ``wait`` s while it is empty."""
        if self._abandoned:
            return []
        woken = self._waiter()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        count = max(1, min(max_jobs, self._settings.batch_size))
        while True:
            pause = self._next_poll - loop.time()
            if pause > 0:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return []
                woken.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(pause, remaining))
                if self._next_poll > loop.time():
                    continue  # the wait ran out first
            deliveries = await self._get(count)
            if deliveries:
                self._delay = self._settings.poll_min
                self._next_poll = 0.0
                return deliveries
            self._next_poll = loop.time() + self._delay
            self._delay = min(self._settings.poll_max, self._delay * 2)
            if loop.time() >= deadline:
                return []

    async def _get(self, count: int) -> list[Delivery]:
        jobs, _ = self._clients()
        visibility = self._settings.visibility

        async def get() -> list[Any]:
            started = time.monotonic()
            pages = jobs.receive_messages(
                messages_per_page=count, max_messages=count, visibility_timeout=visibility
            )
            received = [message async for message in pages]
            return [(message, started + visibility) for message in received]

        received = await self._call(get)
        return [
            Delivery(
                decode_body(message.content),
                _Lease(message.id, message.pop_receipt, until),
                message.dequeue_count or 1,
            )
            for message, until in received
        ]

    # Settling

    async def enqueue(self, body: str) -> None:
        """Send a job (base64 of its JSON); the service has stored it when this returns."""
        data = _message_data(body)
        jobs, _ = self._clients()
        await self._call(lambda: jobs.send_message(data, time_to_live=self._message_ttl))
        for queue in list(_wakes.get(self.url, ())):
            queue._wake()

    async def reserve(self, delivery: Delivery, body: str) -> Delivery | None:
        """``body``, a successor of ``delivery``'s hop, leased to this worker on
        ``delivery``'s message, which it acks or releases from now on (see the module
        docstring); None when that message is passed on already or has less than half a
        lease left (the caller enqueues the successor then).

        Nothing is sent: the job becomes a message only if the predecessor's comes back.
        """
        _message_data(body)
        lease = _lease_of(delivery.handle)
        if lease is None or lease.holder is not delivery.handle or self._abandoned:
            return None
        # Its heartbeat starts with its handling: a lease about to run out would hand the
        # predecessor, and through it the successor, to another worker meanwhile.
        if lease.until - time.monotonic() < self._settings.lease_seconds / 2:
            return None
        vouched = _Vouched(lease)
        lease.holder = vouched
        return Delivery(body, vouched, 1)

    def unreserve(self, delivery: Delivery, successor: Delivery) -> None:
        """Undo :meth:`reserve`: ``delivery`` settles its message again. Nothing was sent,
        so nothing is left behind."""
        lease = _lease_of(successor.handle)
        if lease is not None and lease.holder is successor.handle:
            lease.holder = delivery.handle

    async def _settle(
        self,
        delivery: Delivery,
        action: Callable[[_Lease], Awaitable[None]],
        passed: bool = False,
    ) -> None:
        """``action`` on the delivery's message, unless the delivery passed the message on
        to a successor it reserved (and ``passed`` is not set): that successor settles it."""
        lease = _lease_of(delivery.handle)
        if lease is None or self._abandoned:
            return
        if not passed and lease.holder is not delivery.handle:
            return
        async with lease.lock:
            # Abandoned while this waited for the lock: a killed process settles nothing.
            if not self._abandoned:
                await action(lease)

    async def ack(self, delivery: Delivery) -> None:
        """Delete a handled job with its newest pop receipt."""
        await self._settle(delivery, self._delete)

    async def _delete(self, lease: _Lease) -> None:
        jobs, _ = self._clients()
        try:
            await self._call(lambda: jobs.delete_message(lease.message_id, lease.pop_receipt))
        except AdapterError as exc:
            # Gone already, or its lease ran out and another worker holds it (a new receipt):
            # that delivery settles it.
            if not _lease_lost(exc):
                raise

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Send the job to ``<queue>-poison`` with ``reason``, then delete it."""
        lease = _lease_of(delivery.handle)
        record: dict[str, Any] = {
            "reason": reason[:_REASON_MAX],
            "body": delivery.body,
            "messageId": lease.message_id if lease is not None else None,
            "dequeueCount": delivery.delivery_count,
            "queue": self._settings.queue,
        }
        data = orjson.dumps(record)
        if len(data) > MAX_BODY:
            # Keep the reason: the body is cut to what fits.
            over = len(data) - MAX_BODY + 64
            record["body"] = delivery.body.encode()[: max(0, len(delivery.body) - over)].decode(
                "utf-8", "ignore"
            )
            record["truncated"] = True
            data = orjson.dumps(record)
        _, poison = self._clients()
        await self._call(lambda: poison.send_message(data, time_to_live=self._message_ttl))
        await self.ack(delivery)

    async def release(self, delivery: Delivery) -> None:
        """Make a job visible again now (visibility timeout 0)."""

        async def show(lease: _Lease) -> None:
            await self._update(lease, 0)

        await self._settle(delivery, show)

    async def unsettled(self, delivery: Delivery, lease: float) -> None:
        """Nothing to do: the visibility timeout runs out unless the heartbeat renews it."""

    async def extend_lease(self, delivery: Delivery, seconds: float) -> None:
        """Keep the job hidden at least ``seconds`` more; its pop receipt is replaced.

        The Update asks for twice ``seconds`` (whole seconds), and a lease still longer than
        ``seconds`` is left alone: a long node costs one Update per ``seconds`` rather than one
        per heartbeat (three per lease), each sent with a whole lease still to run. The price:
        a dead worker's renewed job comes back up to two leases after its last renewal."""

        async def extend(lease: _Lease) -> None:
            if lease.until - time.monotonic() > seconds:
                return
            await self._update(lease, visibility_seconds(2 * seconds))

        # A job that passed its message on keeps renewing it until its handling ends: its
        # successor's heartbeat starts only then.
        await self._settle(delivery, extend, passed=True)

    async def _update(self, lease: _Lease, seconds: int) -> None:
        jobs = self._renewer()
        started = time.monotonic()
        try:
            updated = await self._call(
                lambda: jobs.update_message(
                    lease.message_id, lease.pop_receipt, visibility_timeout=seconds
                )
            )
        except AdapterError as exc:
            if _lease_lost(exc):
                return  # the message is another delivery's now, or gone
            raise
        if updated.pop_receipt:
            lease.pop_receipt = updated.pop_receipt
        lease.until = started + seconds

    async def stop_receiving(self) -> None:
        """Nothing to hand back: nothing is prefetched (every message received is handed
        out)."""

    def abandon(self) -> None:
        """Never delete, update or receive again, as a killed process."""
        self._abandoned = True
        self._wake()

    async def close(self) -> None:
        """Close both clients (the adapter closes the shared HTTP pool); safe to call twice."""
        jobs, poison, renewals = self._jobs, self._poison, self._renewals
        self._jobs = self._poison = self._renewals = None
        if jobs is not None:
            _wakes.get(jobs.url, weakref.WeakSet()).discard(self)
        self._woken = None
        self._ready = False
        for client in (jobs, poison, renewals):
            if client is not None:
                await client.close()


def _message_data(body: str) -> bytes:
    """``body`` as a message's bytes (the SDK sends their base64); refused when too long."""
    data = body.encode()
    if len(data) > MAX_BODY:
        raise AdapterError(
            f"azure storage queue error: a job body of {len(data)} bytes is over the"
            f" {MAX_BODY} a message can carry (64 KiB of base64)"
        )
    return data


def _code(exc: azure_errors.HttpResponseError) -> str | None:
    return getattr(exc, "error_code", None)


def _lease_lost(exc: AdapterError) -> bool:
    """Whether a delete or update failed because the receipt is no longer the message's: it
    was deleted (404 MessageNotFound), or its visibility timeout ran out and it was received
    again with a new receipt (400 PopReceiptMismatch)."""
    cause = exc.__cause__
    if isinstance(cause, azure_errors.ResourceNotFoundError):
        return True
    return (
        isinstance(cause, azure_errors.HttpResponseError) and _code(cause) == "PopReceiptMismatch"
    )
