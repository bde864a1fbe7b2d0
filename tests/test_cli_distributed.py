"""The distributed commands of the flowcraft CLI: worker, start, status, wait, cancel, resume,
reconcile; argument errors and exit codes."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("click", reason="click is a test dependency (extra 'cli')")

from click.testing import CliRunner

from flowcraft import _cli_distributed
from flowcraft.cli import cli, load_app, resolve_backend
from flowcraft.memory import MemoryAdapter, MemoryBackend

HERE = Path(__file__).parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

APP = ["--app", "cli_distributed_app:app"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def shared_memory(monkeypatch: pytest.MonkeyPatch) -> Iterator[MemoryBackend]:
    """Every command of the test talks to one in-process memory backend."""
    backend = MemoryBackend()
    real = _cli_distributed.resolve_backend

    def resolve(name: str) -> object:
        return functools.partial(MemoryAdapter, backend) if name == "memory" else real(name)

    monkeypatch.setattr(_cli_distributed, "resolve_backend", resolve)
    yield backend


# --------------------------------------------------------------------------- bad input


def test_unknown_backend_is_bad_input(runner: CliRunner) -> None:
    for command in (["worker"], ["start", "cli-sample"], ["status", "r"], ["reconcile"]):
        result = runner.invoke(cli, [*command, "--backend", "nope", *APP])
        assert result.exit_code == 2, (command, result.output)
        assert "unknown backend 'nope'" in result.stderr
        assert "flowcraft.adapters" in result.stderr


def test_backend_and_app_come_from_the_environment(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["status", "r"], env={"FLOWCRAFT_BACKEND": "nope"})
    assert result.exit_code == 2
    assert "Missing option '--app'" in result.stderr
    env = {"FLOWCRAFT_BACKEND": "nope", "FLOWCRAFT_APP": "cli_distributed_app:app"}
    result = runner.invoke(cli, ["status", "r"], env=env)
    assert result.exit_code == 2
    assert "unknown backend 'nope'" in result.stderr
    result = runner.invoke(cli, ["status", "r"], env={"FLOWCRAFT_APP": "cli_distributed_app:app"})
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "unknown"


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("no_colon", "must be 'module:attribute'"),
        ("no_such_module_xyz:app", "cannot import no_such_module_xyz"),
        ("cli_distributed_app:missing", "has no attribute 'missing'"),
        ("cli_distributed_app:no_blueprints", "must provide 'registry' and 'blueprints'"),
    ],
)
def test_bad_app_is_bad_input(runner: CliRunner, app: str, message: str) -> None:
    result = runner.invoke(cli, ["worker", "--app", app])
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_load_app_and_resolve_backend() -> None:
    registry, blueprints = load_app("cli_distributed_app:app")
    assert set(registry) == {"seed", "double", "boom"}
    assert list(blueprints) == ["cli-sample"]
    assert resolve_backend("memory") is MemoryAdapter
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend("nope")


def test_bad_json_options(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["start", "cli-sample", *APP, "--state", "{oops"])
    assert result.exit_code == 2
    assert "--state is not valid JSON" in result.stderr
    result = runner.invoke(cli, ["resume", "r", *APP, "--action", "ok", "--output", "{oops"])
    assert result.exit_code == 2
    assert "--output is not valid JSON" in result.stderr


# --------------------------------------------------------------------------- client commands


def test_client_commands_on_the_memory_backend(
    runner: CliRunner, shared_memory: MemoryBackend
) -> None:
    started = runner.invoke(cli, ["start", "cli-sample", *APP, "--state", '{"x": 1}'])
    assert started.exit_code == 0, started.output
    run_id = started.stdout.strip()
    assert run_id

    status = runner.invoke(cli, ["status", run_id, *APP])
    assert (status.exit_code, status.stdout.strip()) == (0, "running")

    waited = runner.invoke(cli, ["wait", run_id, *APP, "--timeout", "0.05"])
    assert waited.exit_code == 1
    assert "did not finish" in waited.stderr

    resumed = runner.invoke(cli, ["resume", run_id, *APP, "--action", "ok"])
    assert resumed.exit_code == 2
    assert "no node is awaiting" in resumed.stderr

    cancelled = runner.invoke(cli, ["cancel", run_id, *APP])
    assert (cancelled.exit_code, cancelled.stdout.strip()) == (0, "cancelled")
    again = runner.invoke(cli, ["cancel", run_id, *APP])
    assert again.exit_code == 1
    assert "not cancelled" in again.stderr

    status = runner.invoke(cli, ["status", run_id, *APP])
    assert status.stdout.strip() == "cancelled"

    waited = runner.invoke(cli, ["wait", run_id, *APP])
    assert waited.exit_code == 1
    data = json.loads(waited.stdout)
    assert (data["status"], data["runId"]) == ("cancelled", run_id)


def test_unknown_blueprint_and_unknown_run(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["start", "nope", *APP])
    assert result.exit_code == 2
    assert "not registered" in result.stderr
    result = runner.invoke(cli, ["cancel", "no-such-run", *APP])
    assert result.exit_code == 1


def test_reconcile_prints_stats(runner: CliRunner, shared_memory: MemoryBackend) -> None:
    assert runner.invoke(cli, ["start", "cli-sample", *APP]).exit_code == 0
    result = runner.invoke(cli, ["reconcile", *APP, "--stalled-after", "3600"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "scanned_keys": 1,
        "stalled_runs": 0,
        "reconciled_runs": 0,
        "failed_runs": 0,
    }


# --------------------------------------------------------------------------- processes


def _env() -> dict[str, str]:
    paths = [str(HERE), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def test_worker_stops_gracefully_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowcraft", "worker", "--backend", "memory", *APP],
        cwd=ROOT,
        env=_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        line = ""
        while "worker started" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "worker exited before starting"
        assert "worker started (backend memory)" in line
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_main_without_click_exits_2_with_a_hint() -> None:
    code = "import sys; sys.modules['click'] = None; from flowcraft.__main__ import main; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "pip install 'flowcraft-core[cli]'" in proc.stderr


def test_watch_follows_a_run_with_a_progress_bar(
    runner: CliRunner, shared_memory: MemoryBackend
) -> None:
    import asyncio

    from cli_sample import flow

    from flowcraft.distributed import Client, Worker

    sample = {"registry": flow.function_registry, "blueprints": {"cli-sample": flow.to_blueprint()}}

    async def run() -> str:
        worker_adapter = MemoryAdapter(shared_memory, run_events=True, **sample)
        worker = Worker(worker_adapter)
        worker.start()
        client = Client(MemoryAdapter(shared_memory, run_events=True, **sample))
        run_id = await client.start("cli-sample", {"x": 1})
        await client.wait(run_id, timeout=10)
        await worker.stop()
        await worker_adapter.close()
        await client.adapter.close()
        return run_id

    run_id = asyncio.run(run())
    watched = runner.invoke(cli, ["watch", run_id, *APP, "--no-follow"])
    assert "workflow:start" in watched.stdout
    assert "✓" in watched.stdout
    unknown = runner.invoke(cli, ["watch", "nope", *APP, "--no-follow"])
    assert unknown.exit_code == 1
