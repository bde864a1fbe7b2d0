"""Provider names and aliases, mapped to the local provider classes."""

from __future__ import annotations

from .base import Service
from .errors import ServiceError
from .providers.azurite import AzuriteService
from .providers.cassandra import CassandraService
from .providers.cosmos import CosmosService
from .providers.dynamodb_local import DynamoDBLocalService
from .providers.elasticmq import ElasticMQService
from .providers.firestore import FirestoreService
from .providers.kafka import KafkaService
from .providers.moto import MotoService
from .providers.postgres import PostgresService
from .providers.pubsub import PubSubService
from .providers.rabbitmq import RabbitMQService
from .providers.redis import RedisClusterService, RedisService, RedisTLSService
from .providers.tansu import TansuService

PROVIDERS: dict[str, type[Service]] = {
    cls.name: cls
    for cls in (
        RedisService,
        RedisClusterService,
        RedisTLSService,
        PostgresService,
        RabbitMQService,
        MotoService,
        ElasticMQService,
        DynamoDBLocalService,
        PubSubService,
        FirestoreService,
        AzuriteService,
        CosmosService,
        KafkaService,
        TansuService,
        CassandraService,
    )
}

# What `up` with no names starts: one server per backend need (moto covers SQS and DynamoDB).
DEFAULT: tuple[str, ...] = (
    "redis",
    "postgres",
    "rabbitmq",
    "moto",
    "pubsub",
    "firestore",
    "azurite",
    "cosmos",
    "kafka",
    "cassandra",
)

# Names users think in, mapped to the provider that serves them by default.
ALIASES: dict[str, str] = {
    "postgresql": "postgres",
    "sqs": "moto",
    "dynamodb": "moto",
    "aws": "moto",
    "azure-queues": "azurite",
    "cosmosdb": "cosmos",
}


def canonical(name: str) -> str:
    """Return the provider name for a name or alias.

    Raises:
        ServiceError: The name is unknown.
    """
    if name == "all":
        raise ServiceError("'all' names several services; use expand()")
    key = ALIASES.get(name, name)
    if key not in PROVIDERS:
        known = ", ".join(sorted([*PROVIDERS, *ALIASES, "all"]))
        raise ServiceError(f"unknown service {name!r}; known: {known}")
    return key


def expand(names: list[str] | tuple[str, ...]) -> list[str]:
    """Turn command-line names (aliases, 'all', nothing) into unique provider names."""
    if not names:
        return list(DEFAULT)
    result: list[str] = []
    for name in names:
        for key in PROVIDERS if name == "all" else [canonical(name)]:
            if key not in result:
                result.append(key)
    return result


def local(name: str) -> Service:
    """Return the local-process provider for a name."""
    return PROVIDERS[canonical(name)]()
