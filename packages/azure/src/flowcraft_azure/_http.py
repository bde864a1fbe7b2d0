"""``HttpPool``: an aiohttp session the Azure clients of one account share.

Each Azure SDK client would otherwise open an aiohttp session (and a connection pool of up to
100 connections) of its own; the adapter keeps one bounded pool for the storage account and
one for the Cosmos account, together ``http_connections``.
"""

from __future__ import annotations

import aiohttp
from azure.core.pipeline.transport import AioHttpTransport

__all__ = ["HttpPool"]


class HttpPool:
    """A lazily opened aiohttp session (in the running loop) and transports over it.

    Args:
        limit: Most connections open at once; requests beyond it wait for a free one.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    def transport(self) -> AioHttpTransport:
        """A transport for one SDK client; closing it leaves the shared session open."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=0)
            self._session = aiohttp.ClientSession(connector=connector)
        return AioHttpTransport(session=self._session, session_owner=False)

    def connections(self) -> int:
        """Connections open now, in use or idle in the pool."""
        session = self._session
        if session is None or session.closed:
            return 0
        connector = session.connector
        if not isinstance(connector, aiohttp.TCPConnector):
            return 0
        # aiohttp exposes no count: its in-use set and idle lists are the only record.
        acquired = len(connector._acquired)
        idle = sum(len(kept) for kept in connector._conns.values())
        return acquired + idle

    async def close(self) -> None:
        """Close the session and its connections; safe to call twice."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
