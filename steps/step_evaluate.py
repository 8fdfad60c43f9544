"""``evaluate``: the round's global model on the test set; metrics to MLflow and the store."""

from __future__ import annotations

import logging

from steps import tracking
from steps.checkpoint import load_checkpoint
from steps.data import load_dataset
from steps.frameworks import get_backend
from steps.runinfo import open_run, write_json

log = logging.getLogger(__name__)


def run(*, run_key: str, round: int) -> dict[str, float]:
    """Evaluate the global checkpoint of ``round``; returns ``{"loss", "accuracy", "examples"}``."""
    store, layout, record = open_run(run_key)
    s = record.settings
    ckpt = load_checkpoint(store, layout.global_key(round))
    backend = get_backend(s.framework)
    backend.configure(threads=s.threads)
    test = load_dataset(s.dataset, "test", s.data_dir or None)
    model = backend.build_model(
        s.model, input_shape=test.input_shape, num_classes=test.num_classes, seed=s.seed
    )
    backend.set_weights(model, ckpt.arrays)
    metrics = backend.evaluate(model, test.x, test.y, batch_size=s.eval_batch_size)
    write_json(
        store,
        layout.eval_key(round),
        {
            "round": round,
            **metrics,
            "train_loss": ckpt.manifest.metrics.get("loss"),
            "train_accuracy": ckpt.manifest.metrics.get("accuracy"),
            "clients": ckpt.manifest.metrics.get("clients"),
            "global": store.key_uri(layout.global_key(round) + ".safetensors"),
        },
    )
    tracking.log_metrics(
        record.mlflow_run_id, {"test_loss": metrics["loss"], "test_accuracy": metrics["accuracy"]}, step=round
    )
    log.info("round %d: test loss %.4f, accuracy %.4f", round, metrics["loss"], metrics["accuracy"])
    return metrics
