"""Google's Pub/Sub emulator, from the Cloud SDK Debian package."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from flowcraft_services import installers, procs
from flowcraft_services.base import Launch, LocalService

from . import google

PACKAGE = "google-cloud-cli-pubsub-emulator"


class PubSubService(LocalService):
    """The Pub/Sub emulator JVM (its start script execs Java, so its PID is the JVM's)."""

    name: ClassVar[str] = "pubsub"
    summary: ClassVar[str] = "Google Pub/Sub emulator (google-cloud-cli-pubsub-emulator)"
    env_vars: ClassVar[tuple[str, ...]] = (
        "PUBSUB_EMULATOR_HOST",
        "PUBSUB_PROJECT_ID",
        "GOOGLE_CLOUD_PROJECT",
    )
    start_timeout: ClassVar[float] = 90.0

    def install(self) -> None:
        """Check the emulator and Java are there; neither can be fetched from PyPI or npm."""
        google.emulator_file(PACKAGE, "platform/pubsub-emulator/bin/cloud-pubsub-emulator")
        installers.java()

    def launch(self, workdir: Path) -> Launch:
        """Start the emulator on a free loopback port."""
        script = google.emulator_file(PACKAGE, "platform/pubsub-emulator/bin/cloud-pubsub-emulator")
        port = procs.free_port()
        proc = procs.spawn(
            [str(script), f"--host={procs.LOOPBACK}", f"--port={port}"],
            log_path=self.log_path,
            cwd=workdir,
            env={"JAVA_TOOL_OPTIONS": "-Xms64m -Xmx512m"},
        )
        return Launch(
            [proc],
            {
                "PUBSUB_EMULATOR_HOST": f"{procs.LOOPBACK}:{port}",
                "PUBSUB_PROJECT_ID": google.PROJECT,
                "GOOGLE_CLOUD_PROJECT": google.PROJECT,
            },
        )

    @classmethod
    def probe(cls, env: Mapping[str, str]) -> None:
        """List the project's topics through the Python client."""
        from google.cloud import pubsub_v1  # type: ignore[attr-defined]

        with google.emulator_host("PUBSUB_EMULATOR_HOST", env["PUBSUB_EMULATOR_HOST"]):
            publisher = pubsub_v1.PublisherClient()
        list(
            publisher.list_topics(request={"project": f"projects/{google.project(env)}"}, timeout=2)
        )

    @classmethod
    def wipe(cls, env: Mapping[str, str]) -> None:
        """Delete every subscription and topic of every project the tests used.

        The emulator's POST /reset is not in every release, so we delete through the API.
        """
        from google.cloud import pubsub_v1  # type: ignore[attr-defined]

        project_path = f"projects/{google.project(env)}"
        with google.emulator_host("PUBSUB_EMULATOR_HOST", env["PUBSUB_EMULATOR_HOST"]):
            publisher = pubsub_v1.PublisherClient()
            subscriber = pubsub_v1.SubscriberClient()
        for sub in subscriber.list_subscriptions(request={"project": project_path}):
            subscriber.delete_subscription(request={"subscription": sub.name})
        for topic in publisher.list_topics(request={"project": project_path}):
            publisher.delete_topic(request={"topic": topic.name})
        subscriber.close()
