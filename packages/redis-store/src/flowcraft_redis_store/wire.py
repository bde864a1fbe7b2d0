"""``Wire``: one pipelined connection to Redis, for the commands of the worker's hot path.

redis-py spends about 0.2 ms of client CPU on every round trip here (a pooled connection
checked out and back, its pipeline object, retry wrapper and instrumentation), half the cost of
a hop. The hop's commands need none of that: they are Lua scripts and plain commands whose
replies come back in order. A ``Wire`` writes each batch as soon as it is queued, without
waiting for the replies of earlier batches, and an ``asyncio.Protocol`` hands the replies,
parsed by hiredis, to the batches in the order they were sent.

A dropped connection fails the batches in flight with ``ConnectionError`` (the caller retries
them on a new connection, as redis-py would: every script sent here is safe to run again).
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, cast

import hiredis
from redis._parsers.base import BaseParser
from redis.exceptions import AuthenticationError, ConnectionError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["Wire", "wire_for"]

_Batch = tuple[int, list[Any], asyncio.Future[list[Any]]]
"""How many replies a batch expects, those received, and its future."""


def _error(message: str) -> ResponseError:
    # The classes redis-py's parser gives error replies: LOADING (a restarted server replaying
    # its data) is a BusyLoadingError, which is a ConnectionError and so retried.
    error: ResponseError = BaseParser.parse_error(message)  # type: ignore[no-untyped-call]
    return error


def _pack(commands: Sequence[Sequence[Any]]) -> bytes:
    return b"".join(hiredis.pack_command(tuple(command)) for command in commands)


class _Protocol(asyncio.Protocol):
    def __init__(self, encoding: str | None = None) -> None:
        self._reader = (
            hiredis.Reader(replyError=_error)
            if encoding is None
            else hiredis.Reader(replyError=_error, encoding=encoding)
        )
        self._waiting: deque[_Batch] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, though they implement it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        while waiting:
            reply = self._reader.gets()
            if reply is False:
                return
            count, replies, future = waiting[0]
            replies.append(reply)
            if len(replies) == count:
                waiting.popleft()
                if not future.done():
                    future.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = ConnectionError(f"Connection to Redis lost: {exc or 'closed by the server'}")
        while self._waiting:
            _, _, future = self._waiting.popleft()
            if not future.done():
                future.set_exception(self.lost)

    def send(self, data: bytes, count: int) -> asyncio.Future[list[Any]]:
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        if self.lost is not None or self.transport is None:
            future.set_exception(self.lost or ConnectionError("Not connected to Redis"))
            return future
        self._waiting.append((count, [], future))
        self.transport.write(data)
        return future


class Wire:
    """A pipelined connection, opened on first use and reopened after it drops.

    Args:
        host, port: TCP address (or ``path``: a Unix socket).
        db: Database number, selected on connect.
        username, password: Credentials, sent with AUTH on connect.
        connect_timeout: Seconds a connection attempt may take.
        timeout: Seconds a batch may wait for its replies (the connection is then closed, as
            its later replies could no longer be matched); None waits as long as it takes.
        keepalive: TCP keepalive options (``socket.TCP_*`` → value) for TCP connections.
        encoding: Decode bulk replies to ``str`` with it (a client with
            ``decode_responses``); None returns ``bytes``.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float = 5.0,
        timeout: float | None = None,
        keepalive: Mapping[int, int] | None = None,
        encoding: str | None = None,
        client_name: str | None = None,
    ) -> None:
        self._address = (host, port, path)
        self._db = db
        self._client_name = client_name
        self._auth = (username, password)
        self._connect_timeout = connect_timeout
        self.timeout = timeout
        """Seconds a batch may wait for its replies (None: no limit)."""
        self._keepalive = dict(keepalive or {})
        self._protocol_factory = functools.partial(_Protocol, encoding)
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    def send(self, commands: Sequence[Sequence[Any]]) -> asyncio.Future[list[Any]] | None:
        """Write ``commands`` now if connected: the future of their replies (as from
        :meth:`execute`, which takes it). None when not connected."""
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            return None
        return protocol.send(_pack(commands), len(commands))

    async def execute(
        self,
        commands: Sequence[Sequence[Any]],
        sent: asyncio.Future[list[Any]] | None = None,
    ) -> list[Any]:
        """Send ``commands`` in order, unless ``sent`` (from :meth:`send`) says they were,
        and return their replies (an error reply is returned as a ``ResponseError``, not
        raised).

        Raises:
            redis.exceptions.ConnectionError: The connection failed or dropped before every
                reply arrived; some commands may have run.
        """
        if sent is None:
            protocol = self._protocol
            if protocol is None or protocol.lost is not None:
                protocol = await self._connect()
            sent = protocol.send(_pack(commands), len(commands))
        if self.timeout is None:
            return await sent
        try:
            async with asyncio.timeout(self.timeout):
                return await sent
        except TimeoutError as exc:
            # Replies still to come could no longer be matched to their batches.
            self.close()
            raise RedisTimeoutError("Timeout reading from Redis") from exc

    async def _connect(self) -> _Protocol:
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._open())
        try:
            protocol = await asyncio.shield(self._connecting)
        except OSError as exc:
            raise ConnectionError(f"Error connecting to Redis: {exc}") from exc
        except TimeoutError as exc:
            raise ConnectionError("Timeout connecting to Redis") from exc
        self._protocol = protocol
        return protocol

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        host, port, path = self._address
        async with asyncio.timeout(self._connect_timeout):
            if path is not None:
                _, protocol = await loop.create_unix_connection(self._protocol_factory, path)
            else:
                transport, protocol = await loop.create_connection(
                    self._protocol_factory, host, port
                )
                sock = transport.get_extra_info("socket")
                if sock is not None and self._keepalive:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                    for option, value in self._keepalive.items():
                        sock.setsockopt(socket.IPPROTO_TCP, option, value)
            setup: list[tuple[Any, ...]] = []
            username, password = self._auth
            if password is not None:
                setup.append(
                    ("AUTH", password) if username is None else ("AUTH", username, password)
                )
            if self._db:
                setup.append(("SELECT", self._db))
            if self._client_name:
                setup.append(("CLIENT", "SETNAME", self._client_name))
            if setup:
                for reply in await protocol.send(_pack(setup), len(setup)):
                    if isinstance(reply, ResponseError):
                        self._close(protocol)
                        raise AuthenticationError(str(reply))
        return protocol

    @staticmethod
    def _close(protocol: _Protocol) -> None:
        if protocol.transport is not None:
            protocol.transport.close()

    def close(self) -> None:
        """Close the connection (batches in flight fail with ``ConnectionError``)."""
        if self._protocol is not None:
            self._close(self._protocol)
            self._protocol = None


def wire_for(connection_class: type, kwargs: Mapping[str, Any]) -> Wire | None:
    """A ``Wire`` to where a redis-py pool's connections go, if it can make one: plain TCP or
    a Unix socket, authenticated by a static password. None for anything else (TLS, a
    credential provider, RESP3 ...): the batcher then pipelines through redis-py."""
    from redis.asyncio.connection import Connection, UnixDomainSocketConnection

    if kwargs.get("credential_provider") is not None or kwargs.get("protocol") not in (None, 2):
        return None
    timeout = kwargs.get("socket_timeout")
    common: dict[str, Any] = {
        "db": int(kwargs.get("db") or 0),
        "username": kwargs.get("username"),
        "password": kwargs.get("password"),
        "connect_timeout": float(kwargs.get("socket_connect_timeout") or 5.0),
        "timeout": float(timeout) if timeout else None,
        "client_name": kwargs.get("client_name"),
        "encoding": str(kwargs.get("encoding") or "utf-8")
        if kwargs.get("decode_responses")
        else None,
    }
    if connection_class is UnixDomainSocketConnection:
        return Wire(path=str(kwargs["path"]), **common)
    if connection_class is Connection:
        keepalive = (
            kwargs.get("socket_keepalive_options") if kwargs.get("socket_keepalive") else None
        )
        return Wire(
            host=str(kwargs.get("host", "localhost")),
            port=int(kwargs.get("port", 6379)),
            keepalive=keepalive,
            **common,
        )
    return None
