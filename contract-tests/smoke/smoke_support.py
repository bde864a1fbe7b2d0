"""Types shared by the smoke conftest and tests (kept out of conftest.py so tests can import it)."""

from __future__ import annotations

import pytest
from flowcraft_services import Service


class Started:
    """The outcome of starting every selected server."""

    def __init__(
        self, results: dict[str, Service | Exception], seconds: float, preexisting: set[str]
    ) -> None:
        self.results = results
        self.seconds = seconds
        self.preexisting = preexisting

    def get(self, name: str) -> Service:
        """Return a started provider, failing the test (never skipping) if it did not start."""
        result = self.results[name]
        if isinstance(result, Exception):
            pytest.fail(f"{name} did not start: {result}", pytrace=False)
        return result
