"""Redis Cluster: connections to the master that serves one hash slot.

Every key of a deployment carries one hash tag (``RedisSettings.tag``), so all of them live in
one slot, and every script, transaction and pipeline of the backend touches that slot alone,
as BullMQ's keys of one queue do. A deployment then needs no cluster client: a connection to
the slot's master serves it whole, with the standalone code paths (pipelined batches, Lua
scripts, MULTI blocks, blocking reads, pub/sub, which a cluster forwards to every node).

The master is looked up with ``CLUSTER SLOTS`` on every connect, so that a reconnect after a
failover or a slot migration finds the new one; a ``MOVED`` or ``CLUSTERDOWN`` reply drops the
connection, which the client's retry policy then opens again.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ClusterDownError, ConnectionError, MovedError, TimeoutError

__all__ = ["slot_connection_class"]


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class _SlotOwner:
    """Mixin of a redis-py connection class: connects to the master of ``cluster_slot_key``'s
    slot, asking the configured node (and the nodes seen since) where that is."""

    host: str
    port: int
    is_connected: bool

    def __init__(self, *, cluster_slot_key: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._slot = key_slot(cluster_slot_key.encode())
        self._probe_kwargs = {**kwargs, "retry": Retry(NoBackoff(), 0)}
        self._seeds: list[tuple[str, int]] = [(self.host, self.port)]

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if not self.is_connected:
            self.host, self.port = await self._owner()
        await super().connect_check_health(  # type: ignore[misc]
            check_health=check_health, retry_socket_connect=retry_socket_connect
        )

    async def _owner(self) -> tuple[str, int]:
        failure: Exception | None = None
        base = _plain_class(type(self))
        for host, port in list(self._seeds):
            probe = base(**{**self._probe_kwargs, "host": host, "port": port})
            try:
                await probe.connect()  # type: ignore[no-untyped-call]
                await probe.send_command("CLUSTER", "SLOTS")
                ranges = await probe.read_response()
            except (ConnectionError, TimeoutError, OSError) as exc:
                failure = exc
                continue
            finally:
                await probe.disconnect()
            owner = None
            for start, end, master, *_ in ranges:
                node = (_text(master[0]) or host, int(master[1]))
                # Every node answered is a seed for the next lookup (the first may be gone).
                if node not in self._seeds:
                    self._seeds.append(node)
                if int(start) <= self._slot <= int(end):
                    owner = node
            if owner is not None:
                return owner
            failure = ConnectionError(f"no node of the cluster serves slot {self._slot}")
        raise ConnectionError(f"no cluster node answered where slot {self._slot} is: {failure}")

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)  # type: ignore[misc]
        except (MovedError, ClusterDownError) as exc:
            # The slot moved, or its master failed over: a reconnect finds where it is now.
            await self.disconnect()  # type: ignore[attr-defined]
            raise ConnectionError(f"cluster slot {self._slot} moved: {exc}") from exc


_CLASSES: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def slot_connection_class(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """``base`` (plain TCP or TLS) connecting to the master of one slot (keyword argument
    ``cluster_slot_key``: a key in that slot)."""
    if base not in _CLASSES:
        _CLASSES[base] = type(f"Slot{base.__name__}", (_SlotOwner, base), {})
    return _CLASSES[base]


def _plain_class(cls: type) -> type[AbstractConnection]:
    for klass in cls.__mro__[1:]:
        if klass is not _SlotOwner and issubclass(klass, AbstractConnection):
            return klass
    raise TypeError(f"{cls.__name__} is not a redis-py connection class")
