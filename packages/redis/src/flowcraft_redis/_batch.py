"""Coalescing the commands of concurrent jobs into one pipeline per event-loop tick.

A worker's jobs arrive in batches (one XREADGROUP) and move in step: they read their run state
in the same tick, and most commit their hop in the same tick. Each redis-py round trip costs a
fixed ~0.1-0.3 ms of client CPU whatever it carries, so sending a tick's commands as one
pipeline is what lets a worker process approach Redis' own speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

__all__ = ["Batcher"]

Queue = Callable[[Pipeline], int]
"""Adds a caller's commands to the pipeline; how many it added."""


class Batcher:
    """Runs the commands queued in one event-loop tick as one non-transactional pipeline.

    Commands of different callers are not atomic together (each caller's script or command is
    atomic on its own), and a failing command fails only its caller.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._pending: list[tuple[Queue, asyncio.Future[list[Any]]]] = []
        self._flushing: set[asyncio.Task[None]] = set()
        self._loaded: set[str] = set()

    async def run(self, queue: Queue) -> list[Any]:
        """The replies to the commands ``queue`` adds, sent with this tick's others.

        Raises:
            redis.exceptions.RedisError: One of the caller's commands failed, or the round
                trip did.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._pending.append((queue, future))
        if len(self._pending) == 1:
            loop.call_soon(self._start)
        replies = await future
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def script(self, script: AsyncScript, keys: list[Any], args: list[Any]) -> Any:
        """Run a registered Lua script (EVALSHA) in this tick's pipeline; its reply.

        The script is loaded once per client, and again if the server lost it (a restart or
        SCRIPT FLUSH).
        """

        def queue(pipe: Pipeline) -> int:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            return 1

        if script.sha not in self._loaded:
            await self._client.script_load(script.script)
            self._loaded.add(script.sha)
        try:
            return (await self.run(queue))[0]
        except NoScriptError:
            await self._client.script_load(script.script)
            return (await self.run(queue))[0]

    def _start(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._flush(batch))
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _flush(self, batch: list[tuple[Queue, asyncio.Future[list[Any]]]]) -> None:
        counts: list[int] = []
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                counts = [queue(pipe) for queue, _ in batch]
                replies = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for (_, future), count in zip(batch, counts, strict=True):
            if not future.done():
                future.set_result(list(replies[start : start + count]))
            start += count
