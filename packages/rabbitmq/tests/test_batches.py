"""Statements queued in one tick go out as one pipelined batch (``Pool.fetch``), and each is
still a transaction of its own: a failing one fails only its caller, the writes around it
commit, and batches on different connections never wait for each other's row locks."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from psycopg import sql

from flowcraft.backend import AdapterError
from flowcraft_rabbitmq import RabbitSettings
from flowcraft_rabbitmq._pg import Pool


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    settings = RabbitSettings(database_url=database_url, pool_size=2).namespaced(
        f"pb{uuid.uuid4().hex[:10]}"
    )
    pool = Pool(settings)
    await pool.fetch("SELECT 1")
    await pool.fetch(pool.query("CREATE TABLE {schema}.t (k text PRIMARY KEY, n int NOT NULL)"))
    try:
        yield pool
    finally:
        await pool.close()
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            schema = sql.Identifier(settings.schema)
            await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema))


async def test_a_failing_statement_fails_only_its_caller(pool: Pool) -> None:
    insert = pool.query("INSERT INTO {schema}.t VALUES (%s, %s) RETURNING k")
    replies = await asyncio.gather(
        pool.fetch(insert, ("a", 1)),
        pool.fetch(insert, ("b", None)),  # NOT NULL
        pool.fetch(insert, ("c", 3)),
        pool.fetch(pool.query("SELECT 1/0")),
        pool.fetch(insert, ("d", 4)),
        return_exceptions=True,
    )
    assert replies[0] == [("a",)] and replies[2] == [("c",)] and replies[4] == [("d",)]
    assert isinstance(replies[1], AdapterError) and "null value" in str(replies[1])
    assert isinstance(replies[3], AdapterError) and "division by zero" in str(replies[3])
    rows = await pool.fetch(pool.query("SELECT k, n FROM {schema}.t ORDER BY k"))
    assert rows == [("a", 1), ("c", 3), ("d", 4)]


async def test_each_statement_of_a_batch_commits_on_its_own(pool: Pool, database_url: str) -> None:
    # One batch: an update, then a statement blocked on a lock the test holds. While it is
    # blocked, the update is committed and its row unlocked (a batch in one transaction
    # would hold the row until the blocked statement ends).
    await pool.fetch(pool.query("INSERT INTO {schema}.t VALUES ('x', 0)"))
    bump = pool.query("UPDATE {schema}.t SET n = n + 1 WHERE k = 'x' RETURNING n")
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(7170399)")
        batch = asyncio.gather(
            pool.fetch(bump), pool.fetch("SELECT pg_advisory_xact_lock(7170399)")
        )
        waiting = (
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = 7170399"
            " AND objsubid = 1 AND NOT granted"
        )
        for _ in range(600):
            if await (await conn.execute(waiting)).fetchone():
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the batch never reached its second statement")
        row = await (
            await conn.execute(
                pool.query("SELECT n FROM {schema}.t WHERE k = 'x' FOR UPDATE NOWAIT")
            )
        ).fetchone()
        assert row == (1,)
        await conn.execute("SELECT pg_advisory_unlock(7170399)")
        assert (await batch)[0] == [(1,)]
