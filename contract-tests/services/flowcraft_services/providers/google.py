"""Helpers shared by the Google emulators: locating their files, talking to them safely."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from flowcraft_services import installers
from flowcraft_services.errors import ServiceError

PROJECT = "flowcraft-test"
SDK_ROOTS = (Path("/usr/lib/google-cloud-sdk"), Path("/usr/share/google-cloud-sdk"))
_ENV_LOCK = threading.Lock()


def emulator_file(package: str, relative: str) -> Path:
    """Return a file of a Google emulator from the Cloud SDK's Debian package.

    Args:
        package: Debian package that ships it, named in the error if it is missing.
        relative: Path under the SDK root.

    Raises:
        ServiceError: The package is not installed; we never fall back silently.
    """
    for root in SDK_ROOTS:
        candidate = root / relative
        if candidate.exists():
            return candidate
    if not installers.dpkg_installed(package):
        # Google's apt repository is not one of the registries reachable here, so this
        # cannot be installed on demand: say exactly what is missing.
        raise ServiceError(
            f"the Debian package {package} is not installed (it comes from Google's Cloud SDK "
            f"apt repository, or `gcloud components install`); cannot run this emulator"
        )
    raise ServiceError(f"{package} is installed but {relative} was not found under {SDK_ROOTS}")


@contextmanager
def emulator_host(var: str, value: str) -> Iterator[None]:
    """Set an *_EMULATOR_HOST variable while a Google client is constructed.

    Google's clients read these from os.environ only; the lock keeps parallel probes of
    different emulators from seeing each other's values.
    """
    with _ENV_LOCK:
        old = os.environ.get(var)
        os.environ[var] = value
        try:
            yield
        finally:
            if old is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = old


def project(env: Mapping[str, str]) -> str:
    """Return the project id the emulator settings name."""
    return env.get("GOOGLE_CLOUD_PROJECT", PROJECT)
