"""The contract every distributed backend implements: the two stores and the job payload.

A backend provides a :class:`CoordinationStore` (atomic keys with TTLs, shared by all runs), a
:class:`ContextStore` (one key/value namespace per run) and a queue (the abstract hooks of
:class:`~flowcraft.distributed.BaseDistributedAdapter`). Values in both stores are JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import orjson

from flowcraft.errors import SerializationError
from flowcraft.node import PatchOperation

__all__ = ["Arrival", "ContextStore", "CoordinationStore", "Delivery", "JobPayload"]

Arrival = tuple[list[str | None], list[set[str]], dict[str, Any]]
"""A job's arrival read: its coordination strings, its coordination sets, its context fields."""


@runtime_checkable
class CoordinationStore(Protocol):
    """Atomic keys for joins, fences and timers. Every write takes a TTL in seconds."""

    async def increment(self, key: str, ttl: float) -> int:
        """Add one to the integer under ``key`` (0 when absent); the new value."""

    async def set_if_not_exist(self, key: str, value: str, ttl: float) -> bool:
        """Store ``value`` unless ``key`` exists; whether it was stored."""

    async def add_to_set(self, key: str, member: str, ttl: float) -> int:
        """Add ``member`` to the set under ``key`` (idempotent); the set's size afterwards."""

    async def remove_from_set(self, key: str, member: str) -> int:
        """Remove ``member`` from the set under ``key``; the set's size afterwards."""

    async def members(self, key: str) -> set[str]:
        """The members of the set under ``key`` (empty when absent)."""

    async def read(
        self, keys: Sequence[str], set_keys: Sequence[str]
    ) -> tuple[list[str | None], list[set[str]]]:
        """``get`` of each of ``keys`` and ``members`` of each of ``set_keys``, at once.

        A job reads its run's state through this before it runs, so stores that can answer
        several reads in one round trip (a pipeline, a batch get) should.
        """

    async def extend_ttl(self, key: str, ttl: float) -> bool:
        """Reset the TTL of ``key``; whether it existed."""

    async def get(self, key: str) -> str | None:
        """The string under ``key``, or None (sets and counters read as their text form)."""

    async def delete(self, key: str) -> None:
        """Remove ``key`` if present."""


@runtime_checkable
class ContextStore(Protocol):
    """The runs' contexts: one namespace of JSON values per run id."""

    async def get(self, run_id: str, key: str) -> Any:
        """The value under ``key`` or None."""

    async def set(self, run_id: str, key: str, value: Any) -> None:
        """Store ``value`` under ``key``."""

    async def has(self, run_id: str, key: str) -> bool:
        """Whether ``key`` is present."""

    async def delete(self, run_id: str, key: str) -> bool:
        """Remove ``key``; whether it was present."""

    async def get_many(self, run_id: str, keys: Iterable[str]) -> dict[str, Any]:
        """The present keys among ``keys``."""

    async def patch(self, run_id: str, operations: Iterable[PatchOperation]) -> None:
        """Apply set/delete operations all-or-nothing (invalid ops apply nothing)."""

    async def to_dict(self, run_id: str) -> dict[str, Any]:
        """The whole context of the run."""

    async def delete_run(self, run_id: str) -> None:
        """Forget the run's context."""


_FIELDS = {"runId", "blueprintId", "nodeId", "attempt", "iteration", "traceContext", "resume"}


@dataclass(frozen=True, slots=True)
class JobPayload:
    """One job: execute (or re-route) one node of one run in one loop iteration.

    The JSON is the TypeScript ``{runId, blueprintId, nodeId}`` plus ``attempt``, ``iteration``
    and optional ``traceContext``; unknown fields are kept in ``extra`` and written back.
    """

    run_id: str
    blueprint_id: str
    node_id: str
    attempt: int = 1
    iteration: int = 0
    trace_context: Mapping[str, str] | None = None
    resume: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The camelCase JSON shape."""
        out: dict[str, Any] = dict(self.extra)
        out.update(
            runId=self.run_id,
            blueprintId=self.blueprint_id,
            nodeId=self.node_id,
            attempt=self.attempt,
            iteration=self.iteration,
        )
        if self.trace_context is not None:
            out["traceContext"] = dict(self.trace_context)
        if self.resume is not None:
            out["resume"] = dict(self.resume)
        return out

    def to_json(self) -> str:
        """The payload as JSON text."""
        return orjson.dumps(self.to_dict()).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> JobPayload:
        """Parse a job.

        Raises:
            SerializationError: Not JSON, not an object, or a required field is missing or has
                the wrong type; the message names the field.
        """
        try:
            raw = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise SerializationError(f"job payload is not JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise SerializationError("job payload must be a JSON object")
        for name in ("runId", "blueprintId", "nodeId"):
            if not isinstance(raw.get(name), str) or not raw[name]:
                raise SerializationError(f"job payload field '{name}' must be a non-empty string")
        for name in ("attempt", "iteration"):
            value = raw.get(name, 0 if name == "iteration" else 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SerializationError(f"job payload field '{name}' must be an integer >= 0")
        trace = raw.get("traceContext")
        resume = raw.get("resume")
        if trace is not None and not isinstance(trace, dict):
            raise SerializationError("job payload field 'traceContext' must be an object")
        if resume is not None and not isinstance(resume, dict):
            raise SerializationError("job payload field 'resume' must be an object")
        return cls(
            run_id=raw["runId"],
            blueprint_id=raw["blueprintId"],
            node_id=raw["nodeId"],
            attempt=int(raw.get("attempt", 1)),
            iteration=int(raw.get("iteration", 0)),
            trace_context=trace,
            resume=resume,
            extra={k: v for k, v in raw.items() if k not in _FIELDS},
        )


@dataclass(slots=True)
class Delivery:
    """A job as received from a queue.

    Attributes:
        body: The job's JSON text (possibly malformed).
        handle: The backend's receipt (message id, delivery tag, lock token).
        delivery_count: How many times it was delivered, from 1.
        settled: Whether the backend already acked it inside an atomic hop step.
        arrival: What the job reads on arrival, when the backend read it already (a job it
            reserved for this worker in the previous job's atomic hop step).
        next: A successor the backend reserved for this worker while settling this job:
            the worker handles it next, in the same slot, instead of fetching it.
    """

    body: str
    handle: Any
    delivery_count: int = 1
    settled: bool = False
    arrival: Arrival | None = None
    next: Delivery | None = None
