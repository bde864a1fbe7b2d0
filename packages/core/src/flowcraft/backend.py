"""The backend API: everything a distributed backend imports from core, and nothing private.

A backend is a queue, a context store and a coordination store (its own or a shared one such
as ``flowcraft_redis_store``'s), optionally a result channel and fast paths, and a short
factory composing them into a :class:`DistributedAdapter`. ``docs/backends.md`` is the
author's guide: each method's contract, what core does for the backend, the contract-suite
fixture and a checklist. :mod:`flowcraft.memory` is the reference implementation.
"""

from flowcraft._settings import (
    InvalidSettings,
    dsn_values,
    env_settings,
    merge_settings,
    settings_env,
)
from flowcraft.distributed._hop import ArrivalRead, Hop, HopCommit, HopTarget
from flowcraft.distributed._keys import FIELD
from flowcraft.distributed._payload import JobPayload
from flowcraft.distributed._protocols import (
    Arrival,
    ArrivalReader,
    ContextStore,
    CoordinationStore,
    Delivery,
    HopCommitter,
    HopCoordination,
    HopMarking,
    Queue,
    ReservingQueue,
    ResultChannel,
    Woken,
)
from flowcraft.distributed._results import PollingResultChannel, ResultWaiter, ts_status
from flowcraft.distributed._storage import (
    decode_value,
    encode_value,
    patch_writes,
    translate_errors,
    write_token,
)
from flowcraft.distributed.adapter import DistributedAdapter
from flowcraft.errors import (
    AdapterError,
    ConnectionFailed,
    DeliveryLimitExceeded,
    JobRejected,
    SerializationError,
)

__all__ = [
    # The adapter a backend's factory composes
    "DistributedAdapter",
    # The parts
    "ContextStore",
    "CoordinationStore",
    "Queue",
    "ResultChannel",
    "Woken",
    "FIELD",
    # Optional fast paths
    "ArrivalReader",
    "HopCommitter",
    "HopCoordination",
    "HopMarking",
    "ReservingQueue",
    # What flows through them
    "Arrival",
    "ArrivalRead",
    "Delivery",
    "Hop",
    "HopCommit",
    "HopTarget",
    "JobPayload",
    # Results
    "PollingResultChannel",
    "ResultWaiter",
    "ts_status",
    # Store helpers
    "decode_value",
    "encode_value",
    "patch_writes",
    "translate_errors",
    "write_token",
    # Settings read by one set of rules
    "dsn_values",
    "env_settings",
    "merge_settings",
    "settings_env",
    # Errors a backend raises
    "AdapterError",
    "ConnectionFailed",
    "DeliveryLimitExceeded",
    "InvalidSettings",
    "JobRejected",
    "SerializationError",
]
