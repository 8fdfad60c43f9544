"""MLflow tracking for a run: one MLflow run per experiment run, created by ``init``.

Only init, aggregate, evaluate and finalize talk to MLflow (train steps never import it). The
tracking URI comes from ``$MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NamedTuple

__all__ = ["RunRef", "TrackingError", "create_run", "end_run", "log_dict", "log_metrics", "run_url"]


class RunRef(NamedTuple):
    """Where a run lives on the tracking server."""

    experiment_id: str
    run_id: str


class TrackingError(RuntimeError):
    """MLflow could not be reached or refused a request."""


def _client() -> Any:
    # Fail fast on an unreachable server instead of MLflow's default minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def _call(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        uri = os.environ.get("MLFLOW_TRACKING_URI", "<default>")
        message = " ".join(str(exc).split())[:300]
        raise TrackingError(f"MLflow at {uri} failed to {what}: {type(exc).__name__}: {message}") from None


def create_run(
    experiment: str, *, run_name: str, params: Mapping[str, str], tags: Mapping[str, str]
) -> RunRef:
    """Create the experiment (if needed) and a run with ``params`` and ``tags``."""
    from mlflow.entities import Param, RunTag

    client = _client()
    found = _call("look up the experiment", client.get_experiment_by_name, experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        experiment_id = _call("create the experiment", client.create_experiment, experiment)
    run = _call("create a run", client.create_run, experiment_id, tags=dict(tags), run_name=run_name)
    run_id: str = run.info.run_id
    _call(
        "log params",
        client.log_batch,
        run_id,
        params=[Param(k, v) for k, v in params.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    return RunRef(str(experiment_id), run_id)


def run_url(ui: str, ref: RunRef) -> str:
    """The run's page in the MLflow UI at ``ui`` (``""`` when no http(s) UI address is known)."""
    if not ui.startswith(("http://", "https://")):
        return ""
    return f"{ui.rstrip('/')}/#/experiments/{ref.experiment_id}/runs/{ref.run_id}"


def log_metrics(run_id: str, metrics: Mapping[str, float], *, step: int) -> None:
    """Log ``metrics`` at ``step`` (the round)."""
    import time

    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    batch = [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
    _call("log metrics", _client().log_batch, run_id, metrics=batch)


def log_dict(run_id: str, doc: Mapping[str, Any], path: str) -> None:
    """Store ``doc`` as a JSON artifact of the run."""
    _call("log an artifact", _client().log_dict, run_id, dict(doc), path)


def end_run(run_id: str, status: str) -> None:
    """Mark the run FINISHED / FAILED / KILLED."""
    _call("end the run", _client().set_terminated, run_id, status)
