"""``SqsAdapter``: distributed runs on Amazon SQS (jobs) and DynamoDB (context, coordination).

Options: ``settings`` (default: :meth:`SqsSettings.from_env`), ``session`` (an
``aiobotocore`` session to share), plus every option of
:class:`~flowcraft.backend.DistributedAdapter`; ``lease`` defaults to the settings'
``lease_seconds``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from aiobotocore.session import AioSession

from flowcraft.backend import DistributedAdapter
from flowcraft.blueprint import Blueprint
from flowcraft_sqs.arrival import DynamoArrivalReader
from flowcraft_sqs.clients import Clients
from flowcraft_sqs.context import DynamoContextStore
from flowcraft_sqs.coordination import DynamoCoordinationStore
from flowcraft_sqs.hop import DynamoHopCommitter
from flowcraft_sqs.queue import SqsQueue
from flowcraft_sqs.results import SqsResultChannel
from flowcraft_sqs.settings import SqsSettings
from flowcraft_sqs.table import Table

__all__ = ["SqsAdapter"]


class SqsAdapter(DistributedAdapter):
    """The SQS + DynamoDB adapter; one per worker or client process.

    Args:
        settings: Queue, table and client settings (default: from the environment).
        registry: ``uses`` key → implementation.
        blueprints: Blueprint id → blueprint.
        session: An aiobotocore session to create the clients from.
        **options: Options of :class:`~flowcraft.backend.DistributedAdapter`.
    """

    queue: SqsQueue

    def __init__(
        self,
        settings: SqsSettings | None = None,
        *,
        registry: Mapping[str, Any] | None = None,
        blueprints: Mapping[str, Blueprint] | None = None,
        session: AioSession | None = None,
        **options: Any,
    ) -> None:
        base = settings or SqsSettings.from_env()
        lease = float(options.pop("lease", base.lease_seconds))
        # The queue's visibility timeout is the lease core's heartbeat renews.
        self.settings = replace(base, lease_seconds=lease)
        self.clients = Clients(self.settings, session)
        table = Table(self.clients)
        context = DynamoContextStore(table)
        coordination = DynamoCoordinationStore(table)
        queue = SqsQueue(self.clients)
        super().__init__(
            queue=queue,
            context=context,
            coordination=coordination,
            results=SqsResultChannel(self.clients, table),
            hops=DynamoHopCommitter(table, coordination, context, queue),
            arrivals=DynamoArrivalReader(table, coordination, context),
            closers=[self.clients.close],
            registry=registry,
            blueprints=blueprints,
            lease=lease,
            **options,
        )
