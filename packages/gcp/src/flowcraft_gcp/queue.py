"""``PubSubQueue``: jobs on a Pub/Sub topic, received from its subscription by unary pulls.

Driver: the library's asyncio GAPIC clients (``SubscriberAsyncClient``,
``PublisherAsyncClient`` on grpc.aio), not the streaming-pull ``SubscriberClient``: that one
runs callbacks in threads with a leaser of its own that renews every held message until it
is acked or nacked, while core leases each job through its heartbeat and must be able to let a
job's lease lapse. The measured comparison is in ``docs/gcp.md``.

* **Flow control = the worker's free slots.** One pull at a time asks for at most the slots
  the worker offered; a pull that outlives the receive's ``wait`` is not cancelled (on the real
  service a cancelled pull may still have been handed messages) and its messages are handed out
  by the next receive. So no more jobs are held than the worker can run.
* **Lease = ack deadline.** A job starts leased for the subscription's ack deadline (at least
  10 s); when the lease is another length, the pulled batch's deadline is set to it at once.
  Before its first pull a queue runs ``warm_up`` (the adapter connects its Firestore client):
  a worker still setting up connections while holding jobs on a short lease would lose them.
  ``extend_lease`` is ``modifyAckDeadline`` (whole seconds, clamped to 1-600).
* **Delivery count** is Pub/Sub's ``delivery_attempt``, set because the subscription has a
  dead-letter policy; on a subscription created without one it is counted in the
  coordination store instead, per message id.
* **Dead letters**: ``dead_letter`` publishes the body to ``<topic>-dead`` with a ``reason``
  attribute, then acks; Pub/Sub itself forwards a job delivered ``max_delivery_attempts``
  times there (attribute ``CloudPubSubDeadLetterSourceDeliveryCount``). Operators read them
  from the subscription ``<subscription>-dead`` (a topic without one would drop them).
* **One live holder per job** (``_claims.py``): each pulled job is claimed in Redis first; a
  copy of a job another message holds is acked unrun, a delivery of a message whose claim
  another delivery holds is handed back until that claim would expire.
* Acks, lease changes and publishes of one tick go out as one request each (``_batch.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import grpc
from google.api_core import exceptions as google_errors
from google.pubsub_v1 import PubsubMessage, ReceivedMessage
from google.pubsub_v1.services.publisher import PublisherAsyncClient
from google.pubsub_v1.services.subscriber import SubscriberAsyncClient

from flowcraft.backend import CoordinationStore, Delivery
from flowcraft_gcp._batch import Coalescer
from flowcraft_gcp._claims import Claim, Claims
from flowcraft_gcp._errors import pubsub_errors
from flowcraft_gcp.settings import MIN_SUBSCRIPTION_DEADLINE, GcpSettings, ack_seconds

__all__ = ["REASON", "PubSubQueue"]

REASON = "reason"
"""The attribute of a dead letter that says why it was dead-lettered."""
_MAX_ATTRIBUTE = 1024
"""Pub/Sub's limit on an attribute value, in bytes."""
_MAX_RETENTION = 7 * 86_400
"""The longest message retention of a subscription."""
_PUBLISH_LIMIT = 1000
_ACK_LIMIT = 2500
_log = logging.getLogger("flowcraft.gcp")

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class _Held:
    """A delivery's handle: its ack id and the claim it holds (None: claims are off)."""

    ack_id: str
    claim: Claim | None


class PubSubQueue:
    """A :class:`~flowcraft.backend.Queue` on a Pub/Sub topic and subscription.

    Args:
        settings: Topic, subscription, lease and retention.
        counter: Where delivery counts are kept when the subscription has no dead-letter
            policy (Pub/Sub then sets no ``delivery_attempt``).
        warm_up: Run once before the first pull (connections the jobs will need).
        claims: Where each pulled job is claimed, so that no two copies run at once.
    """

    def __init__(
        self,
        settings: GcpSettings,
        *,
        counter: CoordinationStore | None = None,
        warm_up: Callable[[], Awaitable[None]] | None = None,
        claims: Claims | None = None,
    ) -> None:
        self._settings = settings
        self._counter = counter
        self._warm_up = warm_up
        self._claims = claims
        self._lease = settings.ack_deadline
        self._publisher: PublisherAsyncClient | None = None
        self._subscriber: SubscriberAsyncClient | None = None
        self._ready = False
        self._setup_lock: asyncio.Lock | None = None
        self._subscription_deadline = self._lease
        self._counts_attempts = True
        self._pull: asyncio.Task[list[Delivery]] | None = None
        self._buffer: deque[Delivery] = deque()
        self._abandoned = False
        self._publishes: Coalescer[str, PubsubMessage] = Coalescer(self._publish, _PUBLISH_LIMIT)
        self._acks: Coalescer[str, str] = Coalescer(self._acknowledge, _ACK_LIMIT)
        self._deadlines: Coalescer[int, str] = Coalescer(self._modify, _ACK_LIMIT)

    # Setup

    def _clients(self) -> tuple[PublisherAsyncClient, SubscriberAsyncClient]:
        # Created on first use, in the running loop: grpc.aio channels belong to one loop.
        if self._publisher is None or self._subscriber is None:
            self._publisher = PublisherAsyncClient()
            self._subscriber = SubscriberAsyncClient()
        return self._publisher, self._subscriber

    async def _ensure(self) -> None:
        if self._ready:
            return
        if self._setup_lock is None:
            self._setup_lock = asyncio.Lock()
        async with self._setup_lock:
            if not self._ready:
                async with pubsub_errors:
                    await self._setup()
                if self._warm_up is not None:
                    await self._warm_up()
                    self._warm_up = None
                self._ready = True

    async def _setup(self) -> None:
        publisher, subscriber = self._clients()
        s = self._settings
        retention = timedelta(seconds=min(s.retention_seconds, _MAX_RETENTION))
        if s.create:
            for topic in (s.topic_path, s.dead_letter_topic_path):
                with contextlib.suppress(google_errors.AlreadyExists):
                    await publisher.create_topic(name=topic)
            # Created before the first publish too (a client may publish before any worker
            # has started): Pub/Sub drops messages published to a topic without subscriptions.
            with contextlib.suppress(google_errors.AlreadyExists):
                await subscriber.create_subscription(
                    request={
                        "name": s.subscription_path,
                        "topic": s.topic_path,
                        "ack_deadline_seconds": max(MIN_SUBSCRIPTION_DEADLINE, self._lease),
                        "message_retention_duration": retention,
                        "dead_letter_policy": {
                            "dead_letter_topic": s.dead_letter_topic_path,
                            "max_delivery_attempts": s.max_delivery_attempts,
                        },
                    }
                )
            with contextlib.suppress(google_errors.AlreadyExists):
                await subscriber.create_subscription(
                    request={
                        "name": s.dead_letter_subscription_path,
                        "topic": s.dead_letter_topic_path,
                        "message_retention_duration": retention,
                    }
                )
        subscription = await subscriber.get_subscription(subscription=s.subscription_path)
        self._subscription_deadline = subscription.ack_deadline_seconds
        self._counts_attempts = bool(subscription.dead_letter_policy.dead_letter_topic)

    async def _call(self, call: Callable[[], Awaitable[R]]) -> R:
        """``call()`` with errors translated; after NotFound (the topic or subscription was
        deleted, or expired unused) they are made again and the call retried once."""
        await self._ensure()
        async with pubsub_errors:
            try:
                return await call()
            except google_errors.NotFound:
                if not self._settings.create:
                    raise
            self._ready = False
        await self._ensure()
        async with pubsub_errors:
            return await call()

    # Receiving

    async def receive(self, max_jobs: int, wait: float) -> list[Delivery]:
        """Up to ``max_jobs`` jobs, waiting up to ``wait`` s for the pull in flight."""
        if not self._buffer:
            if self._pull is None:
                self._pull = asyncio.ensure_future(self._pull_batch(max_jobs))
            pull = self._pull
            # asyncio.wait leaves the pull running when the wait (or this call) ends first.
            await asyncio.wait({pull}, timeout=wait)
            if not pull.done():
                return []
            self._pull = None
            if pull.cancelled():
                return []
            self._buffer.extend(pull.result())
        count = min(max_jobs, len(self._buffer))
        return [self._buffer.popleft() for _ in range(count)]

    async def _pull_batch(self, max_jobs: int) -> list[Delivery]:
        _, subscriber = self._clients()
        path = self._settings.subscription_path

        async def pull() -> Any:
            try:
                # No client retries: a failed pull is the worker's to retry, with back-off.
                return await subscriber.pull(
                    request={"subscription": path, "max_messages": max_jobs},
                    timeout=self._settings.pull_timeout,
                    retry=None,
                )
            except google_errors.DeadlineExceeded:
                return None  # the queue stayed empty for the whole pull

        response = await self._call(pull)
        received: list[ReceivedMessage] = list(response.received_messages) if response else []
        if not received:
            return []
        ids = [m.ack_id for m in received]

        async def lease() -> None:
            # Before the jobs are handed out, so no release can overtake it.
            if self._lease != self._subscription_deadline:
                await self._call(
                    lambda: subscriber.modify_ack_deadline(
                        subscription=path, ack_ids=ids, ack_deadline_seconds=self._lease
                    )
                )

        claims: list[Claim | None] = [None] * len(received)
        if self._claims is None:
            await lease()
        else:
            claims = [
                self._claims.of(bytes(m.message.data), m.message.message_id, m.ack_id)
                for m in received
            ]
            (received, claims), _ = await asyncio.gather(self._sort_out(received, claims), lease())
        return [
            Delivery(
                bytes(m.message.data).decode("utf-8", "replace"),
                _Held(m.ack_id, claim),
                m.delivery_attempt or await self._count(m.message.message_id),
            )
            for m, claim in zip(received, claims, strict=True)
        ]

    async def _sort_out(
        self, received: list[ReceivedMessage], claims: list[Claim | None]
    ) -> tuple[list[ReceivedMessage], list[Claim | None]]:
        """The pulled jobs whose claims this process won; the others acked or handed back."""
        assert self._claims is not None
        try:
            verdicts = await self._claims.take([c for c in claims if c is not None])
        except BaseException:
            # Not handed out: back to the queue at once, for whoever can claim them.
            with contextlib.suppress(Exception):
                await self._modify(0, [m.ack_id for m in received])
            raise
        kept: list[ReceivedMessage] = []
        kept_claims: list[Claim | None] = []
        copies: list[str] = []
        later: dict[int, list[str]] = {}
        for m, claim, verdict in zip(received, claims, verdicts, strict=True):
            if verdict.mine:
                kept.append(m)
                kept_claims.append(claim)
            elif verdict.copy:
                copies.append(m.ack_id)
            else:
                later.setdefault(ack_seconds(verdict.retry_in), []).append(m.ack_id)
        if copies:
            _log.info("dropping %d copies of jobs that other deliveries hold", len(copies))
        settling = [self._acks.add(self._settings.subscription_path, i) for i in copies]
        settling += [self._deadlines.add(s, i) for s, ids in later.items() for i in ids]
        await asyncio.gather(*settling)
        return kept, kept_claims

    async def _count(self, message_id: str) -> int:
        if self._counts_attempts or self._counter is None:
            return 1
        key = f"pubsub-deliveries:{self._settings.subscription}:{message_id}"
        return await self._counter.increment(key, self._settings.retention_seconds)

    # Settling

    async def enqueue(self, body: str) -> None:
        """Publish a job; Pub/Sub has stored it when this returns."""
        await self._publishes.add(self._settings.topic_path, PubsubMessage(data=body.encode()))

    async def _publish(self, topic: str, messages: list[PubsubMessage]) -> None:
        publisher, _ = self._clients()
        await self._call(lambda: publisher.publish(topic=topic, messages=messages))

    async def ack(self, delivery: Delivery) -> None:
        """Acknowledge a handled job and give its claim up."""
        held = delivery.handle
        if isinstance(held, _Held) and not self._abandoned:
            await asyncio.gather(
                self._acks.add(self._settings.subscription_path, held.ack_id), self._unclaim(held)
            )

    async def _unclaim(self, held: _Held) -> None:
        if held.claim is not None and self._claims is not None and not self._abandoned:
            await self._claims.release(held.claim)

    async def _acknowledge(self, subscription: str, ack_ids: list[str]) -> None:
        _, subscriber = self._clients()
        await self._call(lambda: subscriber.acknowledge(subscription=subscription, ack_ids=ack_ids))

    async def _modify(self, seconds: int, ack_ids: list[str]) -> None:
        _, subscriber = self._clients()
        path = self._settings.subscription_path
        await self._call(
            lambda: subscriber.modify_ack_deadline(
                subscription=path, ack_ids=ack_ids, ack_deadline_seconds=seconds
            )
        )

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Publish the job to the dead-letter topic with ``reason``, then ack it."""
        text = reason.encode()[:_MAX_ATTRIBUTE].decode("utf-8", "ignore")
        message = PubsubMessage(data=delivery.body.encode(), attributes={REASON: text})
        await self._publishes.add(self._settings.dead_letter_topic_path, message)
        await self.ack(delivery)

    async def release(self, delivery: Delivery) -> None:
        """Hand a job back now (ack deadline 0) and give its claim up."""
        held = delivery.handle
        if isinstance(held, _Held) and not self._abandoned:
            await asyncio.gather(self._deadlines.add(0, held.ack_id), self._unclaim(held))

    async def unsettled(self, delivery: Delivery, lease: float) -> None:
        """Give the claim up; the job comes back when its ack deadline runs out (nothing
        renews it but the heartbeat)."""
        held = delivery.handle
        if isinstance(held, _Held):
            await self._unclaim(held)

    async def extend_lease(self, delivery: Delivery, seconds: float) -> None:
        """Set the job's ack deadline ``seconds`` from now (whole seconds, 1-600), and renew
        its claim."""
        held = delivery.handle
        if not isinstance(held, _Held) or self._abandoned:
            return
        renewals = [self._deadlines.add(ack_seconds(seconds), held.ack_id)]
        if held.claim is not None and self._claims is not None:
            renewals.append(self._claims.renew(held.claim))
        await asyncio.gather(*renewals)

    async def stop_receiving(self) -> None:
        """Stop the pull in flight and hand back jobs pulled but not handed out."""
        pull, self._pull = self._pull, None
        if pull is not None:
            # A message the server handed to this pull as it was cancelled comes back after
            # the subscription's ack deadline.
            pull.cancel()
            with contextlib.suppress(BaseException):
                await pull
        held = [d.handle for d in self._buffer if isinstance(d.handle, _Held)]
        self._buffer.clear()
        if held and not self._abandoned:
            await self._modify(0, [h.ack_id for h in held])
            await asyncio.gather(*(self._unclaim(h) for h in held))

    def abandon(self) -> None:
        """Stop pulling and never ack, renew or release again, as a killed process."""
        self._abandoned = True
        if self._pull is not None:
            self._pull.cancel()
            self._pull = None
        self._buffer.clear()
        for coalescer in (self._acks, self._deadlines):
            coalescer.cancel()

    # Connections

    def connections(self) -> int:
        """Open gRPC connections (one per client whose channel is connected)."""
        return sum(
            _connected(client.transport)
            for client in (self._publisher, self._subscriber)
            if client is not None
        )

    async def close(self) -> None:
        """Stop pulling and close both channels; safe to call twice."""
        if self._pull is not None:
            self._pull.cancel()
            with contextlib.suppress(BaseException):
                await self._pull
            self._pull = None
        publisher, subscriber = self._publisher, self._subscriber
        self._publisher = self._subscriber = None
        self._ready = False
        for client in (publisher, subscriber):
            if client is not None:
                await _close(client.transport)


def _connected(transport: Any) -> bool:
    # The grpc.aio transports have a channel; the base transport types do not declare it.
    return bool(transport.grpc_channel.get_state() == grpc.ChannelConnectivity.READY)


async def _close(transport: Any) -> None:
    await transport.close()
