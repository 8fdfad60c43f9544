"""A split workflow's server daemon holds a step slot all round: one slot can never run it locally."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from argofl.pipelines import commands
from argofl.pipelines.cli import cli
from argofl.pipelines.compile import manifest_for
from argofl.pipelines.config import load_config
from argofl.pipelines.parameters import ParameterError

ROOT = Path(__file__).resolve().parents[1]
SPLIT = ROOT / "configs" / "split-fmnist-torch.yaml"
REFUSED = (
    "parallelism 1: this workflow's daemon step (split learning's server) holds a step slot all round "
    "and the steps it serves need another; give at least 2; nothing was started"
)


def _error_line(output: str) -> str:
    [line] = [line for line in output.splitlines() if line.lower().startswith("error")]
    return line


@pytest.fixture(autouse=True)
def _no_fork_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from argofl.pipelines.local import cli as local_cli

    monkeypatch.setattr(commands, "prestart_steps", lambda framework: None)
    monkeypatch.setattr(local_cli, "prestart_steps", lambda framework: None)


def test_argofl_run_refuses_one_slot_for_a_split_workflow_before_anything_starts(tmp_path: Path) -> None:
    """It started, the server took the slot, and the round failed when the idle timeout (300 s) ended."""
    runs = tmp_path / "runs"
    result = CliRunner().invoke(cli, ["run", str(SPLIT), "--runs-dir", str(runs), "--parallelism", "1"])
    assert result.exit_code == 2, result.output
    assert _error_line(result.output).endswith(REFUSED)
    assert "--parallelism" in _error_line(result.output)
    assert not runs.exists()


def test_argofl_resume_refuses_one_slot_for_a_split_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "workflows" / "split-x"
    run_dir.mkdir(parents=True)
    manifest = manifest_for(load_config(SPLIT))
    manifest["metadata"] = {"name": "split-x"}
    (run_dir / "workflow.json").write_text(json.dumps(manifest))
    (run_dir / "status.json").write_text(json.dumps({"phase": "Failed", "nodes": {}}))
    result = CliRunner().invoke(cli, ["resume", str(run_dir), "--parallelism", "1"])
    assert result.exit_code == 2, result.output
    assert _error_line(result.output).endswith(REFUSED)
    assert "resuming" not in result.output
    assert sorted(p.name for p in (tmp_path / "runs" / "workflows").iterdir()) == ["split-x"]


def test_argofl_local_run_refuses_one_slot_for_a_compiled_split_workflow(tmp_path: Path) -> None:
    """`argofl local run argo/split-….yaml --parallelism 1` had no such option; the slot limit it was meant
    to set left the server alone in its slot until the idle timeout (300 s) ended the round."""
    from argofl.pipelines.compile import compile_config

    workflow = compile_config(SPLIT, tmp_path / "argo")
    runs = tmp_path / "runs"
    args = ["local", "run", str(workflow), "--runs-dir", str(runs), "--parallelism", "1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert _error_line(result.output).endswith(REFUSED)
    assert "--parallelism" in _error_line(result.output)
    assert not runs.exists()


def test_argofl_local_run_gives_its_parallelism_to_the_executor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A workflow without daemons runs with one slot; a split workflow with two, and by default, as an
    argofl workflow, with argofl run's three (it had no limit)."""
    from argofl.pipelines.compile import compile_config
    from argofl.pipelines.local import cli as local_cli

    given: list[int | None] = []

    def fake_run(manifest: object, parameters: object, **kwargs: object) -> object:
        given.append(kwargs["parallelism"])  # type: ignore[arg-type]
        raise SystemExit(0)

    monkeypatch.setattr(local_cli, "run_workflow", fake_run)
    fedavg = compile_config(ROOT / "configs" / "fedavg-fmnist-torch.yaml", tmp_path / "argo")
    split = compile_config(SPLIT, tmp_path / "argo")
    for workflow, slots in ((fedavg, ["--parallelism", "1"]), (split, ["--parallelism", "2"]), (split, [])):
        result = CliRunner().invoke(cli, ["local", "run", str(workflow), "--runs-dir", str(tmp_path), *slots])
        assert result.exit_code == 0, result.output
    assert given == [1, 2, 3]


def test_run_local_refuses_one_slot_for_a_split_workflow(tmp_path: Path) -> None:
    from argofl.pipelines.api import run_local

    with pytest.raises(ParameterError, match=r"^parallelism 1: this workflow's daemon step"):
        run_local(load_config(SPLIT), runs_dir=tmp_path / "runs", parallelism=1)
    assert not (tmp_path / "runs").exists()


def test_two_slots_or_a_workflow_without_daemons_pass() -> None:
    from argofl.pipelines.local_params import parallelism_problem

    split = manifest_for(load_config(SPLIT))
    fedavg = manifest_for(load_config(ROOT / "configs" / "fedavg-fmnist-torch.yaml"))
    assert parallelism_problem(split, 2) is None
    assert parallelism_problem(fedavg, 1) is None
