"""``evaluate``: the round's metrics — the global model on the central test set (when there is one) and
the federated evaluation its clients reported — to MLflow, the store and the step's outputs.

Federated evaluation: each sampled client with a local test split evaluated the global model that
entered the round (``round-NNNN/client-eval/``); the round reports their example-weighted loss and
accuracy and the spread of accuracy across clients. Without a central test set (``data.central_eval``
off) the round's ``loss``/``accuracy`` are the federated ones.

The step also logs the aggregate step's report of the round (:mod:`~argofl.steps.round_report`): its
client table first, then all the round's metrics in one batch, unless an earlier attempt got that far.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence

from argofl.steps import round_report, tracking
from argofl.steps.checkpoint import load_checkpoint
from argofl.steps.data import load_dataset
from argofl.steps.frameworks import get_backend
from argofl.steps.runinfo import RunLayout, open_run, write_json
from argofl.steps.store import ObjectNotFound, Store

log = logging.getLogger(__name__)

FEDERATED_OUTPUTS = (
    "fed-loss",
    "fed-accuracy",
    "fed-accuracy-min",
    "fed-accuracy-max",
    "fed-accuracy-std",
    "fed-clients",
    "fed-examples",
)
"""The federated evaluation's output parameters (NaN, 0 clients when no client had a test split)."""


def federated_summary(evaluations: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Example-weighted loss and accuracy of client evaluations, plus the accuracy spread across clients."""
    examples = sum(float(e["examples"]) for e in evaluations)
    if not evaluations or examples <= 0:
        nan = float("nan")
        spread = {"accuracy_min": nan, "accuracy_max": nan, "accuracy_std": nan}
        return {"loss": nan, "accuracy": nan, **spread, "clients": 0.0, "examples": 0.0}
    accuracies = [float(e["accuracy"]) for e in evaluations]
    mean_acc = sum(accuracies) / len(accuracies)
    return {
        "loss": sum(float(e["loss"]) * float(e["examples"]) for e in evaluations) / examples,
        "accuracy": sum(float(e["accuracy"]) * float(e["examples"]) for e in evaluations) / examples,
        "accuracy_min": min(accuracies),
        "accuracy_max": max(accuracies),
        "accuracy_std": math.sqrt(sum((a - mean_acc) ** 2 for a in accuracies) / len(accuracies)),
        "clients": float(len(evaluations)),
        "examples": examples,
    }


def _client_evaluations(store: Store, layout: RunLayout, round: int) -> list[dict[str, float]]:
    """The evaluations the round's sampled clients wrote (clients without a test split wrote none)."""
    try:
        clients = [str(c) for c in json.loads(store.get_bytes(layout.plan_key(round)))["clients"]]
    except (ObjectNotFound, ValueError, KeyError, TypeError):
        log.warning("round %d: no readable plan; no federated evaluation", round)
        return []
    found = []
    for client in clients:
        try:
            found.append(json.loads(store.get_bytes(layout.client_eval_key(round, client))))
        except ObjectNotFound:
            continue
    return found


def run(*, run_key: str, round: int) -> dict[str, float]:
    """Evaluate round ``round``; returns ``loss``, ``accuracy``, ``examples`` and the ``fed-*`` outputs."""
    store, layout, record = open_run(run_key)
    s, data = record.settings, record.data
    ckpt = load_checkpoint(store, layout.global_key(round))
    fed = federated_summary(_client_evaluations(store, layout, round))
    if data.central:
        backend = get_backend(s.framework)
        backend.configure(threads=s.threads)
        test = load_dataset(s.dataset, "test", s.data_dir or None)
        model = backend.build_model(
            s.model, input_shape=test.input_shape, num_classes=test.num_classes, seed=s.seed
        )
        backend.set_weights(model, ckpt.arrays)
        metrics = backend.evaluate(model, test.x, test.y, batch_size=s.eval_batch_size)
    else:
        metrics = {"loss": fed["loss"], "accuracy": fed["accuracy"], "examples": fed["examples"]}
    doc: dict[str, object] = {
        "round": round,
        **metrics,
        "train_loss": ckpt.manifest.metrics.get("loss"),
        "train_accuracy": ckpt.manifest.metrics.get("accuracy"),
        "train_examples": ckpt.manifest.examples,  # the aggregated clients'; "examples": evaluated ones
        "clients": ckpt.manifest.metrics.get("clients"),
        "global": store.key_uri(layout.global_key(round) + ".safetensors"),
    }
    if fed["clients"]:
        doc["federated"] = fed
        doc["evaluated_on"] = "central test set" if data.central else "clients' test splits"
    write_json(store, layout.eval_key(round), doc)
    to_log = {f"fed_{k}": v for k, v in fed.items()} if fed["clients"] else {}
    if data.central:
        to_log.update({"test_loss": metrics["loss"], "test_accuracy": metrics["accuracy"]})
    _log(record.mlflow_run_id, round, to_log, round_report.load(store, layout, round))
    if data.central:
        log.info("round %d: test loss %.4f, accuracy %.4f", round, metrics["loss"], metrics["accuracy"])
    if fed["clients"]:
        log.info(
            "round %d: federated evaluation of the incoming model on %d clients (%d examples): loss %.4f, "
            "accuracy %.4f (clients %.4f–%.4f)",
            round,
            int(fed["clients"]),
            int(fed["examples"]),
            fed["loss"],
            fed["accuracy"],
            fed["accuracy_min"],
            fed["accuracy_max"],
        )
    elif not data.central:
        log.warning("round %d: no central test set and no client reported an evaluation", round)
    return {**metrics, **{"fed-" + k.replace("_", "-"): v for k, v in fed.items()}}


def _log(
    run_id: str, round: int, metrics: Mapping[str, float], report: round_report.RoundReport | None
) -> None:
    """Log the round's ``metrics`` and the aggregate step's ``report`` to MLflow, once: its table
    first (an artifact rewritten whole), then every metric in one batch whose
    :data:`~argofl.steps.round_report.MARKER` tells a retry that the round is logged."""
    if report is None:
        log.warning("round %d has no aggregate report; its aggregation metrics are not logged", round)
    elif tracking.has_metric(run_id, round_report.MARKER, step=round):
        log.info("round %d: metrics already logged by an earlier attempt", round)
        return
    else:
        tracking.log_dict(run_id, report.table, report.artifact)
        metrics = {**report.metrics, **metrics}
    if metrics:
        tracking.log_metrics(run_id, metrics, step=round)
