"""Client calls shared by the Kafka-protocol providers (Apache Kafka and tansu)."""

from __future__ import annotations

import time


def probe(servers: str) -> None:
    """Fetch cluster metadata from ``servers`` and require at least one broker in it."""
    from confluent_kafka.admin import AdminClient

    # log_level 0: a broker still booting refuses connections, and librdkafka would print
    # every refusal to stderr.
    admin = AdminClient(
        {
            "bootstrap.servers": servers,
            "socket.timeout.ms": 2000,
            "log_level": 0,
        }
    )
    metadata = admin.list_topics(timeout=2)
    if not metadata.brokers:
        raise RuntimeError("no brokers in metadata yet")


def wipe(servers: str, *, timeout: float = 30.0) -> None:
    """Delete every non-internal topic and every consumer group, and wait until they are gone."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": servers})
    groups_future = admin.list_consumer_groups(request_timeout=10)
    groups = [g.group_id for g in groups_future.result().valid]
    if groups:
        for future in admin.delete_consumer_groups(groups, request_timeout=10).values():
            # A group with live members cannot be deleted; the tests' own cleanup handles it.
            try:
                future.result()
            except Exception:
                continue
    topics = [t for t in admin.list_topics(timeout=10).topics if not t.startswith("__")]
    if not topics:
        return
    for future in admin.delete_topics(topics, operation_timeout=10).values():
        future.result()
    # Deletion finishes asynchronously; recreating a topic of the same name before it has
    # would fail, so wait for the metadata to drop them.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        remaining = set(topics) & set(admin.list_topics(timeout=10).topics)
        if not remaining:
            return
        time.sleep(0.2)
