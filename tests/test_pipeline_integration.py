"""The whole pipeline once, as users run it: `argofl run` executes the compiled workflow with the local
executor, checkpoints go to a real S3-protocol server (moto) through the minio SDK, tracking to a real
`mlflow server` process. Then the run is read back from MLflow and S3."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from argofl.pipelines.cli import cli
from argofl.steps.checkpoint import load_checkpoint
from argofl.steps.runinfo import RunLayout
from argofl.steps.store import open_store

pytestmark = pytest.mark.slow


def test_pipeline_against_s3_and_mlflow_server(
    tmp_path, s3_env, s3_server, mlflow_server, fmnist_dir, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    config = tmp_path / "it-fedavg.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "experiment": "it-fedavg",
                "data_limit": 3000,
                "clients": 3,
                "min_clients": 3,
                "rounds": 2,
                "local_epochs": 1,
                "batch_size": 32,
                "lr": 0.05,
                "seed": 3,
                "clients_per_pod": 2,
            }
        )
    )
    result = CliRunner().invoke(
        cli,
        [
            "run",
            str(config),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--store",
            s3_env,
            "--mlflow-uri",
            mlflow_server.uri,
            "-p",
            f"s3-endpoint={s3_server.endpoint}",
        ],
    )
    assert result.exit_code == 0, result.output
    summary_line = next(line for line in result.output.splitlines() if "summary: " in line)
    summary_path = Path(summary_line.split("summary: ")[1])
    summary = json.loads(summary_path.read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    # learning actually happened: an untrained 10-class model is near 0.1
    assert summary["final_accuracy"] > 0.5
    assert summary["rounds"][1]["loss"] < summary["rounds"][0]["loss"] * 1.05

    # checkpoints read back from S3 through the minio SDK
    store = open_store(s3_env)
    layout = RunLayout(f"it-fedavg/{summary['run']}")
    final = load_checkpoint(store, layout.global_key(2))
    assert final.manifest.round == 2
    assert final.manifest.examples == 3000
    assert summary["final_checkpoint"] == store.key_uri(layout.global_key(2) + ".safetensors")
    # two clients per pod with FedAvg: each pod wrote one partial sum, not its clients' updates
    assert store.list(layout.round_prefix(1) + "/updates/") == []
    assert sorted(k.rsplit("/", 1)[-1] for k in store.list(layout.round_prefix(1) + "/partials/")) == [
        "group-0.json",
        "group-0.safetensors",
        "group-2.json",
        "group-2.safetensors",
    ]

    # the same checkpoint is the aggregate node's output artifact (listed in the Argo UI)
    exported = sorted((tmp_path / "runs" / "artifacts").rglob("global.safetensors"))
    assert len(exported) == 2
    blobs = {p.read_bytes() for p in exported}
    assert store.get_bytes(layout.global_key(2) + ".safetensors") in blobs

    # metrics, params, tags and the model read back from the MLflow server
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["rounds"] == "2"
    assert run.data.params["clients"] == "3"
    assert run.data.tags["argo.workflow.name"] == summary["run"]
    history = client.get_metric_history(run.info.run_id, "test_accuracy")
    assert sorted(m.step for m in history) == [1, 2]
    assert {m.step: m.value for m in history}[2] == pytest.approx(summary["final_accuracy"])
    assert len(client.get_metric_history(run.info.run_id, "client_train_loss_mean")) == 2

    # the run's MLflow page: init's global output, printed by `argofl run`, served by the MLflow UI
    url = f"{mlflow_server.uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert f"MLflow run: {url}" in result.output.splitlines()
    status = json.loads((summary_path.parent / "status.json").read_text())
    outputs = {p["name"]: p["value"] for p in status["outputs"]["parameters"]}
    assert outputs["mlflow-run-url"] == url
    assert outputs["mlflow-run-id"] == run.info.run_id
    assert float(outputs["final-accuracy"]) == pytest.approx(summary["final_accuracy"])
    with urllib.request.urlopen(url.split("#")[0], timeout=30) as page:
        assert page.status == 200
    # (tests/test_mlflow_link.py opens such a link in a browser)

    # node names read well in the Argo UI: rounds and the client groups they trained
    names = sorted(
        n["displayName"]
        for n in status["nodes"].values()
        if (n.get("templateName"), n["type"]) in (("round", "DAG"), ("train", "Retry"))
    )
    assert names == [
        "round(0:round 1)",
        "round(1:round 2)",
        "train(0:round 1 / clients 0,1)",
        "train(0:round 2 / clients 0,1)",
        "train(1:round 1 / client 2)",
        "train(1:round 2 / client 2)",
    ]
    assert "round 1 / clients 0,1 ✔ train loss" in result.output

    model = mlflow.pytorch.load_model(summary["mlflow_model_uri"])
    import torch

    from argofl.steps.data import load_dataset

    test = load_dataset("fashion-mnist", "test")
    x = torch.from_numpy(test.x[:500].astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        predicted = model(x).argmax(dim=1).numpy()
    assert (predicted == test.y[:500]).mean() > 0.5
