"""``finalize``: write ``summary.json``, log the final model to MLflow, close the MLflow run.

``finish`` (the workflow's exit handler) marks the MLflow run FAILED when the workflow did not succeed.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from argofl.steps import tracking
from argofl.steps.checkpoint import checkpoint_exists, load_checkpoint, load_manifest
from argofl.steps.client_data import model_shape
from argofl.steps.data import load_dataset
from argofl.steps.frameworks import get_backend
from argofl.steps.runinfo import RunError, RunLayout, now, open_run, write_json
from argofl.steps.settings import Settings
from argofl.steps.store import ObjectNotFound, Store
from argofl.steps.strategies import DP_CLIPPING, DP_DELTA, DP_MODE, DP_NOISE

log = logging.getLogger(__name__)


def run(*, run_key: str) -> dict[str, Any]:
    """Summarise the run; returns the summary document."""
    store, layout, record = open_run(run_key)
    s = record.settings
    rounds = []
    for r in range(1, s.rounds + 1):
        try:
            rounds.append(json.loads(store.get_bytes(layout.eval_key(r))))
        except ObjectNotFound:
            raise RunError(f"round {r} has no evaluation at {store.key_uri(layout.eval_key(r))}") from None
    final = load_checkpoint(store, layout.global_key(s.rounds))
    backend = get_backend(s.framework)
    if record.data.central:
        test = load_dataset(s.dataset, "test", s.data_dir or None)
        input_shape, num_classes, example = test.input_shape, test.num_classes, test.x[:2]
    else:  # clients own the data: the input example is blank images of the model's input shape
        input_shape, num_classes = model_shape(s)
        example = np.zeros((2, *input_shape), dtype=np.uint8)
    model = backend.build_model(s.model, input_shape=input_shape, num_classes=num_classes, seed=s.seed)
    backend.set_weights(model, final.arrays)

    import mlflow

    with mlflow.start_run(run_id=record.mlflow_run_id):
        model_uri = backend.log_model(model, name="model", input_example=example)
    summary = {
        "experiment": s.experiment,
        "run": record.workflow_name,
        "workflow_uid": record.workflow_uid,
        "mlflow_run_id": record.mlflow_run_id,
        "mlflow_model_uri": model_uri,
        "settings": s.to_dict(),
        "rounds": rounds,
        "final_accuracy": rounds[-1]["accuracy"],
        "final_loss": rounds[-1]["loss"],
        "final_checkpoint": store.key_uri(layout.global_key(s.rounds) + ".safetensors"),
        "wall_time_s": round(now() - record.created_at, 3),
    }
    privacy = _privacy(store, layout, s, final.manifest.metrics)
    if privacy:
        summary["privacy"] = privacy
    uri = write_json(store, layout.summary_key, summary)
    tracking.log_dict(record.mlflow_run_id, summary, "summary.json")
    tracking.end_run(record.mlflow_run_id, "FINISHED")
    log.info("summary written to %s; final test accuracy %.4f", uri, summary["final_accuracy"])
    return summary


def _privacy(store: Store, layout: RunLayout, s: Settings, final: dict[str, float]) -> dict[str, Any]:
    """dp-fedavg's privacy spent: ε at δ after the last round and after each round this run holds."""
    if "dp_epsilon" not in final:
        return {}
    per_round = {}
    for r in range(1, s.rounds + 1):
        if checkpoint_exists(store, layout.global_key(r)):
            metrics = load_manifest(store, layout.global_key(r)).metrics
            if "dp_epsilon" in metrics:
                per_round[str(r)] = metrics["dp_epsilon"]
    return {
        "epsilon": final["dp_epsilon"],
        "delta": s.option(DP_DELTA),
        "mode": s.option(DP_MODE),
        "noise_multiplier": s.option(DP_NOISE),
        "clipping": s.option(DP_CLIPPING),
        "epsilon_per_round": per_round,
    }


def finish(*, run_key: str, status: str) -> None:
    """Exit handler: close the MLflow run as FAILED unless the workflow ``status`` is Succeeded."""
    if status == "Succeeded":
        return
    try:
        _, _, record = open_run(run_key)
    except RunError as exc:
        log.warning("workflow %s before init completed (%s); no MLflow run to close", status, exc)
        return
    tracking.end_run(record.mlflow_run_id, "FAILED" if status == "Failed" else "KILLED")
    log.info("MLflow run %s marked %s", record.mlflow_run_id, status)
