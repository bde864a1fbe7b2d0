"""RabbitMQ from Debian's rabbitmq-server package, as a private node."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import psutil

from flowcraft_services import installers, procs
from flowcraft_services.base import Launch, LocalService
from flowcraft_services.errors import ServiceError
from flowcraft_services.procs import ProcessRef

# The Debian wrapper in /usr/sbin switches to the system `rabbitmq` user and its fixed paths;
# the real script lets us run a private node anywhere.
SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


class RabbitMQService(LocalService):
    """A private node: own ports, own epmd, own data dir, guest/guest on loopback only."""

    name: ClassVar[str] = "rabbitmq"
    summary: ClassVar[str] = "RabbitMQ (Debian rabbitmq-server, private node)"
    env_vars: ClassVar[tuple[str, ...]] = ("AMQP_URL",)
    start_timeout: ClassVar[float] = 90.0

    def install(self) -> None:
        """Install rabbitmq-server (and Erlang) from Debian if missing."""
        installers.apt_install(["rabbitmq-server"])
        if not SERVER.exists():
            raise ServiceError(f"{SERVER} is missing although rabbitmq-server is installed")

    def launch(self, workdir: Path) -> Launch:
        """Start the node with every listener, epmd included, bound to 127.0.0.1."""
        port, dist_port, epmd_port = procs.free_port(), procs.free_port(), procs.free_port()
        (workdir / "enabled_plugins").write_text("[].\n")
        (workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {procs.LOOPBACK}:{port}\n"
            "loopback_users.guest = true\n"
            "log.console = true\nlog.console.level = warning\nlog.file = false\n"
        )
        cookie = workdir / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        env = {
            "HOME": str(workdir),
            "RABBITMQ_NODENAME": f"flowcraft{port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": procs.LOOPBACK,
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "ERL_EPMD_ADDRESS": procs.LOOPBACK,
            "ERL_EPMD_PORT": str(epmd_port),
            "RABBITMQ_BASE": str(workdir),
            "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(workdir / "log"),
            "RABBITMQ_PID_FILE": str(workdir / "rabbitmq.pid"),
            # Erlang distribution listens on all interfaces unless told otherwise.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }
        proc = procs.spawn([str(SERVER)], log_path=self.log_path, env=env, cwd=workdir)
        return Launch(
            [proc],
            {"AMQP_URL": f"amqp://guest:guest@{procs.LOOPBACK}:{port}/%2F"},
            {"port": port, "dist_port": dist_port, "epmd_port": epmd_port},
        )

    def after_ready(self, launch: Launch) -> None:
        """Record the Erlang VM first (SIGTERM to it is a clean stop) and the node's epmd.

        The start script keeps running as the VM's parent, and epmd detaches, so epmd is not
        a descendant of anything we started and must be recorded by PID.
        """
        script = launch.processes[0].process()
        if script is not None:
            for child in script.children(recursive=True):
                if child.name().startswith("beam"):
                    launch.processes.insert(0, ProcessRef.of(child.pid))
                    break
        epmd_port = launch.extra["epmd_port"]
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == epmd_port:
                if conn.pid is None:
                    continue
                with contextlib.suppress(psutil.NoSuchProcess):
                    if psutil.Process(conn.pid).name() == "epmd":
                        launch.processes.append(ProcessRef.of(conn.pid))
                        return

    @classmethod
    def probe(cls, env: Mapping[str, str]) -> None:
        """Open a connection and a channel."""
        import pika

        params = pika.URLParameters(env["AMQP_URL"])
        params.socket_timeout = 2
        params.connection_attempts = 1
        connection = pika.BlockingConnection(params)
        try:
            connection.channel().close()
        finally:
            connection.close()

    @classmethod
    def wipe(cls, env: Mapping[str, str]) -> None:
        """Delete every queue and non-default exchange by recreating the default vhost.

        AMQP itself cannot list queues; deleting and recreating the vhost through
        rabbitmqctl would need the node's cookie, so we drop what the broker reports.
        """
        _reset_with_ctl(env)


def _reset_with_ctl(env: Mapping[str, str]) -> None:
    """Delete and recreate vhost "/" with rabbitmqctl, on the node this checkout started.

    AMQP cannot list queues, so the reset goes through the node's own CLI: directly, with the
    private node's cookie, or inside the container in Docker mode.
    """
    from flowcraft_services.state import RunState

    state = RunState.load("rabbitmq")
    if state is None or state.env.get("AMQP_URL") != env["AMQP_URL"]:
        raise ServiceError(
            "rabbitmq reset works on a broker started by flowcraft_services; "
            "for an external broker delete your queues yourself"
        )
    commands = [
        ["delete_vhost", "/"],
        ["add_vhost", "/"],
        ["set_permissions", "-p", "/", "guest", ".*", ".*", ".*"],
    ]
    if state.mode == "docker":
        for command in commands:
            installers.run(
                ["docker", "exec", state.containers[0], "rabbitmqctl", *command],
                what="rabbitmqctl in the container",
            )
        return
    extra = state.extra
    ctl_env = {
        "HOME": state.workdir,
        "ERL_EPMD_PORT": str(extra["epmd_port"]),
        "RABBITMQ_NODENAME": f"flowcraft{extra['port']}@localhost",
    }
    ctl = str(SERVER.parent / "rabbitmqctl")
    for command in commands:
        installers.run(
            [ctl, "-n", ctl_env["RABBITMQ_NODENAME"], *command], what="rabbitmqctl", env=ctl_env
        )
