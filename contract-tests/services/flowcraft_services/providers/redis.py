"""Redis from Debian's redis-server package: standalone, a 3-master cluster, and TLS."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from flowcraft_services import installers, procs
from flowcraft_services.base import Launch, LocalService


class RedisService(LocalService):
    """A private redis-server with no persistence, on a free loopback port."""

    name: ClassVar[str] = "redis"
    summary: ClassVar[str] = "Redis (Debian redis-server)"
    env_vars: ClassVar[tuple[str, ...]] = ("REDIS_URL",)
    start_timeout: ClassVar[float] = 30.0

    def install(self) -> None:
        """Install redis-server from Debian if missing."""
        installers.apt_install(["redis-server"])

    def launch(self, workdir: Path) -> Launch:
        """Run redis-server in the foreground so its PID is the one we record."""
        port = procs.free_port()
        proc = procs.spawn(_argv(workdir, "--port", str(port)), log_path=self.log_path)
        return Launch([proc], {"REDIS_URL": f"redis://{procs.LOOPBACK}:{port}/0"})

    @classmethod
    def probe(cls, env: Mapping[str, str]) -> None:
        """PING the server."""
        import redis

        with redis.Redis.from_url(env["REDIS_URL"], socket_timeout=2) as client:
            client.ping()

    @classmethod
    def wipe(cls, env: Mapping[str, str]) -> None:
        """FLUSHALL: every database, not only the one in the URL."""
        import redis

        with redis.Redis.from_url(env["REDIS_URL"], socket_timeout=5) as client:
            client.flushall()


def _argv(workdir: Path, *extra: str) -> list[str]:
    return [
        installers.require_tool("redis-server", "apt-get install redis-server"),
        *extra,
        "--bind",
        procs.LOOPBACK,
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        str(workdir),
        "--protected-mode",
        "yes",
    ]


_SLOTS = 16384


class RedisClusterService(RedisService):
    """Three redis-server masters in cluster mode (no replicas), their slots split evenly;
    ``REDIS_CLUSTER_URL`` names the first, ``REDIS_CLUSTER_NODES`` lists all
    (``host:port@busport``)."""

    name: ClassVar[str] = "redis-cluster"
    summary: ClassVar[str] = "Redis Cluster, 3 masters (Debian redis-server)"
    env_vars: ClassVar[tuple[str, ...]] = ("REDIS_CLUSTER_URL", "REDIS_CLUSTER_NODES")
    masters: ClassVar[int] = 3
    start_timeout: ClassVar[float] = 60.0

    def launch(self, workdir: Path) -> Launch:
        """Start the nodes; ``probe`` joins them into a cluster once they answer."""
        processes, nodes = [], []
        for index in range(self.masters):
            port, bus = procs.free_port(), procs.free_port()
            node_dir = workdir / f"node{index}"
            node_dir.mkdir()
            argv = _argv(
                node_dir,
                "--port",
                str(port),
                "--cluster-enabled",
                "yes",
                # The bus port is the client port + 10000 by default, past 65535 for some.
                "--cluster-port",
                str(bus),
                "--cluster-config-file",
                str(node_dir / "nodes.conf"),
                "--cluster-node-timeout",
                "5000",
            )
            log = self.log_path if index == 0 else workdir / f"node{index}.log"
            processes.append(procs.spawn(argv, log_path=log))
            nodes.append(f"{procs.LOOPBACK}:{port}@{bus}")
        first = nodes[0].split("@")[0]
        return Launch(
            processes,
            {"REDIS_CLUSTER_URL": f"redis://{first}/0", "REDIS_CLUSTER_NODES": ",".join(nodes)},
        )

    @classmethod
    def probe(cls, env: Mapping[str, str]) -> None:
        """Assign each node its share of the slots and introduce them (both repeatable), then
        require every node to see the whole cluster up."""
        import redis
        from redis.exceptions import ResponseError

        nodes = [_node(n) for n in env["REDIS_CLUSTER_NODES"].split(",")]
        share = _SLOTS // len(nodes)
        for index, (host, port, _) in enumerate(nodes):
            first = index * share
            last = _SLOTS - 1 if index == len(nodes) - 1 else first + share - 1
            with redis.Redis(host=host, port=port, socket_timeout=2) as client:
                try:
                    client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
                except ResponseError as exc:
                    if "busy" not in str(exc).lower():
                        raise
                if index > 0:
                    client.execute_command("CLUSTER", "MEET", *nodes[0])
        for host, port, _ in nodes:
            with redis.Redis(host=host, port=port, socket_timeout=2, decode_responses=True) as c:
                info = dict(
                    line.split(":", 1) for line in c.execute_command("CLUSTER", "INFO").split()
                )
                # cluster_known_nodes counts handshakes in progress too; cluster_size does not.
                if info.get("cluster_state") != "ok" or int(info["cluster_size"]) != len(nodes):
                    raise ConnectionError(f"cluster not formed yet at {host}:{port}: {info}")

    @classmethod
    def wipe(cls, env: Mapping[str, str]) -> None:
        """FLUSHALL on every node."""
        import redis

        for node in env["REDIS_CLUSTER_NODES"].split(","):
            host, port, _ = _node(node)
            with redis.Redis(host=host, port=port, socket_timeout=5) as client:
                client.flushall()


def _node(spec: str) -> tuple[str, int, int]:
    """``host:port@busport`` as its parts."""
    address, bus = spec.split("@")
    host, port = address.rsplit(":", 1)
    return host, int(port), int(bus)


class RedisTLSService(RedisService):
    """A redis-server that speaks TLS only, with a self-signed certificate for 127.0.0.1:
    ``REDIS_TLS_URL`` (``rediss://``, the CA file in its query) and ``REDIS_TLS_CA``."""

    name: ClassVar[str] = "redis-tls"
    summary: ClassVar[str] = "Redis over TLS, self-signed (Debian redis-server)"
    env_vars: ClassVar[tuple[str, ...]] = ("REDIS_TLS_URL", "REDIS_TLS_CA")

    def launch(self, workdir: Path) -> Launch:
        """Make the certificate (openssl), then run redis-server on a TLS port alone."""
        cert, key = workdir / "redis.crt", workdir / "redis.key"
        openssl = installers.require_tool("openssl", "apt-get install openssl")
        subprocess.run(
            [
                openssl,
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=flowcraft-test",
                "-addext",
                f"subjectAltName=IP:{procs.LOOPBACK}",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
        )
        port = procs.free_port()
        argv = _argv(
            workdir,
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(cert),
            "--tls-auth-clients",
            "no",
        )
        proc = procs.spawn(argv, log_path=self.log_path)
        url = f"rediss://{procs.LOOPBACK}:{port}/0?ssl_ca_certs={cert}"
        return Launch([proc], {"REDIS_TLS_URL": url, "REDIS_TLS_CA": str(cert)})

    @classmethod
    def probe(cls, env: Mapping[str, str]) -> None:
        """PING over TLS, checking the certificate."""
        import redis

        with redis.Redis.from_url(env["REDIS_TLS_URL"], socket_timeout=2) as client:
            client.ping()

    @classmethod
    def wipe(cls, env: Mapping[str, str]) -> None:
        """FLUSHALL."""
        import redis

        with redis.Redis.from_url(env["REDIS_TLS_URL"], socket_timeout=5) as client:
            client.flushall()
