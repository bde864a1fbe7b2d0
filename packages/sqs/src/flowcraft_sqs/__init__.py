"""Flowcraft's distributed backend on Amazon SQS and DynamoDB.

Jobs travel on an SQS queue (the TypeScript adapter's plain JSON bodies, a dead-letter queue
with a redrive policy, leases as visibility timeouts); each run's context and the
coordination keys live in one DynamoDB table; result waits are woken through per-process
reply queues. ``docs/sqs.md`` has the settings, limits and the emulators' gaps.
"""

from flowcraft_sqs.adapter import SqsAdapter
from flowcraft_sqs.arrival import DynamoArrivalReader
from flowcraft_sqs.context import DynamoContextStore
from flowcraft_sqs.coordination import DynamoCoordinationStore
from flowcraft_sqs.queue import SqsQueue
from flowcraft_sqs.results import SqsResultChannel
from flowcraft_sqs.settings import SqsSettings
from flowcraft_sqs.table import Table

__all__ = [
    "DynamoArrivalReader",
    "DynamoContextStore",
    "DynamoCoordinationStore",
    "SqsAdapter",
    "SqsQueue",
    "SqsResultChannel",
    "SqsSettings",
    "Table",
]
