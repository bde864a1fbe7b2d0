"""A context value near the documented maximum (docs/rabbitmq.md, Limits) round-trips."""

from __future__ import annotations

import uuid

import psycopg
from psycopg import sql

from flowcraft_rabbitmq import PostgresContextStore, RabbitSettings
from flowcraft_rabbitmq._pg import Pool

NEAR_MAX = 255 * 2**20
"""Characters of the string: ``jsonb`` holds a string of up to 2^28 - 1 bytes (256 MB)."""


async def test_a_value_near_the_jsonb_maximum_round_trips(database_url: str) -> None:
    settings = RabbitSettings(database_url=database_url).namespaced(f"lv{uuid.uuid4().hex[:10]}")
    pool = Pool(settings)
    context = PostgresContextStore(pool)
    big = "v" * (NEAR_MAX - 2) + "é"
    try:
        await context.set("run", "big", big)
        assert await context.get("run", "big") == big
        assert await context.get_many("run", ["big", "missing"]) == {"big": big}
    finally:
        await pool.close()
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            schema = sql.Identifier(settings.schema)
            await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema))
