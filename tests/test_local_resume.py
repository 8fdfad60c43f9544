"""``argofl resume RUN_DIR``: what it refuses before anything runs, and the paths ``argofl run`` resolves.

Resuming a real run byte-identically is in ``tests/test_faults_executor.py``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from argofl.pipelines.cli import cli
from argofl.pipelines.compile import manifest_for
from argofl.pipelines.config import load_config
from argofl.pipelines.local.runlock import hold_run_lock
from argofl.pipelines.local_params import absolute_store_uri, absolute_tracking_uri, local_parameters
from argofl.pipelines.parameters import set_parameters
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]


def _run_dir(tmp_path: Path, config: str, nodes: dict[str, object] | None = None) -> Path:
    """A stopped local run of ``config`` as ``argofl run`` leaves it (no round completed): its local store
    and MLflow database under ``tmp_path/runs``."""
    manifest = manifest_for(load_config(ROOT / "configs" / config))
    local = local_parameters({}, tmp_path / "runs")
    set_parameters(manifest, {k: local[k] for k in ("store", "mlflow-uri", "mlflow-ui")})
    name = f"{manifest['metadata']['generateName']}abcde"
    manifest["metadata"] = {"name": name}
    run_dir = tmp_path / "runs" / "workflows" / name
    run_dir.mkdir(parents=True)
    (run_dir / "workflow.json").write_text(json.dumps(manifest))
    (run_dir / "status.json").write_text(json.dumps({"phase": "Failed", "nodes": nodes or {}}))
    return run_dir


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error")]


def test_resume_refuses_a_kind_whose_rounds_cannot_start_later(tmp_path: Path) -> None:
    """A workflow without start-round/resume-from (an older manifest, or a kind that cannot resume)."""
    run_dir = _run_dir(tmp_path, "split-fmnist-torch.yaml")
    manifest = json.loads((run_dir / "workflow.json").read_text())
    arguments = manifest["spec"]["arguments"]
    arguments["parameters"] = [
        p for p in arguments["parameters"] if p["name"] not in ("start-round", "resume-from")
    ]
    (run_dir / "workflow.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(cli, ["resume", str(run_dir)])
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.output)
    assert f"{run_dir.name} cannot resume: its workflow declares no start-round" in line
    assert sorted(p.name for p in run_dir.parent.iterdir()) == [run_dir.name]  # nothing ran


def test_resume_refuses_a_run_that_is_still_running(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path, "fedavg-fmnist-torch.yaml")
    with hold_run_lock(run_dir):
        result = CliRunner().invoke(cli, ["resume", str(run_dir)])
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.output)
    assert f"{run_dir.name} is still running" in line


def test_resume_refuses_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["resume", str(tmp_path)])
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.output)
    assert "not a local run directory" in line


@pytest.mark.parametrize("given", ["runs", "runs/workflows"])
def test_resume_of_a_runs_directory_names_its_latest_run(tmp_path: Path, given: str) -> None:
    """`argofl resume runs` said only that runs is no run directory."""
    first = _run_dir(tmp_path, "fedavg-fmnist-torch.yaml")
    latest = first.rename(first.with_name("fedavg-fmnist-torch-fghij"))
    older = _run_dir(tmp_path, "fedavg-fmnist-torch.yaml")
    os.utime(older / "workflow.json", (1, 1))
    result = CliRunner().invoke(cli, ["resume", str(tmp_path / given)])
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.output)
    assert line.endswith(f"; it holds runs: give one, e.g. the latest, {latest}")


@pytest.mark.parametrize("damaged", ["workflow.json", "status.json", "workflows/child/status.json"])
def test_resume_refuses_a_run_whose_records_are_not_json_objects(tmp_path: Path, damaged: str) -> None:
    run_dir = _run_dir(tmp_path, "fedavg-fmnist-torch.yaml")
    (run_dir / damaged).parent.mkdir(parents=True, exist_ok=True)
    (run_dir / damaged).write_text("[]")
    result = CliRunner().invoke(cli, ["resume", str(run_dir)])
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.output)
    assert line.endswith(
        f"{run_dir}: not a local run directory (workflow.json and status.json): "
        f"{run_dir / damaged} holds a list, not a JSON object"
    )


def test_resume_of_a_finished_run_runs_nothing(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path, "fedavg-fmnist-torch.yaml")
    manifest = json.loads((run_dir / "workflow.json").read_text())
    rounds = next(p["value"] for p in manifest["spec"]["arguments"]["parameters"] if p["name"] == "rounds")
    evaluate = {
        "id": "e",
        "type": "Pod",
        "templateName": "evaluate",
        "phase": "Succeeded",
        "inputs": {"parameters": [{"name": "round", "value": f"round {rounds}"}]},
    }
    (run_dir / "status.json").write_text(json.dumps({"phase": "Succeeded", "nodes": {"e": evaluate}}))
    result = CliRunner().invoke(cli, ["resume", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert f"all {rounds} rounds of {run_dir.name} completed; nothing to resume" in result.output


def test_resume_reads_the_rounds_of_the_child_workflows(tmp_path: Path) -> None:
    """rounds_per_workflow: the parent's status has no rounds; its children (blocks of rounds) do."""
    run_dir = _run_dir(tmp_path, "fedavg-fmnist-torch-blocks.yaml")
    manifest = json.loads((run_dir / "workflow.json").read_text())
    rounds = next(p["value"] for p in manifest["spec"]["arguments"]["parameters"] if p["name"] == "rounds")
    evaluate = {
        "id": "e",
        "type": "Pod",
        "templateName": "evaluate",
        "phase": "Succeeded",
        "inputs": {"parameters": [{"name": "round", "value": f"round {rounds}"}]},
    }
    child = run_dir / "workflows" / f"{run_dir.name}-r91-xyzab"
    child.mkdir(parents=True)
    (child / "status.json").write_text(json.dumps({"phase": "Succeeded", "nodes": {"e": evaluate}}))
    result = CliRunner().invoke(cli, ["resume", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert f"all {rounds} rounds of {run_dir.name} completed; nothing to resume" in result.output


def test_relative_store_and_tracking_uris_become_absolute_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    here = os.fspath(tmp_path)
    assert absolute_tracking_uri("sqlite:///x.db") == f"sqlite:///{here}/x.db"
    assert absolute_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert absolute_tracking_uri("mlruns") == f"{here}/mlruns"
    assert absolute_tracking_uri("http://mlflow:5000") == "http://mlflow:5000"
    assert absolute_store_uri("store") == (tmp_path / "store").as_uri()
    assert absolute_store_uri("file:store") == (tmp_path / "store").as_uri()
    assert absolute_store_uri("file:///abs/store") == "file:///abs/store"
    assert absolute_store_uri("s3://bucket/prefix") == "s3://bucket/prefix"


def _stopped(run_dir: Path, calls: list[dict[str, object]]) -> object:
    """A stand-in for ``run_workflow`` whose run is stopped by Ctrl-C, as one stopped before round 1."""
    import signal

    from argofl.pipelines.local.engine import LocalRunResult

    def run_workflow(manifest: dict[str, object], params: object, **kwargs: object) -> LocalRunResult:
        calls.append({"key_refs": kwargs.get("key_refs")})
        status = {"phase": "Failed", "message": "stopped: executor interrupted (SIGINT)", "nodes": {}}
        return LocalRunResult(run_dir.name, "uid", "Failed", status, run_dir, signal.SIGINT)

    return run_workflow


@pytest.mark.parametrize(
    "runtime", [[], ["--runtime", "docker", "--image-map", "a=b"]], ids=["process", "docker"]
)
@pytest.mark.parametrize("command", ["run", "resume"])
def test_the_resume_hint_of_a_stopped_run_keeps_its_secrets_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, runtime: list[str]
) -> None:
    """A run given its credentials with ``--secrets`` needs them again: the printed command has them (and
    the runtime it ran in)."""
    import argofl.pipelines.commands as commands
    import argofl.pipelines.local as local

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s3.yaml").write_text(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: argofl-s3}\n"
        "stringData: {accesskey: a, secretkey: s}\n"
    )
    run_dir = _run_dir(tmp_path, "fedavg-fmnist-torch.yaml")
    calls: list[dict[str, object]] = []
    monkeypatch.setattr(local, "run_workflow", _stopped(run_dir, calls))
    monkeypatch.setattr(commands, "prestart_steps", lambda framework: None)
    target = str(ROOT / "configs" / "fedavg-fmnist-torch.yaml") if command == "run" else str(run_dir)
    result = CliRunner().invoke(cli, [command, target, "--secrets", "s3.yaml", *runtime])
    assert result.exit_code == 130, result.output
    (call,) = calls
    assert call["key_refs"] == {("Secret", "argofl-s3"): {"accesskey": "a", "secretkey": "s"}}
    hint = [line for line in result.output.splitlines() if line.startswith("continue it: ")]
    options = " ".join([*runtime, "--secrets", str(tmp_path / "s3.yaml")])
    assert hint == [f"continue it: argofl resume {options} {run_dir}"]


@pytest.mark.parametrize(
    ("runtime", "probed"),
    [([], True), (["--runtime", "docker", "--image-map", "a=b"], False)],
    ids=["process", "docker"],
)
def test_resume_with_an_mlflow_server_that_does_not_answer_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runtime: list[str], probed: bool
) -> None:
    """The resumed run's init failed after its retries. Containers have a network of their own (their
    server may be one this machine cannot reach): only the URI is checked for them."""
    import argofl.pipelines.local as local

    uri = f"http://127.0.0.1:{free_port()}"
    run_dir = _run_dir(tmp_path, "fedavg-fmnist-torch.yaml")
    manifest = json.loads((run_dir / "workflow.json").read_text())
    set_parameters(manifest, {"mlflow-uri": uri})
    (run_dir / "workflow.json").write_text(json.dumps(manifest))
    calls: list[dict[str, object]] = []
    monkeypatch.setattr(local, "run_workflow", _stopped(run_dir, calls))
    result = CliRunner().invoke(cli, ["resume", str(run_dir), *runtime])
    if probed:
        assert result.exit_code == 2, result.output
        (line,) = _error_lines(result.output)
        assert (
            line
            == f"Error: MLflow server at {uri} cannot be reached: Connection refused; nothing was started"
        )
        assert "resuming" not in result.output
    assert len(calls) == (0 if probed else 1)


def _completed(run_dir: Path, last: int) -> None:
    """Record rounds up to ``last`` of the run in ``run_dir`` as completed (evaluated)."""
    status = json.loads((run_dir / "status.json").read_text())
    status["nodes"] = {
        f"e{n}": {
            "id": f"e{n}",
            "type": "Pod",
            "templateName": "evaluate",
            "phase": "Succeeded",
            "inputs": {"parameters": [{"name": "round", "value": f"round {n}"}]},
        }
        for n in range(1, last + 1)
    }
    (run_dir / "status.json").write_text(json.dumps(status))


def _continuation(stopped: Path, suffix: str, phase: str) -> Path:
    """A run that ``argofl resume`` started from the stopped run in ``stopped`` (its resume-from names it),
    ended with ``phase``."""
    manifest = json.loads((stopped / "workflow.json").read_text())
    experiment = next(
        p["value"] for p in manifest["spec"]["arguments"]["parameters"] if p["name"] == "experiment"
    )
    name = f"{stopped.name[:-5]}{suffix}"
    set_parameters(manifest, {"resume-from": f"{experiment}/{stopped.name}", "start-round": "2"})
    manifest["metadata"] = {"name": name}
    run_dir = stopped.with_name(name)
    run_dir.mkdir()
    (run_dir / "workflow.json").write_text(json.dumps(manifest))
    (run_dir / "status.json").write_text(json.dumps({"phase": phase, "nodes": {}}))
    return run_dir


@pytest.mark.parametrize(
    ("phases", "advice"),
    [
        (["Failed"], "resume {last} instead"),
        (["Failed", "Failed"], "resume {last} instead"),
        (["Failed", "Succeeded"], "it completed the run: nothing to resume"),
    ],
    ids=["once", "twice", "completed"],
)
def test_resume_of_a_run_already_resumed_names_the_run_that_continued_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, phases: list[str], advice: str
) -> None:
    """A second `argofl resume` of the same stopped run started a second continuation of it from the same
    round; it names the run that continues it now (the last of a chain of resumes)."""
    import argofl.pipelines.local as local

    monkeypatch.chdir(tmp_path)
    stopped = _run_dir(tmp_path, "fedavg-fmnist-torch.yaml")
    _completed(stopped, 1)
    last = stopped
    for n, phase in enumerate(phases):
        last = _continuation(last, f"cont{n}", phase)
    calls: list[dict[str, object]] = []
    monkeypatch.setattr(local, "run_workflow", _stopped(stopped, calls))
    given = f"runs/workflows/{stopped.name}"
    result = CliRunner().invoke(cli, ["resume", given])
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.output)
    shown = f"runs/workflows/{last.name}"
    assert line == f"Error: {given} was already resumed by {shown}: " + advice.format(last=shown)
    assert calls == []
    assert "resuming" not in result.output


def test_a_second_resume_of_a_run_that_completed_no_round_names_the_run_that_continued_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that completed no round resumes what it resumed (its resume-from names an earlier run, not
    it): the run that continued it is the one `argofl resume` started from it (and a third resume names the
    second continuation, the last of the chain)."""
    import argofl.pipelines.commands as commands
    import argofl.pipelines.local as local

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(commands, "prestart_steps", lambda framework: None)
    stopped = _run_dir(tmp_path, "fedavg-fmnist-torch.yaml")
    manifest = json.loads((stopped / "workflow.json").read_text())
    set_parameters(manifest, {"resume-from": "fedavg-fmnist-torch/earlier-run", "start-round": "3"})
    (stopped / "workflow.json").write_text(json.dumps(manifest))
    started: list[Path] = []

    def run_workflow(manifest: dict[str, object], params: object, **kwargs: object) -> object:
        """Record the run as the executor does (its workflow.json), stopped before its first round."""
        runs_dir = kwargs["runs_dir"]
        assert isinstance(runs_dir, Path)
        run_dir = runs_dir / f"fedavg-fmnist-torch-new{len(started)}"
        run_dir.mkdir()
        metadata = {**manifest["metadata"], "name": run_dir.name}  # type: ignore[dict-item]
        (run_dir / "workflow.json").write_text(json.dumps({**manifest, "metadata": metadata}))
        (run_dir / "status.json").write_text(json.dumps({"phase": "Failed", "nodes": {}}))
        started.append(run_dir)
        return _stopped(run_dir, [])(manifest, params)  # type: ignore[operator]

    monkeypatch.setattr(local, "run_workflow", run_workflow)
    given = f"runs/workflows/{stopped.name}"
    first = CliRunner().invoke(cli, ["resume", given])
    assert first.exit_code == 130, first.output
    assert "resuming from round 3 (fedavg-fmnist-torch/earlier-run)" in first.output
    (continued,) = started
    again = CliRunner().invoke(cli, ["resume", given])
    assert again.exit_code == 2, again.output
    (line,) = _error_lines(again.output)
    shown = f"runs/workflows/{continued.name}"
    assert line == f"Error: {given} was already resumed by {shown}: resume {shown} instead"
    assert len(started) == 1
    assert CliRunner().invoke(cli, ["resume", shown]).exit_code == 130  # the continuation resumes
    third = CliRunner().invoke(cli, ["resume", given])
    (line,) = _error_lines(third.output)
    assert line.endswith(f"resume runs/workflows/{started[-1].name} instead")
