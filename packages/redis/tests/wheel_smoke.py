"""Run the distributed example from wheels installed in a fresh environment (nox ``wheels``).

``python wheel_smoke.py <python of the fresh environment>``: starts (or reuses) the Redis of
``flowcraft_services``, then runs ``flowcraft worker --backend redis-streams`` and ``python -m
flowcraft worker --backend redis`` with the fresh environment's interpreter, and the example's
client against each. Exits non-zero when a command fails: a file or dependency missing from a
wheel shows here, not in the editable installs every other session uses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from flowcraft_services import resolve

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "distributed"


def main(python: str) -> int:
    url = os.environ.get("REDIS_URL") or resolve("redis").start()["REDIS_URL"]
    flowcraft = str(Path(python).parent / "flowcraft")
    commands = {
        "redis-streams": [flowcraft, "worker", "--backend", "redis-streams", "--app", "app:app"],
        "redis": [python, "-m", "flowcraft", "worker", "--backend", "redis", "--app", "app:app"],
    }
    for backend, worker_command in commands.items():
        env = {
            **os.environ,
            "REDIS_URL": url,
            "FLOWCRAFT_REDIS_QUEUE_NAME": f"wheels-{uuid.uuid4().hex[:8]}",
            "PYTHONPATH": str(EXAMPLE),
        }
        source = (EXAMPLE / "client.py").read_text()
        if backend == "redis-streams":
            source = source.replace("RedisAdapter", "RedisStreamsAdapter")
        worker = subprocess.Popen(worker_command, cwd=EXAMPLE, env=env)
        try:
            client = subprocess.run([python, "-c", source], cwd=EXAMPLE, env=env, timeout=300)
        finally:
            worker.send_signal(signal.SIGTERM)
            stopped = worker.wait(timeout=120)
        if client.returncode != 0 or stopped != 0:
            print(f"{backend}: client exited {client.returncode}, worker {stopped}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
