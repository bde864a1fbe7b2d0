"""The batcher's pipelined connection: order, errors, reconnects, database and timeouts; and
bullmq's client, which sends its scripts on it."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from flowcraft_redis import RedisSettings
from flowcraft_redis._scripts_client import ScriptsClient
from flowcraft_redis_store.batch import EAGER_CALLERS, Batcher
from flowcraft_redis_store.wire import _error, wire_for


def batcher(client: aioredis.Redis, retries: int = 3) -> Batcher:
    return Batcher(client, Retry(NoBackoff(), retries))


async def test_commands_of_one_tick_go_in_batches_and_answer_their_callers(
    redis_url: str,
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    batch = batcher(client)
    try:
        replies = await asyncio.gather(
            *(batch.run([("ECHO", f"v{i}"), ("ECHO", f"w{i}")]) for i in range(50))
        )
        assert replies == [[f"v{i}".encode(), f"w{i}".encode()] for i in range(50)]
    finally:
        batch.close()
        await client.aclose()


class _Recording:
    """A connected wire that answers at once and records the size of each batch written."""

    timeout = None

    def __init__(self) -> None:
        self.batches: list[int] = []

    def send(self, commands: list[tuple[object, ...]]) -> asyncio.Future[list[object]]:
        self.batches.append(len(commands))
        future: asyncio.Future[list[object]] = asyncio.get_running_loop().create_future()
        future.set_result([command[1] for command in commands])
        return future

    async def execute(
        self, commands: list[tuple[object, ...]], sent: asyncio.Future[list[object]]
    ) -> list[object]:
        return await sent

    def close(self) -> None:
        pass


async def test_a_batch_goes_out_once_it_holds_enough_callers_the_rest_at_the_end_of_the_tick() -> (
    None
):
    # So Redis works on the first jobs' commands while the worker computes the others'.
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0")  # never connected
    batch = batcher(client)
    wire = _Recording()
    batch._wire = wire  # type: ignore[assignment]
    seen: list[int] = []

    async def caller(i: int) -> list[object]:
        seen.append(len(wire.batches))  # batches written before this caller queued its own
        return await batch.run([("ECHO", f"v{i}")])

    try:
        count = EAGER_CALLERS * 2 + 1
        replies = await asyncio.gather(*(caller(i) for i in range(count)))
        assert replies == [[f"v{i}"] for i in range(count)]
        assert wire.batches == [EAGER_CALLERS, EAGER_CALLERS, 1]
        # All the callers ran in one tick, and the full batches went out in it.
        assert seen == [i // EAGER_CALLERS for i in range(count)]
    finally:
        await client.aclose()


async def test_an_error_reply_fails_only_its_caller(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    batch = batcher(client)
    key = f"wire-{uuid.uuid4().hex}"
    try:
        good, bad = await asyncio.gather(
            batch.run([("SET", key, "1"), ("GET", key)]),
            batch.run([("HGET", key, "field")]),  # a string is not a hash
            return_exceptions=True,
        )
        assert good == [b"OK", b"1"]
        assert isinstance(bad, ResponseError) and "WRONGTYPE" in str(bad)
    finally:
        await client.delete(key)
        batch.close()
        await client.aclose()


async def test_a_killed_connection_is_reopened(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    batch = batcher(client)
    try:
        (own_id,) = await batch.run([("CLIENT", "ID")])
        await client.client_kill_filter(_id=own_id)
        (again,) = await batch.run([("CLIENT", "ID")])
        assert again != own_id
    finally:
        batch.close()
        await client.aclose()


async def test_the_database_of_the_url_is_selected(redis_url: str) -> None:
    base = redis_url.rsplit("/", 1)[0]
    client = aioredis.Redis.from_url(f"{base}/3")
    batch = batcher(client)
    key = f"wire-{uuid.uuid4().hex}"
    try:
        await batch.run([("SET", key, "in-3")])
        assert await client.get(key) == b"in-3"
    finally:
        await client.delete(key)
        batch.close()
        await client.aclose()


async def test_a_socket_timeout_bounds_a_batch(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=0.2)
    batch = batcher(client, retries=0)
    try:
        with pytest.raises(RedisTimeoutError):
            await batch.run([("BLPOP", f"wire-{uuid.uuid4().hex}", "2")])
        assert await batch.run([("ECHO", "after")]) == [b"after"]  # a fresh connection
    finally:
        batch.close()
        await client.aclose()


def test_tls_and_credential_providers_keep_redis_py() -> None:
    tls = aioredis.Redis.from_url("rediss://127.0.0.1:6380/0").connection_pool
    assert wire_for(tls.connection_class, tls.connection_kwargs) is None
    plain = aioredis.Redis.from_url("redis://u:p@127.0.0.1:6380/2").connection_pool
    assert wire_for(plain.connection_class, plain.connection_kwargs) is not None


class _Loading:
    """A wire to a server replaying its data after a restart: it answers LOADING twice."""

    def __init__(self) -> None:
        self.calls = 0

    def send(self, commands: list[tuple[object, ...]]) -> None:
        return None  # as if not connected yet: execute sends

    async def execute(self, commands: list[tuple[object, ...]], sent: None) -> list[object]:
        self.calls += 1
        if self.calls <= 2:
            return [_error("LOADING Redis is loading the dataset in memory") for _ in commands]
        return [b"PONG" for _ in commands]

    def close(self) -> None:
        pass


async def test_a_server_still_loading_is_waited_for_like_a_dropped_connection() -> None:
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0")  # never connected: no wire used
    batch = batcher(client, retries=3)
    loading = _Loading()
    batch._wire = loading  # type: ignore[assignment]
    try:
        assert await batch.run([("PING",)]) == [b"PONG"]
        assert loading.calls == 3
    finally:
        await client.aclose()


def test_error_replies_get_redis_py_classes() -> None:
    assert isinstance(_error("LOADING Redis is loading"), BusyLoadingError)
    assert isinstance(_error("NOSCRIPT No matching script"), NoScriptError)
    assert type(_error("WRONGTYPE Operation against a key")) is ResponseError


async def test_bullmqs_client_sends_scripts_in_batches_and_the_rest_through_redis_py(
    redis_url: str,
) -> None:
    settings = RedisSettings(url=redis_url)
    base = settings.client()
    client = ScriptsClient(base, settings)
    key = f"scripts-{uuid.uuid4().hex}"
    script = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    try:
        assert client._scripts.pipelined
        sent: list[int] = []
        send = client._scripts._wire.send  # type: ignore[union-attr]

        def counting(commands: list[tuple[object, ...]]) -> asyncio.Future[list[object]] | None:
            sent.append(len(commands))
            return send(commands)

        client._scripts._wire.send = counting  # type: ignore[union-attr,method-assign]
        await client.script_flush()
        # The first call meets NOSCRIPT on the wire; redis-py's Script loads it and retries.
        assert await script(keys=[key], args=[1]) == 1
        assert await asyncio.gather(*(script(keys=[key], args=[1]) for _ in range(3))) == [
            2,
            3,
            4,
        ]
        assert sum(sent) == 5 and len(sent) < 5  # the three concurrent calls shared a batch
        # Replies are decoded as bullmq expects; other commands, blocking ones too, work.
        assert await client.get(key) == "4"
        await client.rpush(key + ":list", "x")
        assert await client.blpop([key + ":list"], timeout=1) == (key + ":list", "x")
    finally:
        await client.delete(key, key + ":list")
        await client.aclose()
        await base.aclose()
