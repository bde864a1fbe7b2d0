"""The job payload: the TypeScript ``{runId, blueprintId, nodeId}`` JSON, and job ids."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from flowcraft.errors import SerializationError

__all__ = ["JobPayload", "fired_by", "job_id", "member_of", "parse_job_id"]


def job_id(node_id: str, iteration: int, role: str = "") -> str:
    """The member naming one job in a run's enqueued/done sets."""
    return orjson.dumps([node_id, iteration, role]).decode()


def parse_job_id(value: str) -> tuple[str, int, str]:
    """Inverse of :func:`job_id`."""
    node_id, iteration, role = orjson.loads(value)
    return str(node_id), int(iteration), str(role)


def member_of(payload: JobPayload) -> str:
    """The job id of a job: its node, iteration and role (a fallback's ``fb:<primary>``, a
    resume's ``resume``)."""
    rescues = payload.extra.get("rescues")
    if isinstance(rescues, str):
        role = f"fb:{rescues}"
    elif payload.resume is not None:
        role = "resume"
    else:
        role = ""
    return job_id(payload.node_id, payload.iteration, role)


def fired_by(member: str | None) -> str:
    """The value of a fire fence (``Keys.fire``, ``Keys.fallback``) taken by the job
    ``member``: a redelivery of that job, finding its own mark, enqueues the successor again
    (its first delivery may have died between taking the fence and enqueueing)."""
    return "fired" if member is None else f"fired:{member}"


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
