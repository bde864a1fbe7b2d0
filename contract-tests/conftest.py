"""One contract suite for every backend: ``pytest contract-tests --backend <name>``.

The backend's fixture module is ``backends/<name>.py`` (see ``backends/_fixture.py`` for what
it provides); tests never name a backend. A backend
that cannot be provisioned fails the run with the reason (it is never skipped).
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from backends._fixture import BackendFixture
from flowcraft import Blueprint
from flowcraft.distributed import Client, DistributedAdapter, Worker

# Service smoke tests and the service tooling have their own configuration and run separately.
collect_ignore = ["smoke", "services"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--backend", default="memory", help="backend fixture module to test")


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> BackendFixture:
    name = request.config.getoption("--backend")
    module_name = f"backends.{name.replace('-', '_')}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        pytest.fail(f"no fixture module for backend '{name}' ({module_name})", pytrace=False)
    fixture: BackendFixture = module.Fixture()
    try:
        fixture.provision()
    except Exception as exc:
        pytest.fail(f"backend '{name}' cannot be provisioned: {exc!r}", pytrace=False)
    return fixture


class Harness:
    """A deployment of the backend under test with workers and a client."""

    def __init__(self, backend: BackendFixture, *, lease: float = 5.0) -> None:
        self.backend = backend
        self.deployment = backend.deployment(lease=lease)
        self.registry: dict[str, Any] = {}
        self.blueprints: dict[str, Blueprint] = {}
        self.workers: list[Worker] = []
        self.options: dict[str, Any] = {"cancel_poll": 0.05}

    def add(self, flow: Any) -> Blueprint:
        """Register a flow's blueprint and functions."""
        blueprint: Blueprint = flow.to_blueprint()
        self.blueprints[blueprint.id] = blueprint
        self.registry.update(flow.function_registry)
        return blueprint

    def adapter(self, **options: Any) -> DistributedAdapter:
        adapter: DistributedAdapter = self.backend.adapter(
            self.deployment, self.registry, self.blueprints, **{**self.options, **options}
        )
        return adapter

    def worker(self, *, concurrency: int = 8, **options: Any) -> Worker:
        worker = Worker(self.adapter(**options), concurrency=concurrency, timer_interval=0.05)
        worker.start()
        self.workers.append(worker)
        return worker

    @property
    def client(self) -> Client:
        return Client(self.adapter())

    @property
    def stores(self) -> tuple[Any, Any]:
        return self.backend.stores(self.deployment)

    def dead_letters(self) -> list[str]:
        return self.backend.dead_letters(self.deployment)

    async def close(self) -> None:
        for worker in self.workers:
            await _guarded(worker.stop(timeout=5), "stopping a worker")
        await _guarded(self.backend.reset(self.deployment), "resetting the backend")


async def _guarded(step: Any, what: str) -> None:
    # A teardown that hangs is a backend bug: report where every task stands, then fail.
    try:
        await asyncio.wait_for(step, 30)
    except TimeoutError:
        print(f"teardown hung while {what}; tasks:", file=sys.stderr)
        for task in asyncio.all_tasks():
            task.print_stack(limit=8, file=sys.stderr)
        raise


@pytest.fixture
async def harness(backend: BackendFixture) -> AsyncIterator[Harness]:
    h = Harness(backend)
    try:
        yield h
    finally:
        await h.close()


def outputs(context: Mapping[str, Any]) -> dict[str, Any]:
    """The ``_outputs.*`` keys of a context, by node id."""
    return {k[9:]: v for k, v in context.items() if k.startswith("_outputs.")}
