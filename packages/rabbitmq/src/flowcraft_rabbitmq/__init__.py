"""Flowcraft's RabbitMQ backend: RabbitMQ queue, PostgreSQL context and final results, and
coordination on Redis (``RabbitAdapter``) or PostgreSQL (``RabbitPostgresAdapter``)."""

from flowcraft_rabbitmq.adapter import RabbitAdapter, RabbitPostgresAdapter
from flowcraft_rabbitmq.context import PostgresContextStore
from flowcraft_rabbitmq.coordination import PostgresCoordinationStore
from flowcraft_rabbitmq.queue import RabbitQueue
from flowcraft_rabbitmq.results import PostgresResultChannel
from flowcraft_rabbitmq.settings import RabbitSettings

__all__ = [
    "PostgresContextStore",
    "PostgresCoordinationStore",
    "PostgresResultChannel",
    "RabbitAdapter",
    "RabbitPostgresAdapter",
    "RabbitQueue",
    "RabbitSettings",
]
