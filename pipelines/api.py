"""argofl from Python: load an experiment, get its hera workflow, compile, run it here, submit it.

A thin facade over the modules the CLI uses (as ``kfp`` is over ``kfp.dsl``/``compiler``/``client``)::

    from argofl import api

    config = api.load_config("configs/fedavg-fmnist-torch.yaml")
    workflow = api.build(config)                  # a hera Workflow: inspect or customise it
    workflow.parallelism = 2
    api.save(workflow, "argo/my-experiment.yaml")  # what `argo submit` takes
    result = api.run_local(workflow, {"rounds": "2"})           # this machine, like `argofl run`
    name = api.submit(workflow, {"rounds": "20"}, host="https://argo.example:2746", token="…")

``run_local`` and ``submit`` take a hera workflow, a config (or its path) or a manifest dict. Errors are
:class:`ArgoflError` subclasses with one-line messages; ``ApiError`` for bad arguments.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import yaml

from argofl.pipelines.config import ExperimentConfig, load_config
from argofl.steps.errors import BadInputError

if TYPE_CHECKING:
    from hera.workflows import Workflow, WorkflowTemplate

    from argofl.pipelines.local.engine import LocalRunResult

__all__ = [
    "ApiError",
    "ExperimentConfig",
    "build",
    "compile_config",
    "load_config",
    "run_local",
    "save",
    "submit",
    "to_manifest",
]

Runnable: TypeAlias = "Workflow | WorkflowTemplate | ExperimentConfig | str | Path | Mapping[str, Any]"


class ApiError(BadInputError):
    """An argument the API cannot use (wrong type, unknown parameter, missing server)."""


def _config(config: ExperimentConfig | str | Path) -> ExperimentConfig:
    return config if isinstance(config, ExperimentConfig) else load_config(config)


def build(config: ExperimentConfig | str | Path, *, template: bool = False) -> Workflow | WorkflowTemplate:
    """The experiment's hera ``Workflow`` (or, with ``template``, its ``WorkflowTemplate``)."""
    from hera.workflows import Workflow, WorkflowTemplate

    from argofl.pipelines.compile import manifest_for, template_manifest_for

    cfg = _config(config)
    manifest = template_manifest_for(cfg) if template else manifest_for(cfg)
    built = (WorkflowTemplate if template else Workflow).from_dict(manifest)
    if not isinstance(built, Workflow):  # WorkflowTemplate is a Workflow in hera
        raise ApiError(f"hera built {type(built).__name__} from {cfg.name}, expected a Workflow")
    return built


def to_manifest(workflow: Runnable) -> dict[str, Any]:
    """The manifest (a plain dict, as ``argo submit`` reads it) of a workflow, config or manifest."""
    from hera.workflows import Workflow

    if isinstance(workflow, Workflow):
        manifest: dict[str, Any] = yaml.safe_load(workflow.to_yaml())
        return manifest
    if isinstance(workflow, Mapping):
        return yaml.safe_load(yaml.safe_dump(dict(workflow)))  # a deep, plain copy
    if isinstance(workflow, ExperimentConfig | str | Path):
        from argofl.pipelines.compile import manifest_for

        return manifest_for(_config(workflow))
    raise ApiError(
        f"expected a hera Workflow, an ExperimentConfig, a config path or a manifest dict, got "
        f"{type(workflow).__name__}"
    )


def compile_config(config: str | Path, out_dir: str | Path = "argo") -> Path:
    """``argofl compile``: write ``out_dir/<name>.yaml`` and ``out_dir/templates/<name>.yaml``."""
    from argofl.pipelines.compile import compile_config as compile_to

    return compile_to(config, out_dir)


def save(workflow: Runnable, path: str | Path) -> Path:
    """Write ``workflow``'s manifest as YAML to ``path`` (for ``argo submit`` or ``kubectl apply``)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(to_manifest(workflow), sort_keys=False))
    return target


def _check_parameters(manifest: Mapping[str, Any], parameters: Mapping[str, str]) -> dict[str, str]:
    """The ``-p`` check of the commands (same message), as an :class:`ApiError`."""
    from argofl.pipelines.parameters import ParameterError, check_overrides

    try:
        return check_overrides(manifest, parameters)
    except ParameterError as exc:
        raise ApiError(str(exc)) from None


def run_local(
    workflow: Runnable,
    parameters: Mapping[str, str] | None = None,
    *,
    runs_dir: str | Path = "runs",
    store: str | None = None,
    mlflow_uri: str | None = None,
    parallelism: int | None = None,
) -> LocalRunResult:
    """Run on this machine with the local executor, as ``argofl run`` does: store and MLflow default to
    ``runs_dir`` (a ``file://`` store and a SQLite database), relative paths are resolved here.

    Returns the run's result (``phase``, Argo-shaped ``status``, ``run_dir``, where a succeeded experiment
    also has its ``summary.json``); a failed run is a result with phase Failed or Error, not an exception.
    Called from the main thread, Ctrl-C (SIGINT), SIGTERM or SIGHUP stops the run as ``argofl run`` does
    (its steps stopped, its exit handler run; the signal again skips that), then takes its usual effect:
    KeyboardInterrupt for Ctrl-C.
    """
    from argofl.pipelines.local import forkserver, run_workflow
    from argofl.pipelines.local_params import (
        local_parallelism,
        parallelism_problem,
        tracking_problem,
        user_code_env,
        workflow_local_parameters,
    )
    from argofl.pipelines.parameters import NOTHING_STARTED, ParameterError, parameters_of
    from argofl.steps.store import FileStore

    manifest = to_manifest(workflow)
    given = _check_parameters(manifest, parameters or {})
    problem = parallelism_problem(manifest, parallelism or local_parallelism(manifest))
    if problem is not None:
        raise ParameterError(f"{problem}; {NOTHING_STARTED}")
    declared = parameters_of(manifest)
    root = Path(runs_dir).resolve()
    params = given
    if {"store", "mlflow-uri"} <= set(declared):  # an argofl experiment: local store and MLflow
        params = workflow_local_parameters(declared, given, root, store=store, mlflow_uri=mlflow_uri)
        problem = tracking_problem(params["mlflow-uri"])
        if problem is not None:
            raise ParameterError(f"{problem}; {NOTHING_STARTED}")
    root.mkdir(parents=True, exist_ok=True)  # only now: a refused run leaves no runs directory behind
    templates = {}
    if isinstance(workflow, ExperimentConfig | str | Path):  # rounds_per_workflow: the blocks' template
        from argofl.pipelines.compile import workflow_templates_for

        templates = workflow_templates_for(_config(workflow))
    steps_env = user_code_env()  # the user's modules (model factories, data loaders) import from here
    # a fork server for these steps and their framework (not one an earlier run started)
    forkserver.prestart_steps(steps_env, forkserver.framework_of({**declared, **params}))
    started = time.monotonic()
    result = run_workflow(
        manifest,
        params,
        runs_dir=root / "workflows",
        artifact_store=FileStore(root / "artifacts"),
        parallelism=parallelism or local_parallelism(manifest),
        stop_on_signals=True,  # from the main thread only
        env=steps_env,
        workflow_templates=templates,
    )
    if result.stopped_by is not None:  # the run is stopped and recorded: now what the signal would do
        signal.raise_signal(result.stopped_by)
    if result.phase == "Succeeded" and {"store", "experiment"} <= set(declared):
        from argofl.pipelines.run_summary import save_run_summary
        from argofl.steps.store import ObjectNotFound

        with contextlib.suppress(ObjectNotFound):  # not from a customised workflow that wrote none
            save_run_summary(result.run_dir, time.monotonic() - started)  # as argofl run does
    return result


def submit(
    workflow: Runnable,
    parameters: Mapping[str, str] | None = None,
    *,
    host: str | None = None,
    token: str | None = None,
    namespace: str | None = None,
    verify: bool | None = None,
) -> str:
    """Create the workflow on an Argo server through hera's ``WorkflowsService``; return its name.

    ``host``, ``token`` and ``namespace`` default to ``ARGO_SERVER``, ``ARGO_TOKEN`` and
    ``ARGO_NAMESPACE`` (then ``argofl``), as for ``argofl submit``.
    """
    from argofl.pipelines.argo_server import ClusterTarget, env_secure, env_verify, normalize_host
    from argofl.pipelines.parameters import set_parameters

    manifest = to_manifest(workflow)
    set_parameters(manifest, _check_parameters(manifest, parameters or {}))
    server = host or os.environ.get("ARGO_SERVER", "")
    if not server.strip():
        raise ApiError("no Argo server given: pass host='https://HOST:2746' or set ARGO_SERVER=HOST:PORT")
    try:
        url = normalize_host(server, secure=env_secure())
    except ValueError as exc:
        raise ApiError(f"host {server!r}: {exc}") from None
    target = ClusterTarget(
        host=url,
        namespace=(namespace or os.environ.get("ARGO_NAMESPACE") or "argofl").strip(),
        token=token if token is not None else os.environ.get("ARGO_TOKEN"),
        verify=env_verify() if verify is None else verify,
    )
    created = target.create(manifest)
    name = str((created.get("metadata") or {}).get("name") or "")
    if not name:
        raise ApiError(f"Argo server at {target.host} created a workflow but returned no name")
    return name
