"""Flowcraft's distributed backend on Google Cloud: Pub/Sub and Firestore, coordinated on Redis.

Jobs travel on a Pub/Sub topic as the TypeScript adapter's plain JSON bodies (a dead-letter
topic and policy, leases as ack deadlines); each run's context is in Firestore, one document
per key; joins, fences and timers are in Redis (``flowcraft_redis_store``), which also wakes
result waits. ``docs/gcp.md`` has the settings, limits and the emulators' gaps.
"""

from flowcraft_gcp.adapter import GcpAdapter
from flowcraft_gcp.context import FirestoreContextStore, document_id
from flowcraft_gcp.queue import REASON, PubSubQueue
from flowcraft_gcp.results import GcpResultChannel
from flowcraft_gcp.settings import GcpSettings

__all__ = [
    "REASON",
    "FirestoreContextStore",
    "GcpAdapter",
    "GcpResultChannel",
    "GcpSettings",
    "PubSubQueue",
    "document_id",
]
