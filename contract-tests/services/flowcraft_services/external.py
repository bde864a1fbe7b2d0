"""A server someone else runs, named by environment variables: nothing to start or stop."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import ClassVar

from . import procs
from .base import Service
from .errors import ServiceError
from .state import RunState


class ExternalService(Service):
    """Wraps a provider class; uses the settings already in the environment (e.g. from CI).

    Its state is kept in memory only, so it never overwrites the record of a server this
    machine started.
    """

    mode: ClassVar[str] = "external"

    def __init__(self, provider: type[Service]) -> None:
        self.provider = provider
        self.name = provider.name  # type: ignore[misc]
        self.env_vars = provider.env_vars  # type: ignore[misc]
        self.state = None

    def probe(self, env: Mapping[str, str]) -> None:  # type: ignore[override]
        """Delegate to the wrapped provider's client call."""
        self.provider.probe(env)

    def wipe(self, env: Mapping[str, str]) -> None:  # type: ignore[override]
        """Delegate to the wrapped provider's reset."""
        self.provider.wipe(env)

    def start(self) -> dict[str, str]:
        """Check the configured server answers; start nothing."""
        env = {k: os.environ[k] for k in self.env_vars if k in os.environ}
        procs.wait_until(
            lambda: self.provider.probe(env),
            what=f"{self.name} (external, from ${self.env_vars[0]})",
            timeout=30,
        )
        self.state = RunState(name=self.name, mode="external", env=env)
        return env

    def stop(self) -> None:
        """Nothing was started here, so nothing is stopped."""
        self.state = None

    @property
    def env(self) -> dict[str, str]:
        """Settings from the environment."""
        if self.state is None:
            raise ServiceError(f"{self.name}: call start() first")
        return dict(self.state.env)
