"""Distributed execution: an adapter composed of a backend's parts, a worker and a client.

A backend provides a :class:`Queue`, a :class:`ContextStore`, a :class:`CoordinationStore` and
optionally a :class:`ResultChannel` and fast paths; all orchestration lives in
:class:`DistributedAdapter`. Backend authors import :mod:`flowcraft.backend`, which gathers
everything they need; :mod:`flowcraft.memory` is the in-process reference backend.
"""

from flowcraft.distributed._current import CurrentJob, current_job
from flowcraft.distributed._payload import JobPayload
from flowcraft.distributed._protocols import (
    ArrivalReader,
    ContextStore,
    CoordinationStore,
    Delivery,
    HopCommitter,
    HopCoordination,
    HopMarking,
    Queue,
    ResultChannel,
)
from flowcraft.distributed.adapter import DistributedAdapter
from flowcraft.distributed.client import Client
from flowcraft.distributed.reconciler import Reconciler, ReconcileStats
from flowcraft.distributed.worker import Worker
from flowcraft.errors import DeliveryLimitExceeded, JobRejected

__all__ = [
    # The adapter and its parts
    "ArrivalReader",
    "ContextStore",
    "CoordinationStore",
    "Delivery",
    "DistributedAdapter",
    "HopCommitter",
    "HopCoordination",
    "HopMarking",
    "JobPayload",
    "Queue",
    "ResultChannel",
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
