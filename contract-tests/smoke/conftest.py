"""Start every server under test once, in parallel, and hand each test its provider.

Which servers: FLOWCRAFT_SMOKE_SERVICES (names separated by spaces or commas, default: all).
How: flowcraft_services.resolve (env vars > Docker > local processes).
Servers this session started are stopped at the end unless FLOWCRAFT_SMOKE_KEEP=1; servers
that were already running are reused and left running.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator

import pytest
from flowcraft_services import from_state
from flowcraft_services.cli import start_many
from flowcraft_services.paths import state_dir
from flowcraft_services.registry import expand
from smoke_support import Started

# Set once the servers were started in this run, so the summary never shows an old report.
_REPORTED: list[bool] = []


def selected() -> list[str]:
    """Service names chosen for this run."""
    raw = os.environ.get("FLOWCRAFT_SMOKE_SERVICES", "all")
    return expand([n for n in re.split(r"[\s,]+", raw) if n])


@pytest.fixture(scope="session")
def started() -> Iterator[Started]:
    """Start all selected servers in parallel once per session."""
    names = selected()
    preexisting = {n for n in names if from_state(n) is not None}
    began = time.monotonic()
    results = start_many(names)
    outcome = Started(results, time.monotonic() - began, preexisting)
    _write_report(outcome)
    _REPORTED.append(True)
    yield outcome
    if os.environ.get("FLOWCRAFT_SMOKE_KEEP") == "1":
        return
    for name, result in results.items():
        if name not in preexisting and not isinstance(result, Exception):
            result.stop()


def _write_report(outcome: Started) -> None:
    """Record start times and memory, for docs/services.md and the CI log."""
    report: dict[str, object] = {"parallel_start_seconds": round(outcome.seconds, 1)}
    for name, result in outcome.results.items():
        report[name] = (
            {"error": str(result)[:500]}
            if isinstance(result, Exception)
            else result.describe() | {"env": None}
        )
    (state_dir() / "smoke-report.json").write_text(json.dumps(report, indent=2))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print each server's start time and memory after the tests."""
    path = state_dir() / "smoke-report.json"
    if not _REPORTED or not path.exists():
        return
    report = json.loads(path.read_text())
    terminalreporter.section("servers")
    seconds = report.pop("parallel_start_seconds")
    terminalreporter.write_line(f"all started in parallel in {seconds} s")
    for name, info in report.items():
        if "error" in info:
            terminalreporter.write_line(f"{name:15} FAILED: {info['error'][:200]}")
        else:
            terminalreporter.write_line(
                f"{name:15} {info.get('mode', '?'):8} start {info.get('start_seconds', 0):6.1f} s"
                f"  rss {info.get('rss_mb', 0):5} MB"
            )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise every test that takes `service_name` over the selected servers."""
    if "service_name" in metafunc.fixturenames:
        metafunc.parametrize("service_name", selected())
