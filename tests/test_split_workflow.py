"""A whole split-learning workflow through the local executor (`argofl run`): daemon server task with a
readiness probe, clients reaching it at {{tasks.server.ip}}, evaluate, finalize; small data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from argofl.pipelines.cli import cli
from argofl.pipelines.compile import manifest_for
from argofl.pipelines.config import load_config
from argofl.steps.checkpoint import load_checkpoint
from argofl.steps.runinfo import RunLayout
from argofl.steps.split.settings import bottom_key, token_key, top_key
from argofl.steps.store import open_store
from tests.servers import free_port

_slow = pytest.mark.slow


def _config(tmp_path: Path, mode: str, rounds: int) -> Path:
    path = tmp_path / f"it-{mode}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "kind": "split",
                "experiment": f"it-{mode}",
                "data_limit": 1000,
                "clients": 2,
                "min_clients": 2,
                "rounds": rounds,
                "batch_size": 32,
                "lr": 0.05,
                "seed": 1,
                "split": {"mode": mode, "cut": "pool2", "port": free_port(), "idle_timeout": 60},
            }
        )
    )
    return path


@_slow
@pytest.mark.parametrize(("mode", "rounds"), [("vanilla", 2), ("splitfed", 1)])
def test_split_workflow_runs_locally(tmp_path, fmnist_dir, mode, rounds):
    config = _config(tmp_path, mode, rounds)
    runs = tmp_path / "runs"
    result = CliRunner().invoke(
        cli, ["run", str(config), "--runs-dir", str(runs), "-p", f"data-dir={fmnist_dir}"]
    )
    assert result.exit_code == 0, result.output
    summary_path = Path(
        next(ln for ln in result.output.splitlines() if "summary: " in ln).split("summary: ")[1]
    )
    summary = json.loads(summary_path.read_text())
    assert [r["round"] for r in summary["rounds"]] == list(range(1, rounds + 1))
    assert summary["final_accuracy"] > 0.3  # learned something (10 classes: chance is 0.1)

    run_key = f"it-{mode}/{summary['run']}"
    store = open_store((runs / "store").as_uri())
    layout = RunLayout(run_key)
    final = load_checkpoint(store, layout.global_key(rounds))
    top = load_checkpoint(store, top_key(run_key, rounds))
    bottoms = [load_checkpoint(store, bottom_key(run_key, rounds, c)) for c in ("0", "1")]
    assert set(top.arrays) == {"fc1.weight", "fc1.bias", "logits.weight", "logits.bias"}
    assert set(final.arrays) == set(top.arrays) | set(bottoms[0].arrays)
    for name in top.arrays:
        np.testing.assert_array_equal(final.arrays[name], top.arrays[name])
    if mode == "vanilla":  # the round's bottom is the last client's
        np.testing.assert_array_equal(final.arrays["conv1.weight"], bottoms[1].arrays["conv1.weight"])
    else:  # SplitFed: the example-weighted mean of the clients' bottoms
        mean = (bottoms[0].arrays["conv1.weight"] + bottoms[1].arrays["conv1.weight"]) / 2
        np.testing.assert_allclose(final.arrays["conv1.weight"], mean, rtol=1e-5, atol=1e-6)

    # client nodes read "round R / client C" in the Argo UI (vanilla: steps in turn; SplitFed: a DAG fan-out)
    status = json.loads((summary_path.parent / "status.json").read_text())
    task = "client" if mode == "vanilla" else "clients"
    names = sorted(
        n["displayName"]
        for n in status["nodes"].values()
        if n.get("templateName") == "split-client" and n["type"] in ("Pod", "Retry")
    )
    assert names == sorted(
        f"{task}({c}:round {r} / client {c})" for r in range(1, rounds + 1) for c in (0, 1)
    )
    if mode == "splitfed":  # by default the server's daemon does not take a client's process slot
        spans = [
            (n["startedAt"], n["finishedAt"])
            for n in status["nodes"].values()
            if n.get("templateName") == "split-client" and n["type"] == "Pod"
        ]
        assert len(spans) == 2
        assert max(s for s, _ in spans) < min(f for _, f in spans), (
            f"clients ran one after the other: {spans}"
        )

    # the token is only in the store, never in logs, manifests or status
    token = store.get_bytes(token_key(run_key)).decode()
    for path in (runs / "workflows").rglob("*"):
        if path.is_file():
            assert token not in path.read_text(errors="replace"), path


def test_split_manifest_has_a_daemon_server_and_clients_reaching_its_ip():
    root = Path(__file__).resolve().parents[1]
    for name, mode in (("split-fmnist-torch", "vanilla"), ("splitfed-fmnist-torch", "splitfed")):
        cfg = load_config(root / "configs" / f"{name}.yaml")
        manifest = manifest_for(cfg)
        templates = {t["name"]: t for t in manifest["spec"]["templates"]}
        # the daemon is an active child all round long: cluster.parallelism counts clients only
        assert templates["round"]["parallelism"] == cfg.cluster.parallelism + 1
        server = templates["split-server"]
        assert server["daemon"] is True
        assert server["container"]["readinessProbe"]
        tasks = {t["name"]: t for t in templates["round"]["dag"]["tasks"]}
        assert tasks["clients"]["depends"] == "server"
        server_arg = next(p for p in tasks["clients"]["arguments"]["parameters"] if p["name"] == "server")
        assert server_arg["value"].startswith("http://{{tasks.server.ip}}:")
        if mode == "vanilla":
            assert templates["split-clients"]["parallelism"] == 1
        else:
            assert tasks["clients"]["withSequence"] == {
                "count": "{{workflow.parameters.clients}}",
                "format": "{{inputs.parameters.round}} / client %d",  # round 3 / client 7
            }


def test_a_split_rounds_summary_says_how_many_examples_its_clients_trained_on(
    tmp_path, monkeypatch, fmnist_dir
):
    """A round's ``examples`` are those its model was evaluated on (the test set, as in FedAvg's summary);
    ``train_examples`` those its clients trained on (the server's half counts them). The summary had
    ``examples`` only, which read as the clients' training examples."""
    from tests.require import require_module

    require_module("torch")
    from argofl.steps import step_finalize
    from argofl.steps.checkpoint import save_checkpoint
    from argofl.steps.data import load_dataset
    from argofl.steps.settings import Settings
    from argofl.steps.split import steps as split_steps
    from argofl.steps.split.settings import SplitOptions

    monkeypatch.setenv("ARGOFL_STORE", (tmp_path / "store").as_uri())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    settings = Settings.from_mapping(
        {"experiment": "x", "data_dir": str(fmnist_dir), "clients": 2, "rounds": 1}
    )
    split_steps.init(settings, SplitOptions(), run_key="x/run", workflow_name="run", workflow_uid="u")
    store = open_store((tmp_path / "store").as_uri())
    start = load_checkpoint(store, RunLayout("x/run").global_key(0)).arrays
    # what a round's server and its last client store (their halves here: the whole round-0 model)
    metrics = {"loss": 1.0, "accuracy": 0.5, "examples": 700.0, "clients": 2.0}
    extra = {"clients": "0,1", "mode": "vanilla"}
    save_checkpoint(store, top_key("x/run", 1), start, round=1, examples=700, metrics=metrics, extra=extra)
    save_checkpoint(store, bottom_key("x/run", 1, "1"), start, round=1, client="1", examples=300)
    split_steps.evaluate(run_key="x/run", round=1, wait=0)
    [round1] = step_finalize.run(run_key="x/run")["rounds"]
    assert round1["train_examples"] == 700
    assert round1["examples"] == len(load_dataset("fashion-mnist", "test", str(fmnist_dir)).y)
