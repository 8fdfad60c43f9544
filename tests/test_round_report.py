"""The aggregate step's round report: written beside the round without MLflow, logged by evaluate
exactly as the aggregate step used to log it (keys, values, steps and the client table)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from argofl.steps import round_report, step_aggregate, step_distribute, step_evaluate, step_init, step_train
from argofl.steps.checkpoint import checkpoint_exists, load_manifest, save_checkpoint
from argofl.steps.partials import partial_key, replies_of
from argofl.steps.runinfo import RunLayout, RunRecord, write_json
from argofl.steps.settings import Settings
from argofl.steps.store import FileStore
from argofl.steps.strategies import ClientUpdate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmnist_dir: Path) -> FileStore:
    monkeypatch.setenv("ARGOFL_STORE", (tmp_path / "store").as_uri())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return FileStore(tmp_path / "store")


def _expected(store: FileStore, layout: RunLayout, round: int) -> tuple[dict[str, float], dict[str, object]]:
    """What the aggregate step logged to MLflow before it wrote reports (its own code, from the
    committed manifests): the round's metrics and its client table."""
    manifest = load_manifest(store, layout.global_key(round))
    clients = [c for c in manifest.extra["clients"].split(",") if c]
    rejected = json.loads(manifest.extra["rejected"])
    if "partials" in manifest.extra:
        replies: dict[str, ClientUpdate] = {}
        for first in filter(None, manifest.extra["partials"].split(",")):
            key = partial_key(layout, round, first)
            if checkpoint_exists(store, key):
                replies.update((r.client, r) for r in replies_of(load_manifest(store, key), key)[0])
        rows = [(c, replies[c].examples, dict(replies[c].metrics)) for c in clients]
    else:
        rows = []
        for c in clients:
            update = load_manifest(store, layout.update_key(round, c))
            rows.append((c, update.examples, dict(update.metrics)))
    want = {
        "train_loss": manifest.metrics["loss"],
        "train_accuracy": manifest.metrics["accuracy"],
        "clients_aggregated": float(len(clients)),
        "clients_rejected": float(len(rejected)),
    }
    for key in ("loss", "accuracy"):
        values = np.array([m[key] for _, _, m in rows])
        spread = {
            "count": float(values.size),
            "mean": values.mean(),
            "std": values.std(),
            "min": values.min(),
        }
        for name, q in (("p05", 0.05), ("p25", 0.25), ("median", 0.5), ("p75", 0.75), ("p95", 0.95)):
            spread[name] = np.quantile(values, q)
        spread["max"] = values.max()
        want.update({f"client_train_{key}_{name}": float(v) for name, v in spread.items()})
    data = [[c, "aggregated", n, m["loss"], m["accuracy"], ""] for c, n, m in rows]
    data += [[c, "rejected", 0, None, None, reason] for c, reason in rejected.items()]
    data.sort(key=lambda row: int(str(row[0])))
    columns = ["client", "status", "examples", "train_loss", "train_accuracy", "reason"]
    return want, {"columns": columns, "data": data}


@pytest.mark.parametrize("clients_per_pod", [1, 2])
def test_evaluate_logs_what_the_aggregate_step_logged_before(
    env: FileStore, tmp_path: Path, clients_per_pod: int
) -> None:
    """One pod's clients fail in round 1 (rejected, with a reason); each round's MLflow metrics at its
    step are exactly the old aggregate step's plus evaluate's own, and the table artifact is the old one."""
    from mlflow.tracking import MlflowClient

    s = Settings.from_mapping(
        {"experiment": "report", "data_limit": 300, "clients": 4, "min_clients": 2, "rounds": 2}
        | {"clients_per_pod": clients_per_pod, "seed": 3}
    )
    run_key = f"report/pods-of-{clients_per_pod}"
    layout = RunLayout(run_key)
    run_id = step_init.run(s, run_key=run_key, workflow_name="w", workflow_uid="u")["mlflow-run-id"]
    for round in (1, 2):
        groups = step_distribute.run(run_key=run_key, round=round)
        for group in groups[: -1 if round == 1 else None]:
            step_train.run(run_key=run_key, round=round, clients=group)
        step_aggregate.run(run_key=run_key, round=round)
        assert env.exists(round_report.report_key(layout, round))
        step_evaluate.run(run_key=run_key, round=round)
    client = MlflowClient()
    logged = client.get_run(run_id).data.metrics
    for round in (1, 2):
        want, table = _expected(env, layout, round)
        want |= {
            f"test_{k}": v
            for k, v in json.loads(env.get_bytes(layout.eval_key(round))).items()
            if k in ("loss", "accuracy")
        }
        got = {
            key: [m.value for m in client.get_metric_history(run_id, key) if m.step == round]
            for key in logged
        }
        assert {k: v for k, v in got.items() if v} == {k: [v] for k, v in want.items()}
        path = client.download_artifacts(
            run_id, f"clients/round-{round:04d}.json", str(tmp_path / f"a{round}")
        )
        assert json.loads(Path(path).read_text()) == table
    assert json.loads(env.get_bytes(round_report.report_key(layout, 1)))["table"]["data"][-1][1] == "rejected"


def test_a_committed_round_without_report_gets_it_rebuilt_on_retry(env: FileStore) -> None:
    """A retried aggregate step finding the round committed (by an earlier release, without report)
    rebuilds the report from the committed manifests: the same report the aggregation wrote."""
    s = Settings.from_mapping({"experiment": "report", "data_limit": 300, "clients": 3, "min_clients": 1})
    run_key, layout = "report/rebuilt", RunLayout("report/rebuilt")
    step_init.run(s, run_key=run_key, workflow_name="w", workflow_uid="u")
    for group in step_distribute.run(run_key=run_key, round=1)[1:]:
        step_train.run(run_key=run_key, round=1, clients=group)
    step_aggregate.run(run_key=run_key, round=1)
    written = env.get_bytes(round_report.report_key(layout, 1))
    env.delete(round_report.report_key(layout, 1))
    step_aggregate.run(run_key=run_key, round=1)
    assert env.get_bytes(round_report.report_key(layout, 1)) == written


def _hand_made_round(store: FileStore, data_dir: Path) -> RunLayout:
    """A run whose round 1 has 3 small client updates; its run record names no real MLflow run."""
    layout = RunLayout("nomlflow/run")
    settings = Settings.from_mapping(
        {"experiment": "nomlflow", "clients": 3, "min_clients": 1, "rounds": 1, "data_dir": str(data_dir)}
    )
    arrays = {"w": np.arange(10, dtype=np.float32), "b": np.zeros(3, np.float32)}
    save_checkpoint(store, layout.global_key(0), arrays, round=0)
    store.put_bytes(layout.record_key, RunRecord(settings, "no-run", "run", "uid", time.time()).to_json())
    write_json(store, layout.plan_key(1), {"round": 1, "clients": ["0", "1", "2"]})
    for c in range(3):
        arrays["b"][:] = c
        metrics = {"loss": 1.0 + c, "accuracy": 0.5}
        save_checkpoint(
            store, layout.update_key(1, str(c)), arrays, round=1, client=str(c), examples=10, metrics=metrics
        )
    return layout


def test_the_aggregate_step_aggregates_where_mlflow_cannot_be_imported(
    tmp_path: Path, fmnist_dir: Path
) -> None:
    """`argofl step aggregate` in a process where ``import mlflow`` fails, without a tracking URI:
    it commits the round and its report."""
    store = FileStore(tmp_path / "store")
    layout = _hand_made_round(store, fmnist_dir)
    code = (
        "import sys; sys.modules['mlflow'] = None\n"
        "from argofl.pipelines.cli import main\n"
        "try:\n"
        "    main(['step', 'aggregate', '--run-key', 'nomlflow/run', '--round', '1'])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))\n"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW")}
    environ.update(ARGOFL_STORE=store.uri, ARGOFL_FORKSERVER="0")
    done = subprocess.run(
        [sys.executable, "-c", code], env=environ, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "['mlflow']"  # only the shim: nothing imported it
    assert checkpoint_exists(store, layout.global_key(1))
    report = json.loads(store.get_bytes(round_report.report_key(layout, 1)))
    assert report["metrics"]["clients_aggregated"] == 3
    assert report["metrics"]["client_train_loss_median"] == 2.0
    assert [row[0] for row in report["table"]["data"]] == ["0", "1", "2"]
