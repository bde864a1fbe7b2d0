"""Servers of the flowcraft-rabbitmq tests: those of ``flowcraft_services`` (or ``AMQP_URL``,
``DATABASE_URL``), and a private RabbitMQ node with a lowered ``consumer_timeout``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from flowcraft_services import resolve
from flowcraft_services.base import Launch
from flowcraft_services.providers.rabbitmq import RabbitMQService

CONSUMER_TIMEOUT_MS = 4000


@pytest.fixture(scope="session")
def database_url() -> str:
    return os.environ.get("DATABASE_URL") or resolve("postgres").start()["DATABASE_URL"]


class ShortTimeoutRabbit(RabbitMQService):
    """A node of its own: 3.10 reads ``consumer_timeout`` node-wide, and the shared node must
    keep its default. Channels check it on their tick, 60 s by default, so that is lowered
    too."""

    name: ClassVar[str] = "rabbitmq-short-timeout"

    def launch(self, workdir: Path) -> Launch:
        advanced = workdir / "advanced.config"
        advanced.write_text(
            f"[{{rabbit, [{{consumer_timeout, {CONSUMER_TIMEOUT_MS}}},"
            " {channel_tick_interval, 500}]}].\n"
        )
        # The start script reads it from the environment the provider passes on.
        os.environ["RABBITMQ_ADVANCED_CONFIG_FILE"] = str(advanced)
        try:
            return super().launch(workdir)
        finally:
            del os.environ["RABBITMQ_ADVANCED_CONFIG_FILE"]


@pytest.fixture(scope="session")
def short_timeout_amqp_url() -> Iterator[str]:
    service = ShortTimeoutRabbit()
    url = service.start()["AMQP_URL"]
    try:
        yield url
    finally:
        service.stop()
