"""``init``: validate settings, write the round-0 checkpoint, create the MLflow run, freeze run.json.

A resubmitted workflow (``start_round > 1``) instead continues an earlier run: it copies that run's
global checkpoint of round ``start_round - 1`` and its evaluations, and gives the new MLflow run the earlier
rounds' metrics and client tables; then rounds go on from there.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Mapping
from typing import Any

import numpy as np

from argofl.steps import round_report, tracking
from argofl.steps.checkpoint import (
    CheckpointNotFound,
    checkpoint_exists,
    checkpoint_keys,
    encode_arrays,
    load_checkpoint,
    load_manifest,
    save_checkpoint,
    specs_of,
)
from argofl.steps.client_data import DataOptions, model_shape
from argofl.steps.data import load_dataset
from argofl.steps.frameworks import get_backend
from argofl.steps.runinfo import (
    RunError,
    RunLayout,
    RunRecord,
    load_record,
    now,
    start_problem,
    store_from_env,
)
from argofl.steps.settings import Settings
from argofl.steps.store import ObjectNotFound, Store
from argofl.steps.strategies import STRATEGIES, get_strategy

log = logging.getLogger(__name__)

MLFLOW_UI_ENV = "ARGOFL_MLFLOW_UI"
"""The MLflow UI address as users' browsers reach it; init turns it into the run's link."""


def run(
    settings: Settings,
    *,
    run_key: str,
    workflow_name: str,
    workflow_uid: str,
    start_round: int = 1,
    resume_from: str = "",
    data: DataOptions | None = None,
    params: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Initialise the run at ``run_key``. Safe to retry: a retry of the same workflow's init reuses
    what an earlier attempt wrote (verifying it); a run initialised by another workflow is refused.
    ``params``: the MLflow run's params (default: every setting; a kind records the settings it uses and
    its own options, e.g. ``split-cut``)."""
    store = store_from_env()
    layout = RunLayout(run_key)
    if store.exists(layout.record_key):
        return _rerun(store, layout, settings, workflow_name, workflow_uid)
    problem = start_problem(start_round, resume_from, settings.rounds)
    if problem is not None:
        raise RunError(problem)
    data = data or DataOptions()
    if data.source == "partition" or data.central:
        # The test split is small and tells us input shape and classes (and that the dataset exists).
        test = load_dataset(settings.dataset, "test", settings.data_dir or None)
        input_shape, num_classes = test.input_shape, test.num_classes
    else:  # clients own the data: nothing central to read
        input_shape, num_classes = model_shape(settings)
    backend = get_backend(settings.framework)
    backend.configure(threads=settings.threads)
    model = backend.build_model(
        settings.model, input_shape=input_shape, num_classes=num_classes, seed=settings.seed
    )
    weights = backend.get_weights(model)
    if start_round > 1:
        uri = _resume(store, layout, RunLayout(resume_from), start_round, weights)
        if get_strategy(settings.strategy, **settings.server_options()).stateful:
            _resume_server_state(store, layout, RunLayout(resume_from), start_round - 1, settings.strategy)
    else:
        uri = save_or_verify(store, layout.global_key(0), weights, round=0)
        log.info("round-0 global checkpoint at %s", uri)
    if STRATEGIES[settings.strategy].secret:
        _write_secret(store, layout, RunLayout(resume_from) if start_round > 1 else None)
    ref = tracking.create_run(
        settings.experiment,
        run_name=workflow_name,
        params=settings.to_params() if params is None else params,
        tags={
            "argo.workflow.name": workflow_name,
            "argo.workflow.uid": workflow_uid,
            "argofl.store": store.key_uri(run_key),
            "argofl.framework": settings.framework,
            "argofl.data_source": data.source,
            "argofl.start_round": str(start_round),
            "argofl.resumed_from": resume_from if start_round > 1 else "-",
        },
    )
    if start_round > 1:
        _carry_history(store, RunLayout(resume_from), ref.run_id, start_round)
    record = RunRecord(settings, ref.run_id, workflow_name, workflow_uid, now(), data)
    store.put_bytes(layout.record_key, record.to_json())
    url = tracking.run_url(os.environ.get(MLFLOW_UI_ENV, ""), ref)
    log.info("MLflow run %s created for experiment %s %s", ref.run_id, settings.experiment, url)
    return {"mlflow-run-id": ref.run_id, "mlflow-run-url": url, "global": uri}


def _write_secret(store: Store, layout: RunLayout, previous: RunLayout | None) -> None:
    """The run's noise secret: fresh, or the resumed run's (so that its later rounds draw the same noise).
    An earlier attempt's secret is kept (init is retried)."""
    if store.exists(layout.secret_key):
        log.info("noise secret kept from an earlier attempt")
        return
    if previous is None:
        store.put_bytes(layout.secret_key, secrets.token_bytes(32))
        log.info("noise secret written")
        return
    try:
        secret = store.get_bytes(previous.secret_key)
    except ObjectNotFound:
        raise RunError(
            f"cannot resume from {previous.run_key}: it has no noise secret at "
            f"{store.key_uri(previous.secret_key)} (was it run with another strategy?)"
        ) from None
    store.put_bytes(layout.secret_key, secret)
    log.info("noise secret copied from %s", previous.run_key)


def _resume_server_state(store: Store, layout: RunLayout, previous: RunLayout, last: int, name: str) -> None:
    """Copy the earlier run's server optimizer state after round ``last`` (its blob and manifest)."""
    source = previous.server_state_key(last)
    if not checkpoint_exists(store, source):
        raise RunError(
            f"cannot resume a {name} run from {previous.run_key}: it has no server state for round {last} "
            f"at {store.key_uri(source)} (was it run with another strategy?)"
        )
    for src, dst in zip(checkpoint_keys(source), checkpoint_keys(layout.server_state_key(last)), strict=True):
        store.put_bytes(dst, store.get_bytes(src))


def _resume(
    store: Store, layout: RunLayout, previous: RunLayout, start_round: int, fresh: dict[str, np.ndarray]
) -> str:
    """Copy the earlier run's global checkpoint of ``start_round - 1`` and its evaluations."""
    last = start_round - 1
    try:
        ckpt = load_checkpoint(store, previous.global_key(last), like=specs_of(fresh))
    except CheckpointNotFound:
        raise RunError(
            f"cannot resume from {previous.run_key}: no global checkpoint for round {last} at "
            f"{store.key_uri(previous.global_key(last))}"
        ) from None
    uri = save_or_verify(
        store,
        layout.global_key(last),
        ckpt.arrays,
        round=last,
        examples=ckpt.manifest.examples,
        metrics=ckpt.manifest.metrics,
        extra={"resumed_from": previous.run_key},
    )
    for r in range(1, start_round):
        if store.exists(previous.eval_key(r)):
            store.put_bytes(layout.eval_key(r), store.get_bytes(previous.eval_key(r)))
    log.info("resuming from %s: round %d global checkpoint copied to %s", previous.run_key, last, uri)
    return uri


def _carry_history(store: Store, previous: RunLayout, run_id: str, start_round: int) -> None:
    """Give the resumed run's MLflow run the earlier run's metrics and client tables of the rounds before
    ``start_round``, so that its charts start at round 1. Not found (another tracking server) or
    unreadable: a warning, and the run goes on without them."""
    try:
        earlier = load_record(store, previous)
        epochs = earlier.settings.local_epochs
        copied = tracking.copy_metrics(
            earlier.mlflow_run_id,
            run_id,
            keep=lambda key, step: tracking.metric_round(key, step, epochs) < start_round,
        )
        for r in range(1, start_round):
            report = round_report.load(store, previous, r)
            if report is not None:
                tracking.log_dict(run_id, report.table, report.artifact)
    except (RunError, tracking.TrackingError) as exc:
        log.warning("the earlier rounds' MLflow history was not copied from %s: %s", previous.run_key, exc)
        return
    log.info(
        "rounds 1–%d: %d metric values copied from MLflow run %s",
        start_round - 1,
        copied,
        earlier.mlflow_run_id,
    )


def save_or_verify(store: Store, key: str, arrays: Mapping[str, np.ndarray], **manifest: Any) -> str:
    """Write the checkpoint at ``key``, or, when an earlier attempt already wrote it, check that it
    holds exactly ``arrays`` (same bytes); return its blob's URI."""
    if not checkpoint_exists(store, key):
        return save_checkpoint(store, key, arrays, **manifest)
    blob_key = checkpoint_keys(key)[0]
    found = load_manifest(store, key)
    if found.sha256 != hashlib.sha256(encode_arrays(arrays)).hexdigest():
        raise RunError(
            f"{store.key_uri(blob_key)} exists and differs from what these settings produce "
            "(another workflow wrote it?); nothing was overwritten"
        )
    log.info("reusing %s written by an earlier attempt", store.key_uri(blob_key))
    return store.key_uri(blob_key)


def _rerun(
    store: Store, layout: RunLayout, settings: Settings, workflow_name: str, workflow_uid: str
) -> dict[str, str]:
    """A retried init of the same workflow: return what the first attempt recorded."""
    record = load_record(store, layout)
    if (record.workflow_name, record.workflow_uid, record.settings) != (
        workflow_name,
        workflow_uid,
        settings,
    ):
        raise RunError(
            f"run {store.key_uri(layout.record_key)} is already initialised by workflow "
            f"{record.workflow_name} with its own settings; nothing was overwritten"
        )
    ref = tracking.run_ref(record.mlflow_run_id)
    url = tracking.run_url(os.environ.get(MLFLOW_UI_ENV, ""), ref)
    global_uri = store.key_uri(checkpoint_keys(layout.global_key(0))[0])
    log.info("run %s was initialised by an earlier attempt; reusing it", layout.run_key)
    return {"mlflow-run-id": ref.run_id, "mlflow-run-url": url, "global": global_uri}
