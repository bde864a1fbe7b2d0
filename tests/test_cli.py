"""The flowcraft CLI (click's CliRunner): run, graph, lint, config and exit codes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("click", reason="click is a test dependency (extra 'cli')")

from click.testing import CliRunner

from flowcraft.cli import cli

HERE = Path(__file__).parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

BLUEPRINT = {
    "id": "cli-json",
    "nodes": [
        {"id": "seed", "uses": "seed", "params": {"value": 5}},
        {"id": "double", "uses": "double"},
    ],
    "edges": [{"source": "seed", "target": "double"}],
}


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def blueprint_file(tmp_path: Path) -> Path:
    path = tmp_path / "bp.json"
    path.write_text(json.dumps(BLUEPRINT))
    return path


def test_run_a_flow_by_module_attr(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["run", "cli_sample:flow"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["status"] == "completed"
    assert data["context"]["_outputs.double"] == 42
    assert "✓ seed" in result.stderr and "✓ double" in result.stderr


def test_run_a_json_blueprint_with_registry_and_state(
    runner: CliRunner, blueprint_file: Path
) -> None:
    result = runner.invoke(
        cli,
        [
            "run",
            str(blueprint_file),
            "--registry",
            "cli_sample:REGISTRY",
            "--state",
            '{"user": "x"}',
            "--output",
            "summary",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("completed ")
    assert result.stderr == ""


def test_failed_run_exits_1(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["run", "cli_sample:failing", "--no-progress"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["status"] == "failed"
    assert "kaboom" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.json"], "does not exist"),
        (["run", "no_such_module_xyz:flow"], "cannot import"),
        (["run", "cli_sample:nope"], "has no attribute"),
        (["run", "cli_sample:not_a_flow"], "not a flow or blueprint"),
        (["run", "cli_sample:flow", "--state", "{bad"], "not valid JSON"),
        (["run", "cli_sample:flow", "--state", "[1]"], "must be a JSON object"),
        (["run", "cli_sample:flow", "--registry", "cli_sample"], "module:attribute"),
        (["run", "cli_sample:flow", "--registry", "cli_sample:flow"], "not a mapping"),
        (["run", "cli_sample:flow", "--concurrency", "0"], "concurrency"),
        (["graph", "cli_sample:flow", "--format", "gif"], "gif"),
    ],
)
def test_bad_input_exits_2_with_a_message(runner: CliRunner, args: list[str], message: str) -> None:
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_invalid_blueprint_file_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"id": "x", "nodes": [{"id": "a"}]}')
    result = runner.invoke(cli, ["run", str(path)])
    assert result.exit_code == 2
    assert "Error:" in result.stderr and "uses" in result.stderr


def test_graph_mermaid_and_svg(runner: CliRunner, blueprint_file: Path, tmp_path: Path) -> None:
    mermaid = runner.invoke(cli, ["graph", str(blueprint_file)])
    assert mermaid.exit_code == 0
    assert mermaid.stdout.startswith("flowchart TD") and "seed" in mermaid.stdout
    out = tmp_path / "g.svg"
    svg = runner.invoke(cli, ["graph", "cli_sample:flow", "--format", "svg", "-o", str(out)])
    assert svg.exit_code == 0
    text = out.read_text()
    assert text.startswith("<svg") and text.count('class="node-box"') == 2


def test_lint(runner: CliRunner, tmp_path: Path, blueprint_file: Path) -> None:
    ok = runner.invoke(cli, ["lint", str(blueprint_file), "--registry", "cli_sample:REGISTRY"])
    assert ok.exit_code == 0 and ok.stdout.strip().endswith("ok")
    missing = runner.invoke(cli, ["lint", str(blueprint_file), "--json"])
    assert missing.exit_code == 0  # no registry given: implementations are not checked
    bad = tmp_path / "dangling.json"
    bad.write_text(
        json.dumps(
            {
                "id": "d",
                "nodes": [{"id": "a", "uses": "x"}],
                "edges": [{"source": "a", "target": "zz"}],
            }
        )
    )
    result = runner.invoke(cli, ["lint", str(bad), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["isValid"] is False
    assert report["issues"][0]["code"] == "INVALID_EDGE_TARGET"
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    assert runner.invoke(cli, ["lint", str(broken)]).exit_code == 2


def test_config_file_and_environment(
    runner: CliRunner, tmp_path: Path, blueprint_file: Path
) -> None:
    config = tmp_path / "flowcraft.toml"
    config.write_text(
        'registry = "cli_sample:REGISTRY"\n[run]\noutput = "summary"\nprogress = false\n'
    )
    result = runner.invoke(cli, ["--config", str(config), "run", str(blueprint_file)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("completed ") and result.stderr == ""
    # Environment variables beat the file; flags beat both.
    env = {"FLOWCRAFT_CONFIG": str(config), "FLOWCRAFT_OUTPUT": "json"}
    from_env = runner.invoke(cli, ["run", str(blueprint_file)], env=env)
    assert from_env.exit_code == 0 and json.loads(from_env.stdout)["status"] == "completed"
    flagged = runner.invoke(cli, ["run", str(blueprint_file), "--output", "summary"], env=env)
    assert flagged.stdout.startswith("completed ")
    env_registry = runner.invoke(
        cli,
        ["run", str(blueprint_file), "--no-progress"],
        env={"FLOWCRAFT_REGISTRY": "cli_sample:REGISTRY"},
    )
    assert env_registry.exit_code == 0
    broken = tmp_path / "broken.toml"
    broken.write_text("registry = [")
    bad = runner.invoke(cli, ["--config", str(broken), "run", str(blueprint_file)])
    assert bad.exit_code == 2 and "not valid TOML" in bad.stderr
