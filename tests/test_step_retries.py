"""Every step is safe to retry, retries are for transient failures only, and a failed step's own
error line reaches the console.

Exit codes come from one error root (``steps.errors``): bad input 2, run failure 1, transient 75.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from argofl.pipelines.local import run_workflow
from argofl.pipelines.workflow_parts import RETRY_EXPRESSION
from argofl.steps import step_aggregate, step_distribute, step_init, step_train, tracking
from argofl.steps.cli import step as step_cli
from argofl.steps.errors import EXIT_TRANSIENT, ArgoflError, BadInputError, TransientError
from argofl.steps.runinfo import RunLayout
from argofl.steps.settings import Settings
from argofl.steps.store import FileStore

ROOT = Path(__file__).resolve().parents[1]


def _closed_port_uri() -> str:
    """An http:// address nothing listens on (a port bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def env(tmp_path, monkeypatch, fmnist_dir):
    monkeypatch.setenv("ARGOFL_STORE", (tmp_path / "store").as_uri())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    return FileStore(tmp_path / "store")


SETTINGS = {"experiment": "retry-test", "data_limit": 600, "clients": 2, "min_clients": 1, "rounds": 1}


def _init_args(run_key: str) -> list[str]:
    params = Settings.from_mapping(SETTINGS).to_params()
    return [
        "init",
        "--run-key",
        run_key,
        "--workflow-name",
        "wf",
        "--workflow-uid",
        "uid",
        *[a for k, v in params.items() for a in ("--param", f"{k}={v}")],
    ]


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_every_argofl_error_has_one_root_and_an_exit_code():
    from argofl.pipelines.argo_server import ClusterError
    from argofl.pipelines.config import ConfigError
    from argofl.pipelines.local.errors import UnsupportedWorkflow, WorkflowInputError
    from argofl.steps.checkpoint import CheckpointError
    from argofl.steps.store import StoreError, StoreUnavailable
    from argofl.steps.tracking import TrackingError, TrackingNotConfigured

    for bad in (ConfigError, WorkflowInputError, UnsupportedWorkflow, CheckpointError, StoreError):
        assert issubclass(bad, BadInputError), bad
        assert bad.exit_code == 2, bad
    for transient in (TrackingError, StoreUnavailable):
        assert issubclass(transient, TransientError)
        assert transient.exit_code == EXIT_TRANSIENT
    assert ClusterError.exit_code == 1
    assert issubclass(ClusterError, ArgoflError)
    assert TrackingNotConfigured.exit_code == 2


def test_init_with_mlflow_unreachable_is_transient_and_a_retry_succeeds(env, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _closed_port_uri())
    first = CliRunner().invoke(step_cli, _init_args("retry-test/init"))
    assert first.exit_code == EXIT_TRANSIENT, first.output
    errors = _errors(first.output)
    assert len(errors) == 1, first.output
    assert "MLflow at http://127.0.0.1:" in errors[0]
    layout = RunLayout("retry-test/init")
    assert env.exists(layout.global_key(0) + ".json")  # attempt 0 got that far
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{Path(env.root).parent / 'mlflow.db'}")
    second = CliRunner().invoke(step_cli, _init_args("retry-test/init"))
    assert second.exit_code == 0, second.output
    assert "already exists" not in second.output
    again = CliRunner().invoke(step_cli, _init_args("retry-test/init"))  # a third attempt: same outputs
    assert again.exit_code == 0, again.output


def test_evaluate_logs_the_rounds_metrics_once_on_retry_after_mlflow_failed(env, monkeypatch):
    """The aggregate step needs no MLflow; evaluate logs the round's metrics (its own and the aggregate
    step's report) and, retried after MLflow failed, logs each of them exactly once."""
    s = Settings.from_mapping(SETTINGS)
    run_key = "retry-test/agg"
    out = step_init.run(s, run_key=run_key, workflow_name="wf", workflow_uid="uid")
    for group in step_distribute.run(run_key=run_key, round=1):
        step_train.run(run_key=run_key, round=1, clients=group)
    tracking_uri = f"sqlite:///{Path(env.root).parent / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _closed_port_uri())
    aggregated = CliRunner().invoke(step_cli, ["aggregate", "--run-key", run_key, "--round", "1"])
    assert aggregated.exit_code == 0, aggregated.output
    failed = CliRunner().invoke(step_cli, ["evaluate", "--run-key", run_key, "--round", "1"])
    assert failed.exit_code == EXIT_TRANSIENT, failed.output
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    assert not tracking.has_metric(out["mlflow-run-id"], "clients_aggregated", step=1)
    retried = CliRunner().invoke(step_cli, ["evaluate", "--run-key", run_key, "--round", "1"])
    assert retried.exit_code == 0, retried.output
    # once logged, further retries (of either step) log nothing twice
    step_aggregate.run(run_key=run_key, round=1)
    again = CliRunner().invoke(step_cli, ["evaluate", "--run-key", run_key, "--round", "1"])
    assert again.exit_code == 0, again.output
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    for key in ("clients_aggregated", "client_train_loss_mean", "test_accuracy"):
        assert [m.step for m in client.get_metric_history(out["mlflow-run-id"], key)] == [1], key
    assert [a.path for a in client.list_artifacts(out["mlflow-run-id"], "clients")] == [
        "clients/round-0001.json"
    ]


def test_a_step_without_mlflow_tracking_uri_fails_clearly_and_creates_no_mlflow_db(env, tmp_path):
    s = Settings.from_mapping(SETTINGS)
    step_init.run(s, run_key="retry-test/nouri", workflow_name="wf", workflow_uid="uid")
    for group in step_distribute.run(run_key="retry-test/nouri", round=1):
        step_train.run(run_key="retry-test/nouri", round=1, clients=group)
    step_aggregate.run(run_key="retry-test/nouri", round=1)  # needs no MLflow; evaluate logs the round
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    environ = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from argofl.pipelines.cli import main; main()",
            "step",
            "evaluate",
            "--run-key",
            "retry-test/nouri",
            "--round",
            "1",
        ],
        cwd=cwd,
        env={**environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr + done.stdout
    assert _errors(done.stderr + done.stdout)[-1].startswith("error: MLFLOW_TRACKING_URI is not set")
    assert list(cwd.iterdir()) == []


def test_an_unexpected_exception_is_one_error_line_and_exit_1(env, monkeypatch):
    def boom(**_: Any) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(step_distribute, "plan_round", boom)
    result = CliRunner().invoke(step_cli, ["distribute", "--run-key", "x/y", "--round", "1"])
    assert result.exit_code == 1
    assert _errors(result.output) == ["error: ZeroDivisionError: division by zero"]


# --------------------------------------------------------------------------- the retry policy


def _script_workflow(source: str) -> dict[str, Any]:
    strategy = {"limit": "2", "retryPolicy": "Always", "expression": RETRY_EXPRESSION}
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "retry-"},
        "spec": {
            "entrypoint": "main",
            "templates": [
                {
                    "name": "main",
                    "retryStrategy": strategy,
                    "script": {"command": [sys.executable], "source": source},
                }
            ],
        },
    }


def _attempts(result: Any) -> list[dict[str, Any]]:
    nodes = result.status["nodes"]
    return [nodes[c] for c in nodes[result.name]["children"]]


@pytest.mark.parametrize(
    ("code", "attempts"),
    [(2, 1), (1, 1), (EXIT_TRANSIENT, 3), (137, 3)],
    ids=["bad-input", "failure", "transient", "sigkill"],
)
def test_the_builders_retry_policy_retries_transient_failures_only(tmp_path, code, attempts):
    source = f"import sys\nprint('error: the reason {code}', file=sys.stderr)\nsys.exit({code})\n"
    result = run_workflow(_script_workflow(source), runs_dir=tmp_path / "runs")
    assert result.phase == "Failed"
    tried = _attempts(result)
    assert len(tried) == attempts
    assert tried[-1]["message"] == f"main: Error (exit code {code}): error: the reason {code}"


def test_watch_lines_show_the_last_attempts_error_not_the_retry_verdict(tmp_path):
    from argofl.pipelines.progress import finished_steps, step_line

    source = "import sys\nprint('error: settings: rounds must be ≥ 1', file=sys.stderr)\nsys.exit(2)\n"
    result = run_workflow(_script_workflow(source), runs_dir=tmp_path / "runs")
    lines = [step_line(s) for s in finished_steps(result.status)]
    assert lines == ["main ✖ (main: Error (exit code 2): error: settings: rounds must be ≥ 1)"]
