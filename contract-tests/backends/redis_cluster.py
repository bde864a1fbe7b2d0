"""Contract-suite fixture of flowcraft-redis with the BullMQ transport on a Redis Cluster.

Provisioning: ``REDIS_CLUSTER_URL`` (any node) if set, else a local 3-master cluster started by
``flowcraft_services``. Each test's deployment has a hash tag of its own, so the tests spread
over the masters.
"""

from __future__ import annotations

from typing import Any

import redis as sync_redis

from backends.redis import Deployment
from backends.redis import Fixture as RedisFixture
from flowcraft_redis import RedisSettings

__all__ = ["ClusterMixin", "Fixture"]


class ClusterMixin:
    """What a Redis fixture changes for a cluster: cluster settings, and blocking clients
    connected to the master of the deployment's slot."""

    name = "redis"
    service = "redis-cluster"
    url_variable = "REDIS_CLUSTER_URL"
    url: str

    def settings(self) -> RedisSettings:
        """Cluster settings from the node in ``url``; a deployment's queue name (the hash
        tag) is its own."""
        return RedisSettings(url=self.url, cluster=True)

    def sync(self, deployment: Deployment, **options: Any) -> sync_redis.Redis:
        """A blocking client to the master serving the deployment's slot."""
        with sync_redis.RedisCluster.from_url(self.url) as cluster:
            node = cluster.get_node_from_key(deployment.settings.tag)
            return sync_redis.Redis(host=node.host, port=node.port, **options)


class Fixture(ClusterMixin, RedisFixture):
    """The BullMQ fixture on a cluster."""
