"""Contract-suite fixture of flowcraft-redis with the Streams transport on a Redis Cluster
(provisioning as in ``backends/redis_cluster.py``)."""

from __future__ import annotations

from backends.redis_cluster import ClusterMixin
from backends.redis_streams import Fixture as StreamsFixture

__all__ = ["Fixture"]


class Fixture(ClusterMixin, StreamsFixture):
    """The Streams fixture on a cluster."""

    name = "redis-streams"
