"""Settings and client calls shared by the SQS and DynamoDB providers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

REGION = "us-east-1"

# Emulators accept any credentials; boto3 still insists that some are configured.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": REGION,
}


def client(service: str, endpoint: str) -> Any:
    """Return a boto3 client for an emulator endpoint, with retries kept short for probes."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}),
    )


def sqs_endpoint(env: Mapping[str, str]) -> str:
    """Return the SQS endpoint from a provider's settings."""
    return env.get("AWS_ENDPOINT_URL_SQS") or env["AWS_ENDPOINT_URL"]


def dynamodb_endpoint(env: Mapping[str, str]) -> str:
    """Return the DynamoDB endpoint from a provider's settings."""
    return env.get("AWS_ENDPOINT_URL_DYNAMODB") or env["AWS_ENDPOINT_URL"]


def delete_all_queues(endpoint: str) -> None:
    """Delete every SQS queue."""
    sqs = client("sqs", endpoint)
    for url in sqs.list_queues().get("QueueUrls", []):
        sqs.delete_queue(QueueUrl=url)


def delete_all_tables(endpoint: str) -> None:
    """Delete every DynamoDB table."""
    ddb = client("dynamodb", endpoint)
    for page in ddb.get_paginator("list_tables").paginate():
        for table in page.get("TableNames", []):
            ddb.delete_table(TableName=table)
