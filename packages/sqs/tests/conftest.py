"""Servers of the flowcraft-sqs tests: ElasticMQ and DynamoDB Local from ``flowcraft_services``
(the endpoints each provider returns, never ambient ones)."""

from __future__ import annotations

import os
import uuid
from dataclasses import replace

import pytest
from flowcraft_services import resolve

from flowcraft_sqs import SqsSettings


@pytest.fixture(scope="session")
def servers() -> SqsSettings:
    sqs = dict(resolve("elasticmq").start())
    dynamodb = dict(resolve("dynamodb-local").start())
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        os.environ.setdefault(name, sqs[name])
    return SqsSettings(
        table="flowcraft-sqs-tests",
        region=sqs["AWS_DEFAULT_REGION"],
        sqs_endpoint=sqs["AWS_ENDPOINT_URL_SQS"],
        dynamodb_endpoint=dynamodb["AWS_ENDPOINT_URL_DYNAMODB"],
    )


@pytest.fixture
def fresh(servers: SqsSettings) -> SqsSettings:
    """A queue and key prefix of the test's own."""
    tag = f"t{uuid.uuid4().hex[:10]}"
    return replace(servers, queue=tag, key_prefix=f"{tag}/")
