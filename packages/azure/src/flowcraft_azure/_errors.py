"""Azure client errors translated into Flowcraft's, where they occur."""

from __future__ import annotations

import aiohttp
from azure.core import exceptions as azure_errors

from flowcraft.backend import translate_errors

__all__ = ["cosmos_errors", "queue_errors"]

_RETRYABLE: tuple[type[BaseException], ...] = (
    azure_errors.ServiceRequestError,
    azure_errors.ServiceResponseError,
    aiohttp.ClientConnectionError,
    ConnectionError,
    TimeoutError,
)
"""Failures after which a reconnect and retry can succeed (the server is down or restarting)."""

queue_errors = translate_errors("azure storage queue", _RETRYABLE, (azure_errors.AzureError,))
cosmos_errors = translate_errors("cosmos", _RETRYABLE, (azure_errors.AzureError,))
