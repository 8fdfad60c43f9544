"""``init``: validate settings, write the round-0 checkpoint, create the MLflow run, freeze run.json."""

from __future__ import annotations

import logging

from steps import tracking
from steps.checkpoint import save_checkpoint
from steps.data import load_dataset
from steps.frameworks import get_backend
from steps.runinfo import RunError, RunLayout, RunRecord, now, store_from_env
from steps.settings import Settings

log = logging.getLogger(__name__)


def run(settings: Settings, *, run_key: str, workflow_name: str, workflow_uid: str) -> dict[str, str]:
    """Initialise the run at ``run_key``; refuses to touch a run that already has a record."""
    store = store_from_env()
    layout = RunLayout(run_key)
    if store.exists(layout.record_key):
        raise RunError(
            f"run {store.key_uri(layout.record_key)} is already initialised; nothing was overwritten"
        )
    # The test split is small and tells us input shape and classes (and that the dataset exists).
    test = load_dataset(settings.dataset, "test", settings.data_dir or None)
    backend = get_backend(settings.framework)
    backend.configure(threads=settings.threads)
    model = backend.build_model(
        settings.model, input_shape=test.input_shape, num_classes=test.num_classes, seed=settings.seed
    )
    uri = save_checkpoint(store, layout.global_key(0), backend.get_weights(model), round=0)
    log.info("round-0 global checkpoint written to %s", uri)
    run_id = tracking.create_run(
        settings.experiment,
        run_name=workflow_name,
        params=settings.to_params(),
        tags={
            "argo.workflow.name": workflow_name,
            "argo.workflow.uid": workflow_uid,
            "argofl.store": store.key_uri(run_key),
            "argofl.framework": settings.framework,
        },
    )
    record = RunRecord(settings, run_id, workflow_name, workflow_uid, now())
    store.put_bytes(layout.record_key, record.to_json())
    log.info("MLflow run %s created for experiment %s", run_id, settings.experiment)
    return {"mlflow-run-id": run_id, "global": uri}
