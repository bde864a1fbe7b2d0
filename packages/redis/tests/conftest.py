"""Fixtures of the flowcraft-redis tests: Redis servers and the TS client.

``redis_url`` is ``REDIS_URL`` when set, else the server ``flowcraft_services`` starts (as the
contract suite's Redis fixture does), else a private redis-server for this session. Tests that
restart or cripple Redis use ``redis_server`` instead: a server of their own.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import redis
from flowcraft_services.installers import npm_install_locked
from redis_test_support import TS_CLIENT_DIR, RedisServer, TsClient


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    private: RedisServer | None = None
    if not url:
        try:
            from flowcraft_services import resolve
        except ImportError:
            private = RedisServer(tmp_path_factory.mktemp("redis"), persistent=False)
            private.start()
            url = private.url
        else:
            url = resolve("redis").start()["REDIS_URL"]
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        client.ping()
    try:
        yield url
    finally:
        if private is not None:
            private.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Factory of private, started servers (AOF on unless ``persistent=False``); each is
    stopped at teardown."""
    servers: list[RedisServer] = []

    def make(*, persistent: bool = True, config: Mapping[str, str] | None = None) -> RedisServer:
        workdir = tmp_path / f"redis-{len(servers)}"
        server = RedisServer(workdir, persistent=persistent, config=config)
        servers.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="session")
def ts_client() -> TsClient:
    """The TS client script, its npm packages installed on first use."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        why = (
            "Node.js (`node` and `npm`) is not installed, so the TS-client interop tests"
            " cannot run the BullMQ client script; install Node.js 18+ to run them"
        )
        pytest.skip(reason=why)
    npm_install_locked(TS_CLIENT_DIR)
    return TsClient(node)
