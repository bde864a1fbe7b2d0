"""``ScriptsClient``: bullmq's connection, with its Lua scripts sent on a pipelined connection.

bullmq's worker runs each job's life cycle as Lua scripts (moveToActive, moveToFinished,
extendLocks, moveStalledJobsToWait ...) called through redis-py, whose machinery per command
(pool checkout, retry wrapper, instrumentation, one socket write each) cost about as much
client CPU as the rest of a hop. This client sends those calls (``EVALSHA``) through a
:class:`~._batch.Batcher` instead, so they share batches and a :class:`~._wire.Wire`; every
other command, blocking ones included, takes redis-py's own path on the client's pool.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError

from flowcraft_redis_store.batch import Batcher
from flowcraft_redis_store.settings import RedisSettings, clone_pool

__all__ = ["ScriptsClient"]


class ScriptsClient(aioredis.Redis):
    """A ``redis.asyncio.Redis`` for bullmq's ``connection`` option (it decodes replies, as
    bullmq's own client does): connections of its own to where ``client``'s go, with the
    reconnect policy of ``settings``."""

    def __init__(self, client: aioredis.Redis, settings: RedisSettings) -> None:
        retry = settings.retry()
        pool = clone_pool(
            client,
            decode_responses=True,
            retry=retry,
            retry_on_error=[BusyLoadingError, ConnectionError, TimeoutError],
        )
        super().__init__(connection_pool=pool)
        self.auto_close_connection_pool = True
        self._scripts = Batcher(self, retry)

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if args[0] == "EVALSHA" and not options and self._scripts.pipelined:
            # An error reply (NOSCRIPT included, which redis-py's Script handles by loading
            # the script) is raised as redis-py would raise it.
            return (await self._scripts.run([args]))[0]
        return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        self._scripts.close()
        await super().aclose(close_connection_pool)
