"""Google's Firestore emulator (native mode), from the Cloud SDK Debian package."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from flowcraft_services import installers, procs
from flowcraft_services.base import Launch, LocalService

from . import google

PACKAGE = "google-cloud-cli-firestore-emulator"
JAR = "platform/cloud-firestore-emulator/cloud-firestore-emulator.jar"


class FirestoreService(LocalService):
    """The Firestore emulator JVM, started directly (gcloud would orphan it when killed)."""

    name: ClassVar[str] = "firestore"
    summary: ClassVar[str] = "Google Firestore emulator (google-cloud-cli-firestore-emulator)"
    env_vars: ClassVar[tuple[str, ...]] = ("FIRESTORE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")
    start_timeout: ClassVar[float] = 90.0

    def install(self) -> None:
        """Check the emulator jar and Java are there."""
        google.emulator_file(PACKAGE, JAR)
        installers.java()

    def launch(self, workdir: Path) -> Launch:
        """Start the emulator in Firestore native mode on a free loopback port."""
        jar = google.emulator_file(PACKAGE, JAR)
        port = procs.free_port()
        proc = procs.spawn(
            [
                installers.java(),
                "-Xms64m",
                "-Xmx512m",
                "-cp",
                str(jar),
                "com.google.cloud.datastore.emulator.firestore.CloudFirestore",
                "start",
                f"--host={procs.LOOPBACK}",
                f"--port={port}",
                "--database-mode=firestore-native",
            ],
            log_path=self.log_path,
            cwd=workdir,
        )
        return Launch(
            [proc],
            {
                "FIRESTORE_EMULATOR_HOST": f"{procs.LOOPBACK}:{port}",
                "GOOGLE_CLOUD_PROJECT": google.PROJECT,
            },
        )

    @classmethod
    def probe(cls, env: Mapping[str, str]) -> None:
        """Read a document that does not exist: a full round-trip through the client."""
        from google.cloud import firestore

        with google.emulator_host("FIRESTORE_EMULATOR_HOST", env["FIRESTORE_EMULATOR_HOST"]):
            client = firestore.Client(project=google.project(env))
        client.collection("_flowcraft_probe").document("probe").get(timeout=2)
        client.close()  # type: ignore[no-untyped-call]

    @classmethod
    def wipe(cls, env: Mapping[str, str]) -> None:
        """Use the emulator's endpoint that deletes every document of the database."""
        import requests

        host = env["FIRESTORE_EMULATOR_HOST"]
        url = (
            f"http://{host}/emulator/v1/projects/{google.project(env)}"
            "/databases/(default)/documents"
        )
        requests.delete(url, timeout=10).raise_for_status()
