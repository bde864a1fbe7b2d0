"""Choosing how a server is provided: env vars, then Docker, then local processes."""

from __future__ import annotations

import os

from .base import Service
from .docker import SPECS, ContainerService, docker_available
from .errors import ServiceError
from .external import ExternalService
from .registry import PROVIDERS, canonical
from .state import RunState

MODES = ("auto", "local", "docker", "external")


def resolve(name: str, mode: str | None = None) -> Service:
    """Return the provider to use for a service name or alias.

    Order, for mode "auto" (the default, or FLOWCRAFT_SERVICES_MODE):
      1. a server this checkout already started (its state file says how);
      2. the provider's first env var is set: use that server, start nothing;
      3. a Docker engine answers `docker info`: testcontainers;
      4. local processes.

    Args:
        name: Provider name or alias ("sqs", "postgresql", ...).
        mode: "auto", "local", "docker" or "external"; None reads FLOWCRAFT_SERVICES_MODE.

    Raises:
        ServiceError: Unknown name or mode, or the forced mode cannot serve this name.
    """
    key = canonical(name)
    provider = PROVIDERS[key]
    mode = mode or os.environ.get("FLOWCRAFT_SERVICES_MODE", "auto")
    if mode not in MODES:
        raise ServiceError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    state = RunState.load(key)
    if state is not None and mode in ("auto", state.mode):
        return ContainerService(provider) if state.mode == "docker" else provider()
    if mode == "external" or (mode == "auto" and os.environ.get(provider.env_vars[0])):
        if not os.environ.get(provider.env_vars[0]):
            raise ServiceError(f"{key}: mode external needs {provider.env_vars[0]} to be set")
        return ExternalService(provider)
    if mode == "docker" or (mode == "auto" and key in SPECS and docker_available()):
        return ContainerService(provider)
    return provider()


def from_state(name: str) -> Service | None:
    """Return the provider that started a recorded server, for `down` and `status`."""
    state = RunState.load(name)
    if state is None or name not in PROVIDERS:
        return None
    return ContainerService(PROVIDERS[name]) if state.mode == "docker" else PROVIDERS[name]()
