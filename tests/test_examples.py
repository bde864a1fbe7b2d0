"""The scripts in ``examples/`` run to completion as plain ``python examples/<script>.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("script", "expected_lines"),
    [
        (
            "content_moderation.py",
            [
                "moderation finished: 3/3 runs completed",
                "  decision: approve (toxicity=0.00, spam=0.00) -> published post-1",
                "  decision: flag (toxicity=0.00, spam=1.00)"
                " -> queued post-2 for a human moderator",
                "  fallback: spam failed for good, running spam_rules",
                "  retry: toxicity attempt 2 failed",
            ],
        ),
        (
            "human_approval.py",
            [
                "first run: awaiting, waiting at ['review']",
                "approved run: completed",
                "  announce: announced: published 'Announcing Flowcraft 1.0' (approved by ada)",
                "rejected run: completed",
                "  request_changes: sent back to the author: Add a changelog",
                "human approval demo finished",
            ],
        ),
    ],
)
def test_example_runs_and_prints_its_result(script: str, expected_lines: list[str]) -> None:
    done = _run(script)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for line in expected_lines:
        assert line in lines, f"{line!r} not printed by {script}:\n{done.stdout}"


def test_examples_readme_mentions_every_script() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    for script in sorted(EXAMPLES.glob("*.py")):
        assert script.name in readme
