"""What the commands that run an argofl workflow on this machine (``argofl run``, ``resume``, ``local run``)
share: the checks before it starts (store, S3 access, MLflow), its fork server, the runs directory shared
with step containers, and the MLflow line printed after it."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from argofl.pipelines.local.containers import DockerOptions
from argofl.pipelines.local.refs import KeyRefs
from argofl.pipelines.local_params import tracking_problem, user_code_env
from argofl.pipelines.parameters import NOTHING_STARTED, outputs_of
from argofl.steps.store import StoreError, check_store_uri, open_store

__all__ = [
    "SHARED_DIRS",
    "check_local_inputs",
    "check_s3_access",
    "check_services",
    "check_tracking",
    "containers_for",
    "mlflow_run_line",
    "prestart_steps",
    "share_with_containers",
]


def check_services(
    manifest: Mapping[str, Any],
    values: Mapping[str, str],
    key_refs: KeyRefs | None,
    *,
    hints: Mapping[str, str],
    probe: bool,
) -> None:
    """One line, before anything starts, when the steps could not use the run's ``store`` (no store URI,
    an S3 store without endpoint or credentials) or its ``mlflow-uri`` (:func:`check_tracking`), where it
    has them; ``values``: the workflow's parameters with the run's over them; ``hints`` name the option
    that gave each of the two."""
    try:
        if "store" in values:
            check_store_uri(values["store"])
    except StoreError as exc:
        raise click.BadParameter(f"{exc}; {NOTHING_STARTED}", param_hint=hints["store"]) from None
    check_s3_access(manifest, values, key_refs)
    check_tracking(values.get("mlflow-uri", ""), hints["mlflow-uri"], probe)


def check_s3_access(manifest: Mapping[str, Any], values: Mapping[str, str], key_refs: KeyRefs | None) -> None:
    """One line, before anything starts, when an S3 store's endpoint or credentials are missing from what
    the steps will get (the environment, ``--secrets``): the run would fail in init, then in finish.
    ``values``: the workflow's parameters with the run's over them."""
    from argofl.pipelines.run_summary import steps_s3_env

    if not values.get("store", "").startswith(("s3://", "minio://")):
        return
    env = steps_s3_env(manifest, values, key_refs)
    try:
        open_store(values["store"], env)  # checks endpoint and credentials; connects to nothing
    except StoreError as exc:
        keys = (
            ("ARGOFL_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID"),
            ("ARGOFL_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"),
        )
        unset = not all(env.get(a) or env.get(b) for a, b in keys)
        secrets = ", or pass the argofl-s3 Secret's YAML with --secrets FILE" if unset else ""
        raise click.UsageError(f"{exc}{secrets}; {NOTHING_STARTED}") from None


def check_tracking(uri: str, param_hint: str | None, probe: bool) -> None:
    """One line, before anything starts, when the steps could not track to MLflow at ``uri`` (a scheme
    MLflow has no store for; with ``probe``, a server that does not answer): init would fail, the latter
    after its retries. ``param_hint`` names the option that gave ``uri`` (None: the run being resumed).
    Steps in containers (``--runtime docker``) have a network of their own: no ``probe`` for them."""
    if not uri:
        return
    problem = tracking_problem(uri, probe=probe)
    if problem is None:
        return
    if param_hint is None:
        raise click.UsageError(f"{problem}; {NOTHING_STARTED}")
    raise click.BadParameter(f"{problem}; {NOTHING_STARTED}", param_hint=param_hint)


def check_local_inputs(values: Mapping[str, str], given: Mapping[str, str], host: bool) -> None:
    """One line, before anything starts, for what this machine's ``init`` would not find: the dataset in
    a given ``data-dir`` (where the run reads it centrally: a partition, a central test set) and, for
    steps run as processes here (``host``), a bring-your-own model's module (``package.module:factory``).
    """
    from argofl.steps.client_data import DataOptions
    from argofl.steps.data import DATASETS, dataset_problem

    data = {k.removeprefix("data-"): values[k] for k in DataOptions().to_params() if k in values}
    options = DataOptions.from_mapping(data, where="parameters", strings=True)
    dataset, data_dir = values.get("dataset", ""), values.get("data-dir", "")
    if data_dir and dataset in DATASETS and (options.source == "partition" or options.central):
        problem = dataset_problem(dataset, "test", data_dir)
        if problem is not None:
            hint = "'-p data-dir'" if "data-dir" in given else "data_dir"
            raise click.BadParameter(f"{problem}; {NOTHING_STARTED}", param_hint=hint)
    model = values.get("model", "")
    if host and ":" in model:
        problem = _module_problem(model.partition(":")[0], user_code_env()["PYTHONPATH"].split(os.pathsep))
        if problem is not None:
            hint = "'-p model'" if "model" in given else "model"
            raise click.BadParameter(
                f"cannot import model factory module {model.partition(':')[0]!r} ({problem}); "
                f"{NOTHING_STARTED}",
                param_hint=hint,
            )


def _module_problem(module: str, paths: list[str]) -> str | None:
    """Why ``module`` cannot be imported by a step whose ``sys.path`` starts with ``paths``, then this
    Python's; None when it can. Finds its files without running them (no package is imported)."""
    from importlib.machinery import PathFinder
    from importlib.util import find_spec

    parts = module.split(".")
    spec = PathFinder.find_spec(parts[0], [*paths, *sys.path])
    if spec is None:  # a built-in, or found by another finder (an editable install's): not looked into
        if find_spec(parts[0]) is not None:
            return None
        return f"no module named {parts[0]!r} in {os.pathsep.join(paths)} or this Python's path"
    for depth, part in enumerate(parts[1:], 1):
        locations = list(spec.submodule_search_locations or [])
        if not locations:  # a module, not a package: what it puts in sys.modules shows only when it runs
            return None
        spec = PathFinder.find_spec(part, locations)
        if spec is None:
            return f"no module named {'.'.join(parts[: depth + 1])!r} in {'.'.join(parts[:depth])}"
    return None


def prestart_steps(framework: str) -> None:
    """Let the fork server import ``framework`` and MLflow while this process prepares the run."""
    from argofl.pipelines.local import forkserver

    forkserver.prestart_steps(user_code_env(), framework)  # the environment the host-process steps get


def containers_for(root: Path, containers: DockerOptions | None) -> DockerOptions | None:
    """``containers`` with the runs directory ``root`` bind-mounted and writable by the step images."""
    if containers is None:
        return None
    problem = _shared_root_problem(root)
    if problem is not None:
        raise click.UsageError(f"{problem}; {NOTHING_STARTED}")
    share_with_containers(root)
    return replace(containers, binds=(*containers.binds, str(root)))


def _shared_root_problem(root: Path) -> str | None:
    """Why ``root`` must not become the containers' runs directory (mode 777, mounted in each): it is the
    working directory, one above it, the home directory or the file system's root."""
    resolved, cwd = root.resolve(), Path.cwd().resolve()
    home = Path(os.environ.get("HOME") or Path.home()).resolve()
    what = (
        "the working directory"
        if resolved == cwd
        else "a directory above the working one"
        if resolved in cwd.parents
        else "the home directory"
        if resolved == home
        else None
    )
    if what is None:
        return None
    return (
        f"--runtime docker would make {resolved} ({what}), where the store and MLflow database go, "
        "writable by everyone and mount it in every container: give the runs a directory of their own "
        "(argofl run --runs-dir runs, argofl local run --runs-dir runs/local)"
    )


def mlflow_run_line(status: Mapping[str, Any], mlflow_uri: str) -> str | None:
    """``MLflow run: URL`` of a run whose workflow output ``mlflow-run-url`` links it, with how to start the
    UI of a local tracking store ``mlflow_uri``; None when the run has no such output."""
    url = outputs_of(status).get("mlflow-run-url")
    if not url:
        return None
    if mlflow_uri.startswith("http"):
        return f"MLflow run: {url}"
    return f"MLflow run: {url} (start the UI: mlflow ui --backend-store-uri {mlflow_uri})"


SHARED_DIRS = ("store", "mlartifacts")
"""What steps write below the runs directory: the default file store and MLflow's artifacts."""


def share_with_containers(root: Path) -> None:
    """Let the step images' user (UID 10001) write the runs directory's store and MLflow database.

    Directories become world-writable (an emptyDir's mode) and an existing ``mlflow.db`` writable by all;
    files the containers write stay theirs (remove them as root, or with ``docker run``).
    """
    directories = [root]
    for name in SHARED_DIRS:
        (root / name).mkdir(parents=True, exist_ok=True)
        directories += [Path(d) for d, _, _ in os.walk(root / name)]
    for path in directories:
        if path.stat().st_uid == os.getuid():
            path.chmod(0o777)
    for db in root.glob("mlflow.db*"):
        if db.stat().st_uid == os.getuid():
            db.chmod(0o666)
