"""Distributed execution: the adapter contract every backend implements, a worker and a client.

A backend provides a queue (the abstract hooks of :class:`BaseDistributedAdapter`), a
:class:`ContextStore` and a :class:`CoordinationStore`; all orchestration lives in the base
adapter. :mod:`flowcraft.memory` is the in-process reference backend.
"""

from flowcraft.distributed._current import CurrentJob, current_job
from flowcraft.distributed._protocols import ContextStore, CoordinationStore, Delivery, JobPayload
from flowcraft.distributed.adapter import (
    BaseDistributedAdapter,
    DeliveryLimitExceeded,
    JobRejected,
)
from flowcraft.distributed.client import Client
from flowcraft.distributed.reconciler import Reconciler, ReconcileStats
from flowcraft.distributed.worker import Worker

__all__ = [
    # The contract
    "BaseDistributedAdapter",
    "ContextStore",
    "CoordinationStore",
    "Delivery",
    "JobPayload",
    # Running
    "Client",
    "CurrentJob",
    "Reconciler",
    "ReconcileStats",
    "Worker",
    "current_job",
    # Errors
    "DeliveryLimitExceeded",
    "JobRejected",
]
