"""Settings of the SQS + DynamoDB backend: from keyword arguments, environment variables or a
DSN, and the botocore clients built from them."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.config import Config

from flowcraft.backend import dsn_values, env_settings, merge_settings

__all__ = ["SqsSettings"]

_ENV_PREFIX = "FLOWCRAFT_SQS_"
_DSN_VAR = "FLOWCRAFT_SQS_URL"


@dataclass(frozen=True, slots=True)
class SqsSettings:
    """Where the queue and table are and how the backend uses them.

    Credentials, region and endpoints are botocore's own: the default credential chain,
    ``AWS_PROFILE``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_SQS`` and
    ``AWS_ENDPOINT_URL_DYNAMODB``; the fields below only override them.

    Attributes:
        queue: Name of the job queue (``.fifo`` is appended for a FIFO queue).
        table: Name of the DynamoDB table holding contexts and coordination items.
        key_prefix: Prefix of every item's partition key, so deployments can share a table.
        fifo: Whether the job queue is a FIFO queue (deduplication id = a digest of the
            job's body, each job a message group of its own).
        max_receive_count: Receives after which SQS moves a job to the dead-letter queue by
            itself (the redrive policy); keep it above the worker's ``max_deliveries`` so
            the worker gives up first and fails the run with the reason.
        wait_seconds: Long-poll wait of a receive (SQS allows 0-20).
        lease_seconds: The visibility timeout a received job starts with (whole seconds on
            the wire, rounded up).
        retention_seconds: How long queued jobs, dead letters, context items and reply
            registrations are kept (SQS caps queues at 14 days).
        create: Whether missing queues and the table are created on first use (needs
            ``sqs:CreateQueue``, ``dynamodb:CreateTable`` and ``dynamodb:UpdateTimeToLive``).
        region: Region, when not configured the botocore way.
        sqs_endpoint: SQS endpoint, when not configured the botocore way (an emulator).
        dynamodb_endpoint: DynamoDB endpoint, likewise.
        max_connections: Most HTTP connections of each of the two clients (SQS, DynamoDB);
            a burst of calls waits for a free one, it never fails for want of one.
        max_attempts: Attempts of one call (botocore's "standard" retry mode).
    """

    queue: str = "flowcraft-jobs"
    table: str = "flowcraft"
    key_prefix: str = ""
    fifo: bool = False
    max_receive_count: int = 20
    wait_seconds: int = 20
    lease_seconds: float = 30.0
    retention_seconds: int = 14 * 86_400
    create: bool = True
    region: str | None = None
    sqs_endpoint: str | None = None
    dynamodb_endpoint: str | None = None
    max_connections: int = 10
    max_attempts: int = 5

    def __post_init__(self) -> None:
        if not 0 <= self.wait_seconds <= 20:
            raise ValueError(f"wait_seconds must be 0-20 (SQS's range), not {self.wait_seconds}")
        if self.max_receive_count < 1:
            raise ValueError(f"max_receive_count must be at least 1, not {self.max_receive_count}")
        if self.lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, not {self.lease_seconds}")

    @classmethod
    def from_dsn(cls, dsn: str, **overrides: Any) -> SqsSettings:
        """Settings from ``sqs://<queue>/<table>?fifo=true&key_prefix=t1&…`` (every field
        may be a query parameter), then keyword overrides."""
        queue, table, query = dsn_values(dsn, "sqs")
        values: dict[str, Any] = {"queue": queue} if queue else {}
        if table:
            values["table"] = table
        values.update(query)
        return merge_settings(cls(), {**values, **overrides}, backend="SQS")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> SqsSettings:
        """Settings from ``FLOWCRAFT_SQS_URL`` (a DSN), then ``FLOWCRAFT_SQS_<FIELD>``
        variables (e.g. ``FLOWCRAFT_SQS_QUEUE``), then keyword overrides."""
        env = os.environ if env is None else env
        base = cls.from_dsn(env[_DSN_VAR]) if env.get(_DSN_VAR) else cls()
        values = env_settings(cls, _ENV_PREFIX, env)
        return merge_settings(base, {**values, **overrides}, backend="SQS")

    @property
    def queue_name(self) -> str:
        """The job queue's name as SQS knows it."""
        return self.queue + ".fifo" if self.fifo else self.queue

    @property
    def dead_letter_queue_name(self) -> str:
        """The dead-letter queue's name (FIFO when the job queue is)."""
        return self.queue + "-dlq.fifo" if self.fifo else self.queue + "-dlq"

    @property
    def visibility(self) -> int:
        """The lease in SQS's whole seconds (at least 1, so a job is never visible at once)."""
        return max(1, math.ceil(self.lease_seconds))

    def client_kwargs(self, service: str) -> dict[str, Any]:
        """Keyword arguments of ``create_client`` for ``"sqs"`` or ``"dynamodb"``."""
        kwargs: dict[str, Any] = {
            "config": Config(
                # A long poll holds its request open for up to wait_seconds.
                read_timeout=self.wait_seconds + 10,
                connect_timeout=5,
                max_pool_connections=self.max_connections,
                retries={"mode": "standard", "max_attempts": self.max_attempts},
                tcp_keepalive=True,
                # The service validates every request itself; botocore's own check of each
                # one costs a tenth of a call's client CPU and catches nothing here (every
                # request is built by this package).
                parameter_validation=False,
            )
        }
        if self.region:
            kwargs["region_name"] = self.region
        endpoint = self.sqs_endpoint if service == "sqs" else self.dynamodb_endpoint
        if endpoint:
            kwargs["endpoint_url"] = endpoint
        return kwargs
