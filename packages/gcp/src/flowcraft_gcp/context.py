"""``FirestoreContextStore``: each run's context in Firestore, one document per key.

Layout: ``<context_collection>/<run id>/keys/<key id>`` (ids escaped by :func:`document_id`)
with fields ``k`` (the key), ``v`` (the JSON value as bytes) and ``expireAt`` (a TTL policy on
it deletes the document once the retention has passed). One document per key, never one per run:

* a run's context is not bounded by Firestore's 1 MiB document limit, and a node's write
  rewrites only its keys;
* parallel branches write different documents, so they do not contend for one document's
  sustained rate of about one write per second;
* a key is a document id, never a field path, so keys with dots, slashes or backticks are
  stored as they are (a field path ``_outputs.n1`` would nest a map).

Which keys a run has is kept in Redis too (a set per run, ``<state prefix><runId>:keys``, with
the documents' retention), added to before ``set`` writes its document and as ``patch`` writes
its documents (a patch is retried until it has been stored whole, both parts): reading a whole
context is then one batched get, not a query (the Firestore emulator answers each query by
scanning the database, about 0.1 s apiece here and slower as it fills; see ``docs/gcp.md``).
A key listed whose document is absent (deleted, or its write failed) is skipped.

The patches and reads of one event-loop tick (a worker's jobs move in step) go out as one
batched write and one batch get (``_tick.py``).

A value too big for one document (over :data:`INLINE_MAX` bytes as JSON) is split into
``parts`` subdocuments of the key's document, all written in one batch with a token that the
reader checks, so a read never mixes two versions. A patch is one batched write (atomic) when
it has at most 500 writes and 9 MiB; a larger one is split into batches written in order:
each is atomic, and a crash between them leaves earlier batches written (the redelivered job
writes the same patch again).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.api_core import exceptions as google_errors
from google.cloud import firestore
from google.cloud.firestore_v1.async_document import AsyncDocumentReference
from google.cloud.firestore_v1.base_document import DocumentSnapshot

from flowcraft.backend import AdapterError, decode_value, encode_value, patch_writes, write_token
from flowcraft.node import PatchOperation
from flowcraft_gcp._errors import firestore_errors
from flowcraft_gcp._tick import MAX_BATCH_BYTES, MAX_WRITES, Reads, Write, Writes
from flowcraft_gcp.settings import GcpSettings
from flowcraft_redis_store import Batcher, RedisSettings, translated

__all__ = ["CHUNK", "INLINE_MAX", "FirestoreContextStore", "document_id"]

INLINE_MAX = 900_000
"""Largest JSON value (bytes) kept in the key's own document; larger ones are split."""
CHUNK = 900_000
"""Bytes per part of a split value (a part document stays under the 1 MiB limit)."""
_MAX_ID_BYTES = 1500
_READ_TRIES = 5


def document_id(key: str) -> str:
    """The document id of a context key or run id (a child run's id holds slashes): ``%`` and
    ``/`` escaped, the ids Firestore reserves (``.``, ``..``, ``__…__``, empty) prefixed with
    ``%``, and a too-long one hashed."""
    escaped = key.replace("%", "%25").replace("/", "%2F")
    if escaped in ("", ".", "..") or (escaped.startswith("__") and escaped.endswith("__")):
        escaped = "%" + escaped
    if len(escaped.encode()) > _MAX_ID_BYTES:
        escaped = "%h" + hashlib.sha256(key.encode()).hexdigest()
    return escaped


class FirestoreContextStore:
    """A :class:`~flowcraft.backend.ContextStore` on Firestore (``firestore.AsyncClient``).

    Args:
        settings: Project, collection and retention.
        redis: Where the key index lives (the adapter's Redis key layout).
        batcher: The adapter's Redis batch, which the index commands join.
    """

    def __init__(self, settings: GcpSettings, redis: RedisSettings, batcher: Batcher) -> None:
        self._settings = settings
        self._redis = redis
        self._batch = batcher
        self._client: firestore.AsyncClient | None = None
        self._writes = Writes(lambda: self.client)
        self._reads = Reads(lambda: self.client)

    @property
    def client(self) -> firestore.AsyncClient:
        """The Firestore client, created on first use in the running loop (grpc.aio)."""
        if self._client is None:
            self._client = firestore.AsyncClient(project=self._settings.project)
        return self._client

    async def connect(self) -> None:
        """Create the client and open its channel now, not under the first job's lease."""
        async with firestore_errors:
            await self.client.collection(self._settings.context_collection).document("-").get()

    def _keys(self, run_id: str) -> Any:
        return (
            self.client.collection(self._settings.context_collection)
            .document(document_id(run_id))
            .collection("keys")
        )

    def _ref(self, run_id: str, key: str) -> AsyncDocumentReference:
        ref: AsyncDocumentReference = self._keys(run_id).document(document_id(key))
        return ref

    def _index(self, run_id: str) -> str:
        return f"{self._redis.state_key(run_id)}:keys"

    async def _listed(self, run_id: str, keys: Iterable[str]) -> None:
        name = self._index(run_id)
        ttl = self._settings.retention_seconds
        async with translated():
            await self._batch.transaction([("SADD", name, *keys), ("EXPIRE", name, ttl)])

    async def _listing(self, run_id: str) -> list[str]:
        async with translated():
            (members,) = await self._batch.run([("SMEMBERS", self._index(run_id))])
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    def _expiry(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self._settings.retention_seconds)

    def _documents(self, ref: AsyncDocumentReference, key: str, raw: bytes) -> list[Write]:
        expire = self._expiry()
        if len(raw) <= INLINE_MAX:
            return [(ref, {"k": key, "v": raw, "expireAt": expire}, len(raw) + len(key))]
        token = write_token()
        parts = [raw[i : i + CHUNK] for i in range(0, len(raw), CHUNK)]
        head = {"k": key, "n": len(parts), "t": token, "expireAt": expire}
        out: list[Write] = [(ref, head, len(key) + 64)]
        for i, part in enumerate(parts):
            data = {"v": part, "t": token, "expireAt": expire}
            out.append((ref.collection("parts").document(str(i)), data, len(part) + 64))
        return out

    async def _commit(self, writes: list[Write]) -> None:
        if self._writes.fits(writes):
            async with firestore_errors:
                await self._writes.commit(writes)
            return
        batches: list[list[Write]] = [[]]
        size = 0
        for write in writes:
            if batches[-1] and (
                len(batches[-1]) >= MAX_WRITES or size + write[2] > MAX_BATCH_BYTES
            ):
                batches.append([])
                size = 0
            batches[-1].append(write)
            size += write[2]
        async with firestore_errors:
            for chunk in batches:
                batch = self.client.batch()
                for ref, data, _ in chunk:
                    if data is None:
                        batch.delete(ref)
                    else:
                        batch.set(ref, data)
                await batch.commit()

    async def _value(self, snapshot: DocumentSnapshot[Any]) -> Any:
        """The decoded value of a key's document (reading its parts if split)."""
        for _ in range(_READ_TRIES):
            data = snapshot.to_dict() or {}
            if "n" not in data:
                return decode_value(data.get("v"))
            ref: AsyncDocumentReference = snapshot.reference
            part_refs = [ref.collection("parts").document(str(i)) for i in range(data["n"])]
            parts: dict[str, bytes] = {}
            tokens = set()
            async for part in self.client.get_all(part_refs):
                fields = part.to_dict() or {}
                parts[part.id] = fields.get("v", b"")
                tokens.add(fields.get("t"))
            if tokens == {data["t"]} and len(parts) == data["n"]:
                return decode_value(b"".join(parts[str(i)] for i in range(data["n"])))
            # Rewritten while being read: read the key's document again.
            snapshot = await ref.get()
            if not snapshot.exists:
                return None
        raise AdapterError(f"firestore error: {snapshot.id} kept changing while it was read")

    async def get(self, run_id: str, key: str) -> Any:
        async with firestore_errors:
            (snapshot,) = await self._reads.get([self._ref(run_id, key)])
            return await self._value(snapshot) if snapshot.exists else None

    async def set(self, run_id: str, key: str, value: Any) -> None:
        raw = encode_value(key, value)
        await self._listed(run_id, [key])
        await self._commit(self._documents(self._ref(run_id, key), key, raw))

    async def has(self, run_id: str, key: str) -> bool:
        async with firestore_errors:
            snapshot = await self._ref(run_id, key).get(field_paths=["k"])
        return bool(snapshot.exists)

    async def delete(self, run_id: str, key: str) -> bool:
        ref = self._ref(run_id, key)
        async with firestore_errors:
            snapshot = await ref.get(field_paths=["n"])
            if not snapshot.exists:
                return False
            batch = self.client.batch()
            batch.delete(ref, option=self.client.write_option(exists=True))
            for i in range((snapshot.to_dict() or {}).get("n", 0)):
                batch.delete(ref.collection("parts").document(str(i)))
            try:
                await batch.commit()
            except google_errors.NotFound:
                return False  # deleted by another writer since the read
        return True

    async def get_many(self, run_id: str, keys: Iterable[str]) -> dict[str, Any]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        refs = [self._ref(run_id, key) for key in wanted]
        found: dict[str, Any] = {}
        async with firestore_errors:
            for snapshot in await self._reads.get(refs):
                if snapshot.exists:
                    found[(snapshot.to_dict() or {})["k"]] = await self._value(snapshot)
        return {key: found[key] for key in wanted if key in found}

    async def patch(self, run_id: str, operations: Iterable[PatchOperation]) -> None:
        sets, deletes = patch_writes(operations)
        writes: list[Write] = []
        for key, raw in sets.items():
            writes += self._documents(self._ref(run_id, key), key, raw)
        writes += [(self._ref(run_id, key), None, 0) for key in deletes]
        # Listed and written at once: a patch is retried until its job is acked, so a key
        # written but not yet listed is listed before anyone is told the patch was stored.
        steps = [self._listed(run_id, sets)] if sets else []
        if writes:
            steps.append(self._commit(writes))
        await asyncio.gather(*steps)

    async def to_dict(self, run_id: str) -> dict[str, Any]:
        return await self.get_many(run_id, await self._listing(run_id))

    async def delete_run(self, run_id: str) -> None:
        refs = [self._ref(run_id, key) for key in await self._listing(run_id)]
        writes: list[Write] = []
        async with firestore_errors:
            async for snapshot in self.client.get_all(refs, field_paths=["n"]):
                ref: AsyncDocumentReference = snapshot.reference
                parts = range((snapshot.to_dict() or {}).get("n", 0))
                writes.append((ref, None, 0))
                writes.extend((ref.collection("parts").document(str(i)), None, 0) for i in parts)
        if writes:
            await self._commit(writes)
        async with translated():
            await self._batch.run([("DEL", self._index(run_id))])

    def connections(self) -> int:
        """1 while the client's gRPC channel is connected, else 0."""
        if self._client is None:
            return 0
        channel = _transport(self._client).grpc_channel
        return int(channel.get_state() == grpc.ChannelConnectivity.READY)

    async def close(self) -> None:
        """Close the client's channel; safe to call twice."""
        self._writes.cancel()
        self._reads.cancel()
        client, self._client = self._client, None
        if client is not None:
            await _transport(client).close()


def _transport(client: firestore.AsyncClient) -> Any:
    # firestore.AsyncClient neither exposes nor closes the channel of the GAPIC client under
    # it (its close() closes an HTTP session only).
    return client._firestore_api.transport
