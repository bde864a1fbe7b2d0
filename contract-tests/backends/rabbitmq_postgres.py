"""Contract-suite fixture of flowcraft-rabbitmq on RabbitMQ and PostgreSQL alone
(``rabbitmq-postgres``: coordination in PostgreSQL). Provisioning as ``backends/rabbitmq.py``,
without Redis."""

from __future__ import annotations

from backends.rabbitmq import Fixture as RabbitFixture
from flowcraft_rabbitmq import RabbitPostgresAdapter

__all__ = ["Fixture"]


class Fixture(RabbitFixture):
    """The RabbitMQ fixture with PostgreSQL coordination."""

    name = "rabbitmq-postgres"
    adapter_class = RabbitPostgresAdapter
    services = (("rabbitmq", "AMQP_URL"), ("postgres", "DATABASE_URL"))
