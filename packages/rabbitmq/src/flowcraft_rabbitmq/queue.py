"""``RabbitQueue``: jobs on a durable quorum queue, through aio-pika.

Layout (``<q>`` is ``settings.queue_name``):

* ``<q>``: a quorum queue. The broker counts returns (``x-delivery-count``), and dead-letters a
  message returned ``delivery_limit`` times to ``<q>.dead``. Bodies are the job JSON, as the
  TypeScript adapter sends them (persistent, default exchange, routing key ``<q>``).
* ``<q>.dead``: dead letters, with the reason in the ``x-flowcraft-reason`` header (or the
  broker's ``x-first-death-reason``), kept ``dead_letter_ttl_seconds``.
* ``<q>.parked``: parked copies of long jobs (below), dead-lettered back into ``<q>`` when
  their per-message TTL (one lease) runs out.

RabbitMQ has no per-message lease: a delivery is held until it is acked or its channel closes
(a dead worker's connection closes, so its jobs come back at once; a silent peer is found by
the AMQP heartbeat). ``consumer_timeout`` closes a channel whose delivery stays unacked longer,
requeueing everything on it, so a job still running at half of it is *parked*: its holder
declares an exclusive queue ``<q>.hold.<token>`` (it lives exactly as long as the holder's
connection), publishes a copy of the job to ``<q>.parked`` naming that token, and acks the
original. The copy comes back into ``<q>`` every lease; whoever receives it looks the hold
queue up: while it exists the copy goes back to ``<q>.parked``, once it is gone (the job
finished, was released, or its holder died) the copy is a job again. A redelivered job whose
result is stored is only re-routed by core, so a finished job's copy costs one idempotent hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from flowcraft.backend import AdapterError, ConnectionFailed, Delivery, translate_errors
from flowcraft_rabbitmq._claims import Claims, claim_key
from flowcraft_rabbitmq.settings import RabbitSettings

__all__ = ["RabbitQueue"]

_log = logging.getLogger("flowcraft.rabbitmq")

REASON = "x-flowcraft-reason"
HOLDER = "x-flowcraft-holder"
DELIVERIES = "x-flowcraft-deliveries"
"""Deliveries a parked job had before its copy was published (the copy's count starts over)."""

# aiormq queues at most FRAME_BUFFER_SIZE (10) outgoing frames per connection, and a publish
# that finds the queue full waits for room holding its channel's lock: under a burst (a client
# starting thousands of runs, a worker publishing many jobs' successors) publishes then go out
# one per event-loop turn, and waited up to 30 s for the lock in the 2,000-wait test. The
# frames are built before they are queued, so a longer queue holds only what the publishing
# tasks hold anyway; raised, never lowered, for every aiormq connection of the process.
aiormq.Connection.FRAME_BUFFER_SIZE = max(aiormq.Connection.FRAME_BUFFER_SIZE, 4096)

_PUBLISH_TIMEOUT = 30.0
"""How long a publish keeps trying while the broker is away, before it fails."""
_CONFIRM_TIMEOUT = 10.0
"""How long one attempt waits for the broker's confirm before it publishes again: right after
a broker restart a confirm was seen never to come (the whole publish timed out, the restart
test failed once in four). Well above the slowest confirm seen under load (4.3 s, 2,000 starts
at once from one client)."""
_RECONNECT_PAUSE = 0.05
_RECONNECT_PAUSE_MAX = 1.0
_SETTLE_TIMEOUT = 5.0
_translated = translate_errors(
    "rabbitmq",
    retryable=(
        ConnectionError,
        OSError,
        TimeoutError,
        aio_pika.exceptions.AMQPConnectionError,
        aiormq.exceptions.ChannelInvalidStateError,
    ),
    errors=(aio_pika.exceptions.AMQPError,),
)


@dataclass(slots=True)
class _Held:
    """What a :class:`Delivery` handle holds.

    Attributes:
        message: The delivery that vouches for the job: its own, or (a successor reserved by
            a hop, :meth:`RabbitQueue.reserve`) the predecessor's, kept unacked until the
            successor is settled.
        body: The job's body.
        received: When ``message`` was received (it is parked past half the consumer timeout).
        claim: The job's claim key.
        parked: The hold token once parked.
        passed: Whether ``message`` now vouches for a successor reserved from this job (that
            one settles it; this one gives up its claim only).
    """

    message: AbstractIncomingMessage
    body: bytes
    received: float
    claim: int
    parked: str | None = None
    passed: bool = False


class RabbitQueue:
    """A :class:`~flowcraft.backend.Queue` on RabbitMQ; one connection per adapter.

    Args:
        settings: Broker URL, queue name, limits.
        prefetch: Unacked deliveries held at once (the worker's concurrency).
    """

    def __init__(self, settings: RabbitSettings, *, prefetch: int = 16) -> None:
        self.settings = settings
        self.name = settings.queue_name
        self.prefetch = settings.prefetch or prefetch
        self._park_after = settings.consumer_timeout_seconds / 2
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer: str | None = None
        self._buffer: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._redelivery_delay = settings.redelivery_delay_seconds
        self._delayed: dict[AbstractIncomingMessage, asyncio.TimerHandle] = {}
        self._connecting: asyncio.Future[AbstractRobustChannel] | None = None
        self._closed = False
        """Abandoned: everything is a no-op from then on, as in a killed process."""
        self._later: set[asyncio.Task[None]] = set()
        self._claims = Claims(settings)
        self._dropping: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ connection

    async def _open(self) -> AbstractRobustChannel:
        if self._channel is not None:
            return self._channel
        if self._closed:
            raise AdapterError("rabbitmq queue was abandoned")
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            # Shielded: a receive cancelled by a stopping worker must not leave aio-pika's
            # connection tasks half-made; close() finishes and closes the connection.
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _connect(self) -> AbstractRobustChannel:
        async with _translated:
            url = self.settings.amqp_url
            connection = await aio_pika.connect_robust(
                url,
                # aio-pika's pause between reconnect attempts is 5 s unless the URL sets
                # ``reconnect_interval``: a restarted broker is used again within a second.
                reconnect_interval=(
                    None if "reconnect_interval" in parse_qs(urlsplit(url).query) else 1.0
                ),
                heartbeat=self.settings.heartbeat_seconds,
                client_properties={"connection_name": self.settings.client_name},
            )
            try:
                channel = await connection.channel(publisher_confirms=True)
                await channel.set_qos(prefetch_count=self.prefetch)
                await self._declare(channel)
            except BaseException:
                await connection.close()
                raise
        self._connection = connection
        self._channel = channel
        return channel

    async def _declare(self, channel: AbstractRobustChannel) -> None:
        dead = f"{self.name}.dead"
        self._queue = await channel.declare_queue(
            self.name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": self.settings.delivery_limit,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": dead,
            },
        )
        await channel.declare_queue(
            dead,
            durable=True,
            arguments={"x-message-ttl": self.settings.dead_letter_ttl_seconds * 1000},
        )
        await channel.declare_queue(
            f"{self.name}.parked",
            durable=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": self.name},
        )

    async def _publish(
        self,
        routing_key: str,
        body: bytes,
        headers: dict[str, Any] | None = None,
        expiration: float | None = None,
    ) -> None:
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=headers,
            expiration=expiration,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _PUBLISH_TIMEOUT
        pause = _RECONNECT_PAUSE
        while True:
            try:
                timeout = min(deadline - loop.time(), _CONFIRM_TIMEOUT)
                await self._publish_once(routing_key, message, timeout)
                return
            except ConnectionFailed:
                # The broker is away (restarting, or the connection dropped): the robust
                # connection reconnects by itself, and the publish goes again once it is back.
                # A publish whose confirm was lost may be stored twice then; core handles a
                # duplicated job, a lost one never comes back.
                if self._closed or loop.time() + pause >= deadline:
                    raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, _RECONNECT_PAUSE_MAX)

    async def _publish_once(
        self, routing_key: str, message: aio_pika.Message, timeout: float
    ) -> None:
        channel = await self._open()
        async with _translated:
            # A robust channel is ready once its connection is back and it is restored.
            await asyncio.wait_for(channel.ready(), timeout)
            # aiormq's own channel: its abstract type lacks the ``wait`` argument.
            underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
            # wait=False: a publish holds the channel's lock only while its frames are queued,
            # not until the socket is drained, so concurrent publishes go out together instead
            # of one per event-loop turn; the broker's confirm is still awaited.
            try:
                confirm = await underlay.basic_publish(
                    message.body,
                    routing_key=routing_key,
                    properties=message.properties,
                    timeout=timeout,
                    wait=False,
                )
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                # Nobody cancelled this task: aiormq rejects the pending confirms of a
                # connection whose reader it cancelled (heartbeat missed, socket lost) with
                # CancelledError. The message may or may not be stored; it counts as not
                # stored and goes again once the robust connection is back.
                raise ConnectionFailed("rabbitmq connection lost before the confirm") from None
        if not isinstance(confirm, aiormq.spec.Basic.Ack):
            # A nack: the broker did not store it (a quorum queue without a leader, as while
            # it recovers after a restart).
            raise ConnectionFailed(f"rabbitmq refused to store a message ({confirm!r})")

    async def declare(self) -> None:
        """Connect and declare the queues now (idempotent; the first publish or receive does
        it otherwise). A deployment declares them before it relies on them: RabbitMQ 3.10
        records a new quorum queue's Raft member on disk only within about 3 s of its
        declaration (docs/rabbitmq.md), so a node killed sooner comes back with a queue that
        never has a leader."""
        await self._open()

    @property
    def connected(self) -> bool:
        """Whether the queue holds an open connection to the broker."""
        connection = self._connection
        return connection is not None and not connection.is_closed

    # ------------------------------------------------------------------ the protocol

    async def enqueue(self, body: str) -> None:
        """Publish a job and wait for the broker's confirm (it is stored then)."""
        await self._publish(self.name, body.encode())

    async def enqueue_many(self, bodies: list[str]) -> None:
        """Publish jobs and wait for all their confirms at once."""
        if bodies:
            await asyncio.gather(*(self._publish(self.name, body.encode()) for body in bodies))

    async def receive(self, max_jobs: int, wait: float) -> list[Delivery]:
        """Up to ``max_jobs`` deliveries pushed by the broker, waiting up to ``wait`` s."""
        await self._consume()
        deadline = time.monotonic() + wait
        out: list[Delivery] = []
        while not out:
            remaining = deadline - time.monotonic()
            try:
                message = (
                    self._buffer.get_nowait()
                    if not self._buffer.empty() or remaining <= 0
                    else await asyncio.wait_for(self._buffer.get(), remaining)
                )
            except (TimeoutError, asyncio.QueueEmpty):
                return []
            batch = [message]
            while len(batch) < max_jobs and not self._buffer.empty():
                batch.append(self._buffer.get_nowait())
            admitted = [m for m in batch if await self._admit(m)]
            if not admitted:
                continue
            keys = [claim_key(self.name, m.body) for m in admitted]
            try:
                claimed = await self._claims.claim(keys)
            except ConnectionFailed:
                for m in admitted:
                    with contextlib.suppress(Exception):
                        await m.nack(requeue=True)
                raise
            for message, key, mine in zip(admitted, keys, claimed, strict=True):
                if not mine:
                    _log.info("dropping a copy of a job that a live worker holds")
                    await _settle(message, "ack")
                    continue
                headers = message.headers or {}
                count = _int(headers.get("x-delivery-count")) + 1 + _int(headers.get(DELIVERIES))
                body = message.body.decode(errors="replace")
                held = _Held(message, message.body, time.monotonic(), key)
                out.append(Delivery(body, held, count))
        return out

    async def _consume(self) -> None:
        if self._consumer is not None:
            return
        await self._open()
        assert self._queue is not None
        async with _translated:
            self._consumer = await self._queue.consume(self._arrived)

    async def _arrived(self, message: AbstractIncomingMessage) -> None:
        if not message.redelivered or self._redelivery_delay <= 0:
            self._buffer.put_nowait(message)
            return
        # Handed back by the broker (its holder died or let go): other queues redeliver after
        # a lease, this one at once, so a job that kills its worker would kill the next one
        # straight away. It waits a little first.
        buffer = self._buffer

        def due() -> None:
            self._delayed.pop(message, None)
            buffer.put_nowait(message)

        loop = asyncio.get_running_loop()
        self._delayed[message] = loop.call_later(self._redelivery_delay, due)

    async def _admit(self, message: AbstractIncomingMessage) -> bool:
        """Whether the message is a job to run: not when its channel closed meanwhile, nor
        when it is a parked copy whose holder lives (it goes back to ``<q>.parked``)."""
        if _closed(message):
            # The broker requeued it when the channel closed.
            return False
        headers = message.headers or {}
        count = _int(headers.get("x-delivery-count")) + 1 + _int(headers.get(DELIVERIES))
        holder = headers.get(HOLDER)
        if isinstance(holder, str) and await self._holder_alive(holder):
            try:
                await self._publish(
                    f"{self.name}.parked",
                    message.body,
                    {HOLDER: holder, DELIVERIES: count - 1},
                    self.settings.lease_seconds,
                )
                await message.ack()
            except Exception as exc:
                _log.warning("could not park a held job's copy again (%s)", exc)
                with contextlib.suppress(Exception):
                    await message.nack(requeue=True)
            return False
        return True

    async def _holder_alive(self, token: str) -> bool:
        connection = self._connection
        if connection is None:
            return False
        # A passive declare of another connection's exclusive queue fails with RESOURCE_LOCKED
        # and of a missing one with NOT_FOUND; both close the channel, so it is a throwaway.
        try:
            probe = await connection.channel(publisher_confirms=False)
        except Exception:
            return False
        try:
            await probe.declare_queue(f"{self.name}.hold.{token}", passive=True)
            return True
        except aiormq.exceptions.ChannelLockedResource:
            return True
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):
                await probe.close()

    async def ack(self, delivery: Delivery) -> None:
        """Ack a handled job (a parked one: drop its hold, its copy is then a plain job)."""
        held = _held(delivery)
        if held is not None and not self._closed:
            await self._settle(held, "ack")

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Publish the job to ``<q>.dead`` with ``reason``, then ack it."""
        held = _held(delivery)
        if held is None or self._closed:
            return
        headers = {REASON: reason[:4000], "x-delivery-count": delivery.delivery_count}
        await self._publish(f"{self.name}.dead", held.body, headers)
        await self._settle(held, "ack")

    async def release(self, delivery: Delivery) -> None:
        """Hand the job back now (a parked one: its copy comes back within a lease)."""
        held = _held(delivery)
        if held is not None and not self._closed:
            await self._settle(held, "requeue")

    async def _settle(self, held: _Held, how: str) -> None:
        if held.passed:
            pass  # its message vouches for the successor reserved from it now
        elif held.parked is not None:
            await self._unhold(held.parked)
        else:
            await _settle(held.message, how)
        # Released only once settled: a copy arriving meanwhile is still dropped.
        self._claims.release(held.claim)

    async def reserve(self, delivery: Delivery, body: str) -> Delivery | None:
        """``body``, a successor that ``delivery``'s hop fired, as a delivery for this worker
        to run next instead of publishing it; None when it cannot be (publish it then).

        RabbitMQ cannot lease a message that is not on the queue, so the predecessor's
        delivery stands in: it stays unacked until the successor is settled (acked with it,
        handed back with it). Should the worker die meanwhile, the broker redelivers the
        predecessor, whose stored result core routes again: every successor whose fence names
        it is published then. The successor is claimed like a received job, so a copy of it
        (from the reconciler) is dropped while it runs.
        """
        held = _held(delivery)
        if (
            held is None
            or held.parked is not None
            or held.passed
            or self._closed
            or _closed(held.message)
        ):
            return None
        data = body.encode()
        key = claim_key(self.name, data)
        try:
            (mine,) = await self._claims.claim([key])
        except AdapterError:
            return None
        if not mine:
            return None
        held.passed = True
        return Delivery(body, _Held(held.message, data, held.received, key))

    def unreserve(self, delivery: Delivery, successor: Delivery) -> None:
        """Undo :meth:`reserve` (the successor is to be published after all)."""
        held, reserved = _held(delivery), _held(successor)
        if held is not None and reserved is not None:
            held.passed = False
            self._claims.release(reserved.claim)

    async def unsettled(self, delivery: Delivery, lease: float) -> None:
        """Hand the job back after ``lease`` seconds, as an unrenewed lease would."""

        async def later() -> None:
            await asyncio.sleep(lease)
            with contextlib.suppress(Exception):
                await self.release(delivery)

        task = asyncio.ensure_future(later())
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    async def extend_lease(self, delivery: Delivery, seconds: float) -> None:
        """Nothing while the delivery is young (the broker holds it until the channel
        closes); past half the consumer timeout, park it."""
        held = _held(delivery)
        if (
            held is None
            or held.parked is not None
            or held.passed
            or time.monotonic() - held.received < self._park_after
        ):
            return
        if _closed(held.message):
            return
        token = uuid.uuid4().hex
        channel = await self._open()
        async with _translated:
            await channel.declare_queue(f"{self.name}.hold.{token}", exclusive=True)
        await self._publish(
            f"{self.name}.parked",
            held.body,
            {HOLDER: token, DELIVERIES: delivery.delivery_count},
            self.settings.lease_seconds,
        )
        await _settle(held.message, "ack")
        held.parked = token

    async def _unhold(self, token: str) -> None:
        channel = self._channel
        if channel is None:
            return
        with contextlib.suppress(Exception):
            async with _translated:
                await channel.queue_delete(f"{self.name}.hold.{token}")

    async def stop_receiving(self) -> None:
        """Cancel the consumer and hand back what was prefetched but not received."""
        consumer, self._consumer = self._consumer, None
        if self._closed:
            return
        if consumer is not None and self._queue is not None:
            # A robust channel waits for its connection; a broker that is down must not keep
            # a stopping worker (the broker requeues what it holds when the connection drops).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._queue.cancel(consumer), _SETTLE_TIMEOUT)
        waiting = [self._buffer.get_nowait() for _ in range(self._buffer.qsize())]
        for message, handle in list(self._delayed.items()):
            handle.cancel()
            waiting.append(message)
        self._delayed.clear()
        for message in waiting:
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)

    def abandon(self) -> None:
        """Drop the connections without settling anything: the broker requeues what it held
        and PostgreSQL ends the claims' session."""
        self._closed = True
        for task in self._later:
            task.cancel()
        self._claims.drop()
        connection, self._connection = self._connection, None
        self._dropping = asyncio.ensure_future(self._drop(connection))

    async def _drop(self, connection: AbstractRobustConnection | None) -> None:
        with contextlib.suppress(Exception):
            await self._claims.close()
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    async def close(self) -> None:
        """Close the connection (unacked deliveries go back to the queue); a later call
        opens a new one."""
        for task in list(self._later):
            if not task.done():
                task.cancel()
        for pending in (self._dropping, self._connecting):
            if pending is not None:
                with contextlib.suppress(Exception):
                    await pending
        self._dropping = self._connecting = None
        connection, self._connection = self._connection, None
        self._channel = self._queue = None
        self._consumer = None
        self._buffer = asyncio.Queue()
        for handle in self._delayed.values():
            handle.cancel()
        self._delayed.clear()
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()
        with contextlib.suppress(Exception):
            await self._claims.close()


def _held(delivery: Delivery) -> _Held | None:
    # Deliveries made by hand (tests, a redelivery simulated by core) hold no message.
    handle = delivery.handle
    return handle if isinstance(handle, _Held) else None


def _closed(message: AbstractIncomingMessage) -> bool:
    return bool(getattr(message.channel, "is_closed", False))


async def _settle(message: AbstractIncomingMessage, how: str) -> None:
    if _closed(message):
        # The broker requeued it when the channel closed; it comes back, and core's handling
        # of a redelivered job is idempotent.
        _log.info("delivery's channel closed before it was settled; the broker requeued it")
        return
    try:
        async with _translated:
            if how == "ack":
                await message.ack()
            else:
                await message.nack(requeue=True)
    except ConnectionFailed:
        if not _closed(message):
            raise


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0
