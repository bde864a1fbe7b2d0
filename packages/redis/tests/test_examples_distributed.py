"""examples/distributed run as its README says: a worker command, the client, the reconciler."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "distributed"


@pytest.mark.parametrize("backend", ["redis", "redis-streams"])
def test_the_distributed_example_runs_with_a_worker_command(redis_url: str, backend: str) -> None:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "FLOWCRAFT_REDIS_QUEUE_NAME": f"example-{uuid.uuid4().hex[:8]}",
        "PYTHONPATH": str(EXAMPLE),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "flowcraft", "worker", "--backend", backend, "--app", "app:app"],
        cwd=EXAMPLE,
        env=env,
    )
    try:
        client = EXAMPLE / "client.py"
        if backend == "redis-streams":
            source = client.read_text().replace("RedisAdapter", "RedisStreamsAdapter")
            run = [sys.executable, "-c", source]
        else:
            run = [sys.executable, str(client)]
        done = subprocess.run(
            run, cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        assert [line.split()[:2] for line in lines] == [
            ["completed", "published"],
            ["completed", "quarantined"],
            ["completed", "quarantined"],
        ]
        reconcile = subprocess.run(
            [sys.executable, "reconcile.py", "--once"],
            cwd=EXAMPLE,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert reconcile.returncode == 0, reconcile.stderr
        assert "Reconciliation complete. Scanned:" in reconcile.stdout
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=120)
