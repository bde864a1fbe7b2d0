"""Each server answers its backend's own Python client, resets to empty, and stays on loopback."""

from __future__ import annotations

import pytest
from flowcraft_services import procs
from roundtrips import LEFTOVERS, ROUNDTRIPS
from smoke_support import Started


def test_roundtrip(started: Started, service_name: str) -> None:
    """Write and read back through the real client."""
    service = started.get(service_name)
    ROUNDTRIPS[service_name](service.env)


def test_reset_empties(started: Started, service_name: str) -> None:
    """After a round-trip, reset() leaves nothing behind and the server still answers."""
    service = started.get(service_name)
    ROUNDTRIPS[service_name](service.env)
    assert LEFTOVERS[service_name](service.env), "the round-trip should leave data behind"
    service.reset()
    assert LEFTOVERS[service_name](service.env) == []
    service.ready()


def test_listens_on_loopback_only(started: Started, service_name: str) -> None:
    """Nothing a local provider started listens beyond 127.0.0.1 / ::1."""
    service = started.get(service_name)
    if service.mode != "local" or service.state is None:
        pytest.skip(reason=f"{service_name} runs in {service.mode} mode; ports are Docker's")
    addresses = procs.listening_addresses(service.state.processes)
    assert addresses, "the server should be listening somewhere"
    wide = [a for a in addresses if not procs.is_loopback(a[0])]
    assert wide == []
