"""Settings of the Pub/Sub + Firestore backend: from keyword arguments, environment variables or
a DSN.

Google's clients find their servers and credentials themselves: Application Default
Credentials, and ``PUBSUB_EMULATOR_HOST`` / ``FIRESTORE_EMULATOR_HOST`` for the emulators (read
when a client is created, so a worker started with them set talks to the emulators).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from flowcraft.backend import dsn_values, env_settings, merge_settings, settings_env
from flowcraft_redis_store import DEFAULT_URL as DEFAULT_REDIS_URL
from flowcraft_redis_store import RedisSettings

__all__ = ["MAX_ACK_DEADLINE", "MIN_SUBSCRIPTION_DEADLINE", "GcpSettings"]

_ENV_PREFIX = "FLOWCRAFT_GCP_"
_DSN_VAR = "FLOWCRAFT_GCP_URL"
_PROJECT_VARS = ("GOOGLE_CLOUD_PROJECT", "PUBSUB_PROJECT_ID", "GCLOUD_PROJECT")

MAX_ACK_DEADLINE = 600
"""The longest ack deadline Pub/Sub accepts in one call (the emulator accepts more)."""
MIN_SUBSCRIPTION_DEADLINE = 10
"""The shortest ack deadline a subscription can be created with."""


@dataclass(frozen=True, slots=True)
class GcpSettings:
    """Where the topic, subscription, collections and Redis are, and how they are used.

    Attributes:
        project: The Google Cloud project (default: ``GOOGLE_CLOUD_PROJECT``,
            ``PUBSUB_PROJECT_ID`` or ``GCLOUD_PROJECT``).
        topic: The job topic; its dead-letter topic is ``<topic>-dead``.
        subscription: The workers' subscription on ``topic``; dead letters are kept on
            ``<subscription>-dead``.
        context_collection: Root collection of contexts: ``<collection>/<runId>/keys/<key>``.
        status_collection: Collection of each run's final status document (``<runId>``).
        lease_seconds: The ack deadline a received job starts with and the heartbeat renews
            (whole seconds on the wire, at most 600).
        max_delivery_attempts: Deliveries after which Pub/Sub moves a job to the dead-letter
            topic by itself (5-100); keep it above the worker's ``max_deliveries`` so the
            worker gives up first and fails the run with the reason.
        retention_seconds: How long context and status documents (``expireAt``, with a
            Firestore TTL policy) and unacked or dead-lettered messages are kept (Pub/Sub
            keeps messages at most 7 days; the subscription's retention is capped there).
        pull_timeout: Seconds one pull may stay open on the server while the queue is empty.
        create: Whether missing topics and subscriptions are created on first use (needs
            ``pubsub.topics.create`` and ``pubsub.subscriptions.create``).
        redis_url: Redis, for coordination, result wakes and run events (``REDIS_URL``).
        redis_prefix: Prefix of every Redis key, so deployments can share a server.
        redis_connections: Most Redis connections one adapter opens.
        client_name: Names the adapter's Redis connections (``CLIENT SETNAME``).
    """

    project: str = "flowcraft"
    topic: str = "flowcraft-jobs"
    subscription: str = "flowcraft-workers"
    context_collection: str = "flowcraft-context"
    status_collection: str = "flowcraft-status"
    lease_seconds: float = 30.0
    max_delivery_attempts: int = 20
    retention_seconds: int = 7 * 86_400
    pull_timeout: float = 60.0
    create: bool = True
    redis_url: str = DEFAULT_REDIS_URL
    redis_prefix: str = ""
    redis_connections: int = 8
    client_name: str = "flowcraft"

    def __post_init__(self) -> None:
        if not 5 <= self.max_delivery_attempts <= 100:
            raise ValueError(
                f"max_delivery_attempts must be 5-100 (Pub/Sub's range), not"
                f" {self.max_delivery_attempts}"
            )
        if self.lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, not {self.lease_seconds}")
        if self.retention_seconds <= 0:
            raise ValueError(f"retention_seconds must be positive, not {self.retention_seconds}")

    @classmethod
    def from_dsn(cls, dsn: str, **overrides: Any) -> GcpSettings:
        """Settings from ``gcp://<project>/<topic>?subscription=…&redis_url=…`` (every field
        may be a query parameter), then keyword overrides."""
        project, topic, query = dsn_values(dsn, "gcp")
        values: dict[str, Any] = {"project": project} if project else {}
        if topic:
            values["topic"] = topic
        values.update(query)
        return merge_settings(cls(), {**values, **overrides}, backend="GCP")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> GcpSettings:
        """Settings from the project variables and ``REDIS_URL``, then ``FLOWCRAFT_GCP_URL``
        (a DSN), then ``FLOWCRAFT_GCP_<FIELD>`` variables, then keyword overrides."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        project = next((env[name] for name in _PROJECT_VARS if env.get(name)), None)
        if project:
            values["project"] = project
        if env.get("REDIS_URL"):
            values["redis_url"] = env["REDIS_URL"]
        base = merge_settings(cls(), values, backend="GCP")
        if env.get(_DSN_VAR):
            base = cls.from_dsn(env[_DSN_VAR], **values)
        named = env_settings(cls, _ENV_PREFIX, env)
        return merge_settings(base, {**named, **overrides}, backend="GCP")

    def to_env(self) -> dict[str, str]:
        """These settings as the environment variables :meth:`from_env` reads (for a worker
        process)."""
        env = settings_env(self, _ENV_PREFIX)
        env["REDIS_URL"] = self.redis_url
        return env

    def namespaced(self, tag: str) -> GcpSettings:
        """These settings with a topic, subscription, collections and Redis keys of their own,
        ``tag`` in each (deployments, tests or benchmarks sharing the servers)."""
        return replace(
            self,
            topic=f"{self.topic}-{tag}",
            subscription=f"{self.subscription}-{tag}",
            context_collection=f"{self.context_collection}-{tag}",
            status_collection=f"{self.status_collection}-{tag}",
            redis_prefix=f"{self.redis_prefix}{tag}:",
        )

    @property
    def topic_path(self) -> str:
        return f"projects/{self.project}/topics/{self.topic}"

    @property
    def dead_letter_topic_path(self) -> str:
        return f"projects/{self.project}/topics/{self.topic}-dead"

    @property
    def subscription_path(self) -> str:
        return f"projects/{self.project}/subscriptions/{self.subscription}"

    @property
    def dead_letter_subscription_path(self) -> str:
        return f"projects/{self.project}/subscriptions/{self.subscription}-dead"

    @property
    def ack_deadline(self) -> int:
        """The lease in whole seconds, as Pub/Sub takes it (1-600)."""
        return ack_seconds(self.lease_seconds)

    def redis(self) -> RedisSettings:
        """Redis settings with this deployment's key prefix."""
        return RedisSettings(
            url=self.redis_url,
            max_connections=self.redis_connections,
            client_name=self.client_name,
            state_ttl_seconds=self.retention_seconds,
        ).prefixed(self.redis_prefix)


def ack_seconds(seconds: float) -> int:
    """``seconds`` as an ack deadline: whole seconds, rounded up, 1-600."""
    return max(1, min(MAX_ACK_DEADLINE, math.ceil(seconds)))
