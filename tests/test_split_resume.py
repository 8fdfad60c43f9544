"""Split runs resume: ``-p start-round=2 -p resume-from=<experiment>/<run>`` continues a split run from its
round-1 global model and ends byte-identical to the uninterrupted run (vanilla and SplitFed, torch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from argofl.pipelines.cli import cli
from argofl.steps import tracking
from argofl.steps.checkpoint import checkpoint_exists, checkpoint_keys
from argofl.steps.runinfo import RunLayout
from argofl.steps.split.settings import bottom_key, top_key
from argofl.steps.store import Store, open_store

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, mode: str) -> Path:
    path = tmp_path / f"resume-{mode}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "kind": "split",
                "experiment": f"resume-{mode}",
                "data_limit": 600,
                "clients": 2,
                "min_clients": 2,
                "rounds": 2,
                "batch_size": 32,
                "seed": 5,
                "split": {"mode": mode, "cut": "pool2", "port": 18080, "idle_timeout": 60},
            }
        )
    )
    return path


def _run(config: Path, runs: Path, fmnist_dir: Path, *params: str) -> str:
    args = ["run", str(config), "--runs-dir", str(runs), "-p", f"data-dir={fmnist_dir}"]
    for p in params:
        args += ["-p", p]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return Path(
        next(ln for ln in result.output.splitlines() if "summary: " in ln).split("summary: ")[1]
    ).parent.name


def _blobs(store: Store, run_key: str, round: int) -> dict[str, bytes]:
    keys = [RunLayout(run_key).global_key(round), top_key(run_key, round)]
    keys += [bottom_key(run_key, round, c) for c in ("0", "1")]
    return {key.removeprefix(run_key): store.get_bytes(checkpoint_keys(key)[0]) for key in keys}


@pytest.mark.parametrize("mode", ["vanilla", "splitfed"])
def test_a_split_run_resumed_at_round_2_ends_byte_identical_to_an_uninterrupted_one(
    tmp_path, fmnist_dir, mode
):
    config, runs = _config(tmp_path, mode), tmp_path / "runs"
    first = _run(config, runs, fmnist_dir)
    resumed = _run(config, runs, fmnist_dir, "start-round=2", f"resume-from=resume-{mode}/{first}")
    store = open_store((runs / "store").as_uri())
    a, b = f"resume-{mode}/{first}", f"resume-{mode}/{resumed}"
    assert _blobs(store, b, 2) == _blobs(store, a, 2)
    # round 1 was not run again: the resumed run has its global model (copied) and nothing else of it
    assert checkpoint_exists(store, RunLayout(b).global_key(1))
    assert not checkpoint_exists(store, top_key(b, 1))
    assert not checkpoint_exists(store, bottom_key(b, 1, "0"))
    # its MLflow run has round 1's history too: the round's metrics and each client's epochs (steps count
    # epochs there), copied from the first run
    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    ids = {json.loads(store.get_bytes(RunLayout(k).record_key))["mlflow_run_id"]: k for k in (a, b)}
    first_id, resumed_id = sorted(ids, key=lambda i: ids[i] != a)

    def steps(run_id: str, key: str) -> list[int]:
        return sorted(m.step for m in client.get_metric_history(run_id, key))

    for key in ("test_accuracy", "train_loss", tracking.epoch_metric("0", "loss")):
        assert steps(resumed_id, key) == steps(first_id, key) == [1, 2], key


def test_argofl_resume_continues_a_stopped_split_run_byte_identical(tmp_path, fmnist_dir):
    """``argofl resume RUN_DIR`` for split: the run's round 2 is marked as stopped (its evaluate Failed),
    resume starts a new run at round 2 from round 1's global model, with the same round-2 bytes."""
    config, runs = _config(tmp_path, "vanilla"), tmp_path / "runs"
    first = _run(config, runs, fmnist_dir)
    run_dir = runs / "workflows" / first
    status = json.loads((run_dir / "status.json").read_text())
    round_2 = [
        n
        for n in status["nodes"].values()
        if n.get("templateName") == "evaluate" and "(1:round 2)" in n["name"]
    ]
    assert round_2
    for node in round_2:  # the retry node and its pod
        node["phase"] = "Failed"
    status["phase"] = "Failed"
    (run_dir / "status.json").write_text(json.dumps(status))

    result = CliRunner().invoke(cli, ["resume", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "resuming from round 2" in result.output
    resumed = Path(
        next(ln for ln in result.output.splitlines() if "summary: " in ln).split("summary: ")[1]
    ).parent.name
    store = open_store((runs / "store").as_uri())
    a, b = f"resume-vanilla/{first}", f"resume-vanilla/{resumed}"
    assert resumed != first
    assert _blobs(store, b, 2) == _blobs(store, a, 2)
    assert not checkpoint_exists(store, top_key(b, 1))
