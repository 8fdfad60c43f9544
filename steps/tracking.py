"""MLflow tracking for a run: one MLflow run per experiment run, created by ``init``.

Only init, evaluate and finalize talk to MLflow (train and aggregate steps never import it; the
aggregate step leaves its round's metrics to evaluate: :mod:`~argofl.steps.round_report`). The
tracking URI comes from ``$MLFLOW_TRACKING_URI``, which must be set (no stray ``./mlflow.db``).
An unreachable or failing server is a :class:`TrackingError` (transient: exit code 75, retried).
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

from argofl.steps import mlflow_db
from argofl.steps.errors import BadInputError, TransientError

__all__ = [
    "TRACKING_URIS",
    "RunRef",
    "TrackingError",
    "TrackingNotConfigured",
    "copy_metrics",
    "create_run",
    "end_run",
    "epoch_metric",
    "has_metric",
    "local_artifact_location",
    "log_dict",
    "log_metrics",
    "metric_round",
    "run_ref",
    "run_url",
    "tracking_uri_problem",
]

DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
"""SQLAlchemy databases MLflow tracks to (``postgresql+psycopg2://…`` names a driver)."""
TRACKING_URIS = (
    "sqlite:///PATH, http(s)://HOST[:PORT], postgresql://…, mysql://…, mssql://…, databricks://PROFILE "
    "or file:///PATH"
)
"""The tracking URIs MLflow has a store for, as an error line lists them."""
_EPOCH_METRIC = re.compile(r"client_[^_]+_epoch_\w+")
_BATCH = 1000
"""The most metrics one MLflow ``log_batch`` takes."""


class RunRef(NamedTuple):
    """Where a run lives on the tracking server."""

    experiment_id: str
    run_id: str


class TrackingError(TransientError, RuntimeError):
    """MLflow could not be reached or refused a request."""


class TrackingNotConfigured(BadInputError):
    """``$MLFLOW_TRACKING_URI`` is not set: exit code 2 (MLflow's default would be a stray
    ``./mlflow.db`` in whatever directory the step runs in)."""


def tracking_uri_problem(uri: str) -> str | None:
    """Why MLflow has no tracking store for ``uri`` (an init step would fail on it); None when it has.

    Reads the URI only: connects to nothing and imports no MLflow (a plugin's scheme is its installed
    ``mlflow.tracking_store`` entry point). A plain path is a file store, as for MLflow."""
    try:
        parsed = urllib.parse.urlparse(uri)
    except ValueError as exc:  # an unclosed IPv6 bracket: http://[::1
        return f"MLflow tracking URI {uri!r} is not a valid URI ({exc}): use {TRACKING_URIS}"
    scheme = parsed.scheme
    if scheme == "sqlite" and not uri.partition(":")[2].startswith("///"):
        return (
            f"MLflow tracking URI {uri!r} names no database file: use sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db (every step opens it)"
        )
    if scheme in ("http", "https"):
        if not parsed.hostname:
            return f"MLflow tracking URI {uri!r} names no host: use {scheme}://HOST[:PORT]"
        try:
            parsed.port  # noqa: B018 (raises ValueError for a port that is no number in 0-65535)
        except ValueError as exc:
            return f"MLflow tracking URI {uri!r} has no valid port ({exc}): use {scheme}://HOST[:PORT]"
    if scheme in ("", "file") and uri != "databricks" and not _file_store_allowed():
        return (
            f"MLflow tracking URI {uri!r} is a file store, which MLflow 3 refuses unless "
            f"{FILE_STORE_VARIABLE}=true is exported: use sqlite:///PATH.db"
        )
    known = ("", "file", "http", "https", "databricks")
    if scheme in known or scheme.partition("+")[0] in DATABASE_SCHEMES:
        return None
    plugins = sorted({entry.name for entry in metadata.entry_points(group="mlflow.tracking_store")})
    if scheme in plugins:
        return None
    installed = f", or a plugin's {', '.join(f'{p}://' for p in plugins)}" if plugins else ""
    return f"unsupported MLflow tracking URI {uri!r}: use {TRACKING_URIS}{installed}"


FILE_STORE_VARIABLE = "MLFLOW_ALLOW_FILE_STORE"
"""What lets MLflow 3 open a file store (``./mlruns``, ``file:///…``), which it otherwise refuses."""


def _file_store_allowed() -> bool:
    return os.environ.get(FILE_STORE_VARIABLE, "").strip().lower() in ("true", "1")


def _client() -> Any:
    # Fail fast on an unreachable server instead of MLflow's default minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    from mlflow.tracking import MlflowClient

    # the environment is the source of truth for steps (an in-process mlflow.set_tracking_uri is not)
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        raise TrackingNotConfigured(
            "MLFLOW_TRACKING_URI is not set: steps log to MLflow, so set it to the tracking server "
            "(http://HOST:5000) or a database (sqlite:////abs/path/mlflow.db); nothing was logged"
        )
    mlflow_db.prepare(uri)
    return MlflowClient(uri)


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
        location = local_artifact_location(os.environ.get("MLFLOW_TRACKING_URI", ""), experiment)
        experiment_id = _call(
            "create the experiment", client.create_experiment, experiment, artifact_location=location
        )
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


def local_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Where a local (``sqlite:///``) tracking store keeps an experiment's artifacts:
    ``mlartifacts/<experiment>/`` beside the database. MLflow's own default, ``./mlruns``, is relative
    to whichever step process created the experiment. Servers choose for themselves (None)."""
    database = mlflow_db.sqlite_path(tracking_uri)
    if database is None:
        return None
    return (Path(database).resolve().parent / "mlartifacts" / experiment).as_uri()


def run_ref(run_id: str) -> RunRef:
    """The experiment and id of an existing run."""
    run = _call("look up run " + run_id, _client().get_run, run_id)
    return RunRef(str(run.info.experiment_id), run_id)


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


def epoch_metric(client: str, name: str) -> str:
    """The key of a client's per-epoch metric ``name``: its steps count epochs (:func:`metric_round`)."""
    return f"client_{client}_epoch_{name}"


def metric_round(key: str, step: int, local_epochs: int) -> int:
    """The round a value logged at ``step`` belongs to: a step is the round, except for per-epoch client
    metrics (:func:`epoch_metric`), whose step is the epoch across rounds (round r's first is
    ``(r - 1) * local_epochs + 1``)."""
    if _EPOCH_METRIC.fullmatch(key):
        return (step - 1) // max(local_epochs, 1) + 1
    return step


def copy_metrics(source_run_id: str, target_run_id: str, *, keep: Callable[[str, int], bool]) -> int:
    """Log into ``target_run_id`` every value of ``source_run_id``'s metrics for which ``keep(key, step)``
    holds, with its own step and timestamp; how many."""
    from mlflow.entities import Metric

    client = _client()
    source = _call(f"read run {source_run_id}", client.get_run, source_run_id)
    copied = []
    for key in sorted(source.data.metrics):
        history = _call(f"read metric {key}", client.get_metric_history, source_run_id, key)
        copied += [Metric(key, m.value, m.timestamp, m.step) for m in history if keep(key, m.step)]
    for start in range(0, len(copied), _BATCH):
        _call("copy metrics", client.log_batch, target_run_id, metrics=copied[start : start + _BATCH])
    return len(copied)


def has_metric(run_id: str, key: str, *, step: int) -> bool:
    """Whether metric ``key`` of the run has a value at ``step``."""
    history = _call(f"read metric {key}", _client().get_metric_history, run_id, key)
    return any(m.step == step for m in history)


def log_dict(run_id: str, doc: Mapping[str, Any], path: str) -> None:
    """Store ``doc`` as a JSON artifact of the run."""
    _call("log an artifact", _client().log_dict, run_id, dict(doc), path)


def end_run(run_id: str, status: str) -> None:
    """Mark the run FINISHED / FAILED / KILLED."""
    _call("end the run", _client().set_terminated, run_id, status)
