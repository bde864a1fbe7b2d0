"""``KafkaQueue``: jobs on a Kafka topic, consumed by a consumer group, committed in order.

Polling runs in a thread of its own and never waits for nodes: fetched messages go into a
buffer the worker receives from, and the partitions pause while the buffer is full. So
``max.poll.interval.ms`` is never approached by a long node, and the jobs of one partition
(all jobs of a run share its id as key) run concurrently. A partition's offset is committed up
to its first job not yet acked, so nothing after an unfinished job is committed and a crash
redelivers from there (core absorbs the jobs that were done).

Kafka has no per-message lease and no delivery count; this queue keeps both:

* Lease: a received job is held by this process until acked, released or its lease (renewed
  by core's heartbeat through :meth:`KafkaQueue.extend_lease`) runs out; then this process
  hands it out again. A crashed process's partitions go to the other workers after the
  group's session timeout, from the last committed offset. A partition revoked from a live
  worker (a rebalance) waits for its running jobs first, so a job is never run by two live
  workers.
* Group protocol: KIP-848's (``group.protocol=consumer``) where the broker has it and lets
  the group have the session timeout and heartbeat of the settings (a group config the queue
  sets), so that a crash costs the same bounded time with either protocol; else the classic
  protocol, with the reason logged.
* Delivery count: a Redis counter per ``(topic, partition, offset)`` incremented at every
  hand-out, so a job whose worker keeps dying reaches core's ``max_deliveries``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

# confluent_kafka.admin re-exports these without an __all__ that names them.
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)
from confluent_kafka.cimpl import NewTopic

from flowcraft.backend import AdapterError, ConnectionFailed, Delivery
from flowcraft_kafka.settings import KafkaSettings
from flowcraft_redis_store import Batcher, Command, translated

__all__ = ["KafkaQueue"]

_log = logging.getLogger("flowcraft.kafka")
REASON_HEADER = "flowcraft-reason"
"""The dead-letter header naming why a job was rejected."""
SOURCE_HEADER = "flowcraft-source"
"""The dead-letter header naming where the job was: ``topic/partition/offset``."""
ORIGIN_HEADER = "flowcraft-origin"
"""Marks the jobs this backend produces; a job without it (a TypeScript client's start job)
has its run adopted first (see :class:`KafkaQueue`)."""
_Headers = list[tuple[str, str | bytes | None]]
_OWN: _Headers = [(ORIGIN_HEADER, b"python")]
_POLL = 0.1
"""Seconds one poll waits: how soon an idle consumer commits, pauses or stops."""
_FETCH_WAIT_MS = 100
"""The longest a fetch waits on the broker for data: the first fetch of a newly assigned
partition (at start and after every rebalance) waits this long even when jobs arrive in the
meantime; librdkafka's 500 ms default delayed each worker's first job by about that much."""
_RECONNECT_MAX_MS = 1000
"""librdkafka's default backs off up to 10 s: a broker back after a restart would wait that
long for its clients."""
_GROUP_SESSION = "consumer.session.timeout.ms"
_GROUP_HEARTBEAT = "consumer.heartbeat.interval.ms"
"""A group's own KIP-848 settings, between the broker's ``group.consumer.min.*`` and
``group.consumer.max.*`` (45 s and 5 s at least by default)."""
_ADMIN_TIMEOUT = 30.0
_CONFIG_PROPAGATION = 5.0
"""The longest a joining member waits for the brokers to apply the group's new configs."""
_UNREACHABLE = {
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._MSG_TIMED_OUT,
    KafkaError._TIMED_OUT,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
}


def _error(error: KafkaError | None, what: str) -> Exception:
    if error is not None and (error.code() in _UNREACHABLE or error.retriable()):
        return ConnectionFailed(f"kafka unreachable: {what}: {error.str()}")
    return AdapterError(f"kafka error: {what}: {error.str() if error else 'unknown'}")


class _Partition:
    """One assigned partition: its fetched offsets in order, until revoked."""

    __slots__ = ("committed", "entries", "live", "partition", "position", "topic")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.entries: collections.deque[_Entry] = collections.deque()
        self.live = True
        self.position: int | None = None
        """The offset after the last contiguous done one."""
        self.committed: int | None = None

    def advance(self) -> None:
        while self.entries and self.entries[0].done:
            self.position = self.entries.popleft().offset + 1

    def holding(self) -> bool:
        return any(e.handed and not e.done for e in self.entries)

    def commit_position(self) -> int | None:
        if self.entries:
            return self.entries[0].offset
        return self.position


class _Entry:
    """One fetched message."""

    __slots__ = ("deadline", "done", "handed", "key", "offset", "own", "part", "value")

    def __init__(self, message: Message, part: _Partition) -> None:
        self.part = part
        self.offset: int = message.offset() or 0
        self.key: bytes | None = message.key()
        self.value: bytes | None = message.value()
        headers = message.headers() or []
        names = headers.keys() if isinstance(headers, dict) else [h[0] for h in headers]
        self.own = ORIGIN_HEADER in names
        """Produced by this backend (see :data:`ORIGIN_HEADER`)."""
        self.done = False
        self.handed = False
        self.deadline = 0.0

    @property
    def source(self) -> str:
        return f"{self.part.topic}/{self.part.partition}/{self.offset}"


class KafkaQueue:
    """A :class:`~flowcraft.backend.Queue` on a Kafka topic and consumer group.

    A job without the :data:`ORIGIN_HEADER` was produced by someone else, a TypeScript client
    starting a run; before the first such job of a run is handed out, ``adopt(run_id)`` is
    awaited once (a Redis mark, set after it, says it was), which imports that run's context.

    Args:
        settings: Names and connection settings.
        batcher: The Redis batch the delivery counters join.
        lease: Seconds a received job is held without renewal.
        adopt: Prepares a foreign run for this backend's workers; None: no such runs.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        batcher: Batcher,
        *,
        lease: float,
        adopt: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._settings = settings
        self._adopt = adopt
        self._batcher = batcher
        self._lease = lease
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._ready: collections.deque[_Entry] = collections.deque()
        self._parts: dict[tuple[str, int], _Partition] = {}
        self._held: set[_Entry] = set()
        self._running: collections.Counter[bytes | None] = collections.Counter()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._topics_ready = False
        self._topics_lock = asyncio.Lock()
        self._producer: Producer | None = None
        self._producer_thread: threading.Thread | None = None
        self._producer_stop = threading.Event()
        self._consumer_thread: threading.Thread | None = None
        self._protocol: str | None = None
        self._consumer_done: asyncio.Future[None] | None = None
        self._stopped = False
        self._closing = False
        self._abandoned = False
        self._counter_prefix = settings.redis.coordination_key(f"kafka-deliveries:{settings.topic}")
        # librdkafka's idempotent producer asks for its producer id half a second after it
        # starts (no broker is up at its first try; librdkafka PR 5032): started with the
        # queue, that wait overlaps the adapter's other setup (Cassandra, the group join)
        # instead of delaying its first job.
        self._start_producer()

    # The producer side

    async def enqueue(self, body: str) -> None:
        """Produce the job keyed by its run id; returns once all in-sync replicas have it."""
        await self._ensure_topics()
        await self._produce(self._settings.topic, body.encode(), _run_key(body), _OWN)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Produce the job to the dead-letter topic with ``reason`` in a header, then ack it."""
        entry = delivery.handle
        headers: _Headers = [(REASON_HEADER, reason.encode())]
        if isinstance(entry, _Entry):
            headers.append((SOURCE_HEADER, entry.source.encode()))
        key = entry.key if isinstance(entry, _Entry) else _run_key(delivery.body)
        await self._ensure_topics()
        await self._produce(self._settings.dead_letters, delivery.body.encode(), key, headers)
        await self.ack(delivery)

    async def _produce(
        self, topic: str, value: bytes, key: bytes | None, headers: _Headers | None
    ) -> None:
        producer = self._start_producer()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        callback = functools.partial(_delivered, loop, done)
        while True:
            try:
                producer.produce(topic, value, key, headers=headers, on_delivery=callback)
                break
            except BufferError:
                # The client's queue is full: let the broker catch up.
                await asyncio.sleep(0.01)
            except KafkaException as exc:
                raise _error(exc.args[0], f"producing to {topic}") from exc
        await done

    def _start_producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(
                {
                    "bootstrap.servers": self._settings.bootstrap_servers,
                    "client.id": self._settings.name,
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": self._settings.linger_ms,
                    # murmur2 for keyed messages, as Java's client and kafkajs partition them.
                    "partitioner": "murmur2_random",
                    "message.timeout.ms": 30_000,
                    "reconnect.backoff.max.ms": _RECONNECT_MAX_MS,
                }
            )
            self._producer_stop = threading.Event()
            self._producer_thread = threading.Thread(
                target=_serve_producer,
                args=(self._producer, self._producer_stop),
                name="kafka-producer",
            )
            self._producer_thread.daemon = True
            self._producer_thread.start()
        return self._producer

    def _admin(self) -> AdminClient:
        settings = self._settings
        return AdminClient(
            {"bootstrap.servers": settings.bootstrap_servers, "client.id": settings.name}
        )

    async def _ensure_topics(self, admin: AdminClient | None = None) -> None:
        if not self._settings.create_schema:
            return
        async with self._topics_lock:
            if self._topics_ready:
                return
            settings = self._settings
            admin = admin or self._admin()
            config = {"retention.ms": str(settings.retention_seconds * 1000)}
            topics = [
                NewTopic(settings.topic, settings.partitions, config=config),
                NewTopic(settings.dead_letters, 1, config=config),
            ]
            futures = admin.create_topics(
                topics, operation_timeout=_ADMIN_TIMEOUT, request_timeout=_ADMIN_TIMEOUT
            )
            for name, future in futures.items():
                try:
                    await asyncio.wrap_future(future)
                except KafkaException as exc:
                    error = exc.args[0]
                    if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise _error(error, f"creating topic {name}") from exc
            self._topics_ready = True

    # The consumer side

    async def receive(self, max_jobs: int, wait: float) -> list[Delivery]:
        """Up to ``max_jobs`` fetched jobs, waiting up to ``wait`` s for one."""
        if self._stopped:
            return []
        await self._start_consumer()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            self._wake.clear()
            taken = self._take(max_jobs)
            if taken:
                return await self._counted(taken)
            remaining = deadline - loop.time()
            if remaining <= 0 or self._stopped:
                return []
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)

    def _take(self, max_jobs: int) -> list[_Entry]:
        now = time.monotonic()
        with self._lock:
            # A job whose lease ran out unrenewed (its handling died without a word) is
            # handed out again; a renewed one stays with its holder.
            expired = [e for e in self._held if e.deadline < now]
            for entry in expired:
                self._unhold(entry)
                if entry.part.live and not entry.done:
                    self._ready.appendleft(entry)
            taken: list[_Entry] = []
            deferred: list[_Entry] = []
            while self._ready and len(taken) < max_jobs:
                entry = self._ready.popleft()
                if entry.done or entry.handed or not entry.part.live:
                    continue
                if self._running[entry.value]:
                    # A copy of a job this process runs now (a redelivered predecessor
                    # enqueued it again): it waits until the copy is settled, then finds the
                    # node's result stored instead of running the node a second time. A run's
                    # jobs share one partition, so no other live worker can hold a copy.
                    deferred.append(entry)
                    continue
                entry.handed = True
                entry.deadline = now + self._lease
                self._held.add(entry)
                self._running[entry.value] += 1
                taken.append(entry)
            self._ready.extendleft(reversed(deferred))
            return taken

    def _unhold(self, entry: _Entry) -> None:
        # The caller holds the lock.
        if entry in self._held:
            self._held.discard(entry)
            self._running[entry.value] -= 1
            if self._running[entry.value] <= 0:
                del self._running[entry.value]
        entry.handed = False

    async def _counted(self, taken: list[_Entry]) -> list[Delivery]:
        commands: list[Command] = []
        ttl = self._settings.retention_seconds
        for entry in taken:
            key = f"{self._counter_prefix}:{entry.part.partition}:{entry.offset}"
            commands += [("INCR", key), ("EXPIRE", key, ttl)]
        foreign = self._foreign_runs(taken)
        commands += [("EXISTS", self._adopted_key(run_id)) for run_id in foreign]
        try:
            async with translated():
                replies = await self._batcher.run(commands)
                fresh = [r for i, r in enumerate(foreign) if not replies[2 * len(taken) + i]]
                if fresh and self._adopt is not None:
                    # Before the run's first job is handed out, so that it finds its context.
                    await asyncio.gather(*(self._adopt(run_id) for run_id in fresh))
                    marks = [("SET", self._adopted_key(r), "1", "EX", ttl) for r in fresh]
                    await self._batcher.run(marks)
        except BaseException:
            # Not handed out after all: back to the buffer, or they would hold their
            # partitions' commits until their lease ran out.
            self._hand_back(taken)
            raise
        return [
            Delivery(_text(entry.value), entry, int(replies[2 * i]))
            for i, entry in enumerate(taken)
        ]

    def _foreign_runs(self, taken: list[_Entry]) -> list[str]:
        # Runs whose jobs came from another producer than this backend (which marks its
        # own): a TypeScript client's start jobs.
        if self._adopt is None:
            return []
        runs: dict[str, None] = {}
        for entry in taken:
            if entry.own:
                continue
            run_id = _run_key(_text(entry.value))
            if run_id is not None:
                runs[run_id.decode()] = None
        return list(runs)

    def _adopted_key(self, run_id: str) -> str:
        return self._settings.redis.coordination_key(f"kafka-adopted:{run_id}")

    def _hand_back(self, entries: Iterable[_Entry]) -> None:
        with self._lock:
            for entry in reversed(list(entries)):
                if entry.handed and not entry.done:
                    self._unhold(entry)
                    if not self._stopped and entry.part.live:
                        self._ready.appendleft(entry)
            self._settled.notify_all()
        self._wake.set()

    async def ack(self, delivery: Delivery) -> None:
        """Mark the job done; its partition's offset is committed once all before it are."""
        entry = delivery.handle
        if not isinstance(entry, _Entry):
            return
        with self._lock:
            self._unhold(entry)
            entry.done = True
            entry.part.advance()
            self._settled.notify_all()
        # A copy of this job may be waiting for it (see _take).
        self._wake.set()

    async def release(self, delivery: Delivery) -> None:
        """Hand the job out again now (a stopping worker leaves it uncommitted for the
        partition's next owner)."""
        if isinstance(delivery.handle, _Entry):
            self._hand_back([delivery.handle])

    async def unsettled(self, delivery: Delivery, lease: float) -> None:
        """Nothing to do: an unrenewed lease runs out by itself (see :meth:`_take`)."""

    async def extend_lease(self, delivery: Delivery, seconds: float) -> None:
        """Keep the job with this process ``seconds`` longer."""
        entry = delivery.handle
        if isinstance(entry, _Entry):
            entry.deadline = time.monotonic() + seconds

    async def stop_receiving(self) -> None:
        """Fetch nothing more; fetched jobs not yet received stay uncommitted."""
        self._stopped = True
        with self._lock:
            self._ready.clear()
            self._settled.notify_all()
        self._wake.set()

    def abandon(self) -> None:
        """Stop polling at once without committing anything more, as a killed process."""
        self._abandoned = True
        self._stopped = True
        self._closing = True
        with self._lock:
            self._settled.notify_all()

    async def close(self) -> None:
        """Commit what is done, leave the group and close the clients; safe to call twice."""
        self._stopped = True
        self._closing = True
        with self._lock:
            self._settled.notify_all()
        if self._consumer_done is not None:
            await asyncio.shield(self._consumer_done)
        producer, self._producer = self._producer, None
        if producer is not None:
            await asyncio.to_thread(producer.flush, 10)
            self._producer_stop.set()
            if self._producer_thread is not None:
                await asyncio.to_thread(self._producer_thread.join)

    @property
    def group_protocol(self) -> str | None:
        """The group protocol the consumer uses (``classic`` or ``consumer``); None before it
        starts."""
        return self._protocol

    async def _start_consumer(self) -> None:
        if self._consumer_started():
            return
        admin = self._admin()
        await self._ensure_topics(admin)
        protocol = await self._choose_protocol(admin)
        if self._consumer_started():
            return
        self._protocol = protocol
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._consumer_done = loop.create_future()
        self._consumer_thread = threading.Thread(
            target=self._consume,
            args=(loop, self._consumer_done, protocol),
            name="kafka-consumer",
        )
        self._consumer_thread.daemon = True
        self._consumer_thread.start()

    def _consumer_started(self) -> bool:
        return self._consumer_thread is not None

    async def _choose_protocol(self, admin: AdminClient) -> str:
        # KIP-848's protocol joins and hands partitions over in a heartbeat, not in two
        # rebalances, but its session timeout is the broker's (45 s by default) unless the
        # group has its own: only with the settings' one is a crash's cost bounded as with
        # the classic protocol.
        wanted = self._settings.group_protocol
        if wanted == "classic":
            return "classic"
        reason = await self._configure_group(admin)
        if reason is None:
            _log.info("group %s: consumer protocol (KIP-848)", self._settings.group_id)
            return "consumer"
        if wanted == "consumer":
            _log.warning(
                "group %s: consumer protocol with the broker's session timeout: %s",
                self._settings.group_id,
                reason,
            )
            return "consumer"
        _log.info("group %s: classic protocol: %s", self._settings.group_id, reason)
        return "classic"

    async def _configure_group(self, admin: AdminClient) -> str | None:
        """Give the group the settings' session timeout and heartbeat interval (KIP-848 group
        configs); None if it has them, else why not."""
        settings = self._settings
        wanted = {
            _GROUP_SESSION: str(settings.session_timeout_ms),
            _GROUP_HEARTBEAT: str(settings.heartbeat_interval_ms),
        }
        group = ConfigResource(ResourceType.GROUP, settings.group_id)
        try:
            protocols = await _broker_protocols(admin)
            if protocols is not None and "consumer" not in protocols.split(","):
                return f"the broker's group.coordinator.rebalance.protocols is {protocols}"
            if await _has_configs(admin, group, wanted):
                return None
            entries = [
                ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
                for name, value in wanted.items()
            ]
            change = ConfigResource(
                ResourceType.GROUP, settings.group_id, incremental_configs=entries
            )
            (altered,) = admin.incremental_alter_configs(
                [change], request_timeout=_ADMIN_TIMEOUT
            ).values()
            await asyncio.wrap_future(altered)
            # The brokers apply a change when its metadata record reaches them: a member
            # joining before that is given the broker's 5 s heartbeat (measured: its first
            # partitions then came 5 s late), so it joins once the change is seen.
            deadline = time.monotonic() + _CONFIG_PROPAGATION
            while not await _has_configs(admin, group, wanted):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(_POLL / 5)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.code() in _UNREACHABLE:
                raise _error(error, "configuring the consumer group") from exc
            return (
                f"the group cannot have a {settings.session_timeout_ms} ms session timeout "
                f"and a {settings.heartbeat_interval_ms} ms heartbeat: {error.str()}"
            )
        return None

    def _consume(
        self, loop: asyncio.AbstractEventLoop, done: asyncio.Future[None], protocol: str
    ) -> None:
        try:
            self._serve_consumer(loop, protocol)
        except Exception:
            _log.exception("the Kafka consumer stopped")
        finally:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, done)

    def _serve_consumer(self, loop: asyncio.AbstractEventLoop, protocol: str) -> None:
        settings = self._settings
        config: dict[str, Any] = {
            "bootstrap.servers": settings.bootstrap_servers,
            "client.id": settings.name,
            "group.id": settings.group_id,
            "group.protocol": protocol,
            "enable.auto.commit": False,
            # A fresh group starts at the first job, not at jobs produced after it joined.
            "auto.offset.reset": "earliest",
            "max.poll.interval.ms": settings.max_poll_interval_ms,
            "enable.partition.eof": False,
            "fetch.wait.max.ms": _FETCH_WAIT_MS,
            "reconnect.backoff.max.ms": _RECONNECT_MAX_MS,
        }
        if protocol == "classic":
            # The consumer protocol refuses these: the broker assigns, and the session and
            # heartbeat are the group's (see _configure_group).
            config["partition.assignment.strategy"] = "cooperative-sticky"
            config["session.timeout.ms"] = settings.session_timeout_ms
            config["heartbeat.interval.ms"] = settings.heartbeat_interval_ms
        consumer = Consumer(config)
        consumer.subscribe(
            [settings.topic],
            on_assign=self._assigned,
            on_revoke=functools.partial(self._revoked, lost=False),
            on_lost=functools.partial(self._revoked, lost=True),
        )
        wake = functools.partial(loop.call_soon_threadsafe, self._wake.set)
        paused = False
        while not self._closing:
            with self._lock:
                full = self._stopped or len(self._ready) >= settings.buffer
                # A stopped queue leaves the group as soon as it runs nothing more, so its
                # partitions go to the other workers rather than stay paused here.
                if self._stopped and not any(p.holding() for p in self._parts.values()):
                    break
            if full or paused:
                # Newly assigned partitions start unpaused: pause them too.
                assignment = consumer.assignment()
                if full:
                    consumer.pause(assignment)
                elif assignment:
                    consumer.resume(assignment)
                paused = full
            message = consumer.poll(_POLL)
            messages = [message] if message is not None else []
            if message is not None and settings.fetch_batch > 1:
                messages += consumer.consume(settings.fetch_batch - 1, 0)
            self._commit(consumer, asynchronous=True)
            if messages and self._arrived(messages):
                with contextlib.suppress(RuntimeError):
                    wake()
        if not self._abandoned:
            self._commit(consumer, asynchronous=False)
        consumer.close()

    def _arrived(self, messages: list[Message]) -> bool:
        any_new = False
        with self._lock:
            for message in messages:
                if message.error() is not None:
                    _log.warning("kafka consumer: %s", message.error())
                    continue
                part = self._parts.get((message.topic() or "", message.partition() or 0))
                if part is None or not part.live:
                    continue
                entry = _Entry(message, part)
                part.entries.append(entry)
                if not self._stopped:
                    self._ready.append(entry)
                    any_new = True
        return any_new

    def _commit(self, consumer: Consumer, *, asynchronous: bool) -> None:
        with self._lock:
            offsets = []
            for part in self._parts.values():
                position = part.commit_position()
                if position is not None and position != part.committed:
                    offsets.append(TopicPartition(part.topic, part.partition, position))
                    part.committed = position
        if offsets:
            _commit(consumer, offsets, asynchronous=asynchronous)

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self._lock:
            for tp in partitions:
                self._parts[(tp.topic, tp.partition)] = _Partition(tp.topic, tp.partition)

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition], *, lost: bool) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        with self._lock:
            parts = [p for key in keys if (p := self._parts.get(key)) is not None]
            if not lost and not self._abandoned:
                # Hand a partition over only once its running jobs are done (bounded), so
                # the next owner does not run them again while they still run here.
                deadline = time.monotonic() + self._settings.drain_seconds
                while any(p.holding() for p in parts) and not self._abandoned:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        _log.warning("handing over partitions with jobs still running")
                        break
                    self._settled.wait(min(left, _POLL))
            offsets = [
                TopicPartition(p.topic, p.partition, position)
                for p in parts
                if (position := p.commit_position()) is not None
            ]
            for part in parts:
                part.live = False
                self._parts.pop((part.topic, part.partition), None)
            for entry in [e for e in self._held if not e.part.live]:
                self._unhold(entry)
            self._ready = collections.deque(e for e in self._ready if e.part.live)
        if offsets and not lost and not self._abandoned:
            _commit(consumer, offsets, asynchronous=False)

    def kafka_connections(self) -> int:
        """The most broker connections this queue's clients hold: each librdkafka client
        keeps one per bootstrap server and one per broker, and a consumer one more to its
        group coordinator (Kafka cannot list a client's connections itself)."""
        servers = len(self._settings.bootstrap_servers.split(","))
        count = 0
        if self._producer is not None:
            count += 2 * servers
        if self._consumer_thread is not None and self._consumer_thread.is_alive():
            count += 2 * servers + 1
        return count


async def _has_configs(
    admin: AdminClient, resource: ConfigResource, wanted: dict[str, str]
) -> bool:
    (future,) = admin.describe_configs([resource], request_timeout=_ADMIN_TIMEOUT).values()
    current = await asyncio.wrap_future(future)
    return all(
        (entry := current.get(name)) is not None and entry.value == value
        for name, value in wanted.items()
    )


async def _broker_protocols(admin: AdminClient) -> str | None:
    """The group protocols a broker offers; None where its configs cannot be read (a
    managed service may refuse): the group's own config then decides."""
    try:
        cluster = await asyncio.wrap_future(admin.describe_cluster(request_timeout=_ADMIN_TIMEOUT))
        broker = ConfigResource(ResourceType.BROKER, str(cluster.nodes[0].id))
        (future,) = admin.describe_configs([broker], request_timeout=_ADMIN_TIMEOUT).values()
        configs = await asyncio.wrap_future(future)
    except KafkaException as exc:
        if exc.args[0].code() in _UNREACHABLE:
            raise
        return None
    entry = configs.get("group.coordinator.rebalance.protocols")
    return None if entry is None else str(entry.value)


def _serve_producer(producer: Producer, stop: threading.Event) -> None:
    # Delivery reports are served here, so the loop never blocks on the client.
    while not stop.is_set():
        producer.poll(_POLL)


def _commit(consumer: Consumer, offsets: list[TopicPartition], *, asynchronous: bool) -> None:
    try:
        if asynchronous:
            consumer.commit(offsets=offsets, asynchronous=True)
        else:
            consumer.commit(offsets=offsets, asynchronous=False)
    except KafkaException as exc:
        # A commit that fails (a rebalance in between) is made again by the next one, or the
        # jobs are redelivered to the partition's next owner and absorbed there.
        _log.debug("kafka commit failed: %s", exc)


def _delivered(
    loop: asyncio.AbstractEventLoop,
    done: asyncio.Future[None],
    error: KafkaError | None,
    message: Message,
) -> None:
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_settle, done, error, message.topic())


def _settle(done: asyncio.Future[None], error: KafkaError | None, topic: str | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(_error(error, f"producing to {topic}"))


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


def _run_key(body: str) -> bytes | None:
    # Jobs of one run share a partition, as the TypeScript adapter keys them.
    try:
        run_id = orjson.loads(body).get("runId")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return run_id.encode() if isinstance(run_id, str) else None


def _text(value: bytes | None) -> str:
    return "" if value is None else value.decode("utf-8", "replace")
