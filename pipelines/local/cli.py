"""``argofl local``: run an Argo Workflow YAML on this machine and read its logs."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click
import yaml

from argofl.pipelines.exits import ArgoflGroup
from argofl.pipelines.kinds import is_argofl_workflow
from argofl.pipelines.local import DockerOptions, WorkflowInputError, run_workflow
from argofl.pipelines.local.containers import parse_image_map
from argofl.pipelines.local.forkserver import framework_of
from argofl.pipelines.local.logs import find_nodes, log_files, node_refs, pods_under, suggest_refs
from argofl.pipelines.local.model import Phase
from argofl.pipelines.local.refs import KeyRefs, load_refs
from argofl.pipelines.local.render import render_status
from argofl.pipelines.local_params import (
    local_parallelism,
    parallelism_problem,
    user_code_env,
    workflow_local_parameters,
)
from argofl.pipelines.local_start import (
    check_local_inputs,
    check_services,
    containers_for,
    mlflow_run_line,
    prestart_steps,
)
from argofl.pipelines.parameters import NOTHING_STARTED, check_overrides, overrides_option, parameters_of
from argofl.pipelines.stop_signals import stop_before_start
from argofl.steps.errors import one_line

__all__ = [
    "SECRETS_FILE",
    "check_parallelism",
    "container_options",
    "local",
    "runtime_options",
    "secrets_option",
]


@click.group(cls=ArgoflGroup, context_settings={"help_option_names": ["-h", "--help"]})
def local() -> None:
    """Run compiled Argo Workflows locally, without Kubernetes."""


def runtime_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--runtime``, ``--image-map``, ``--mount`` and ``--ignore-gpu``, shared by the run commands."""
    options = [
        click.option(
            "--runtime",
            type=click.Choice(["process", "docker"]),
            default="process",
            show_default=True,
            help="Run each pod as a host process, or as a container of its image (local Docker engine).",
        ),
        click.option(
            "--image-map",
            "image_map",
            multiple=True,
            metavar="FROM=TO",
            help="With --runtime docker: run image FROM as the local image TO (FROM * maps every other "
            "image); repeatable.",
        ),
        click.option(
            "--mount",
            "mounts",
            multiple=True,
            type=click.Path(exists=True, path_type=Path),
            metavar="PATH",
            help="With --runtime docker: bind-mount host PATH at the same path in every container.",
        ),
        click.option(
            "--ignore-gpu",
            is_flag=True,
            help="With --runtime docker: run pods that request nvidia.com/gpu without a GPU when the "
            "engine has none (instead of failing them).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


SECRETS_FILE = "argofl.secrets_file"
"""``ctx.meta`` key of the ``--secrets`` path given (for commands that print how to run again)."""


def _load_key_refs(ctx: click.Context, param: click.Parameter, value: Path | None) -> KeyRefs | None:
    if value is None:
        return None
    ctx.meta[SECRETS_FILE] = value.resolve()
    try:
        return load_refs(value)
    except WorkflowInputError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def secrets_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--secrets FILE``: Secrets/ConfigMaps (Kubernetes YAML) for ``secretKeyRef``/``configMapKeyRef``."""
    return click.option(
        "--secrets",
        "key_refs",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        callback=_load_key_refs,
        metavar="FILE",
        help="Kubernetes Secret/ConfigMap manifests (kubectl's YAML) that env valueFrom "
        "secretKeyRef/configMapKeyRef read first; the environment variable of the entry's name otherwise.",
    )(command)


def container_options(
    runtime: str, image_map: tuple[str, ...], mounts: tuple[Path, ...], ignore_gpu: bool
) -> DockerOptions | None:
    """The Docker runtime's options from the command line (None for the process runtime)."""
    if runtime != "docker":
        if image_map or mounts or ignore_gpu:
            raise click.BadParameter(
                "--image-map, --mount and --ignore-gpu apply to --runtime docker only; add --runtime docker",
                param_hint="--runtime",
            )
        return None
    try:
        mapping = parse_image_map(image_map)
    except WorkflowInputError as exc:
        raise click.BadParameter(str(exc), param_hint="--image-map") from None
    return DockerOptions(
        image_map=mapping, binds=tuple(str(m.resolve()) for m in mounts), ignore_gpu=ignore_gpu
    )


def check_parallelism(manifest: Mapping[str, Any], parallelism: int) -> None:
    """Refuse (exit 2, one line) a ``--parallelism`` the workflow cannot run with (a daemon's steps never
    start beside it)."""
    problem = parallelism_problem(manifest, parallelism)
    if problem is not None:
        raise click.BadParameter(f"{problem}; {NOTHING_STARTED}", param_hint="'--parallelism'")


def _load(path: Path) -> dict[str, Any]:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:  # YAML's errors span lines
        raise click.BadParameter(
            f"{path}: cannot read YAML: {one_line(exc)}", param_hint="WORKFLOW"
        ) from None
    if len(docs) != 1:
        found = len(docs) or "none"
        raise click.BadParameter(
            f"{path}: expected one Workflow document, found {found}", param_hint="WORKFLOW"
        )
    if not isinstance(docs[0], dict):
        raise click.BadParameter(
            f"{path}: expected one Workflow document (a mapping), found a {type(docs[0]).__name__}",
            param_hint="WORKFLOW",
        )
    if "spec" not in docs[0] and "experiment" in docs[0]:
        raise click.BadParameter(
            f"{path}: an experiment config, not an Argo Workflow: run it with argofl run {path}, or "
            "compile it first (argofl compile)",
            param_hint="WORKFLOW",
        )
    return docs[0]


@local.command("run")
@click.argument("workflow", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@overrides_option
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/local"),
    show_default=True,
    help="Where run directories are created; an argofl workflow's store and MLflow database default to "
    "its parent (runs/store, runs/mlflow.db: argofl run's).",
)
@click.option(
    "--parallelism",
    default=None,
    type=click.IntRange(min=1),
    help="Most pods at once on this machine [default: the workflow's spec.parallelism, else no limit; an "
    "argofl workflow's as argofl run's: 2, 3 for split learning].",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the final status as `argo get -o json` shows it."
)
@runtime_options
@secrets_option
def run_cmd(
    workflow: Path,
    overrides: dict[str, str],
    runs_dir: Path,
    parallelism: int | None,
    as_json: bool,
    runtime: str,
    image_map: tuple[str, ...],
    mounts: tuple[Path, ...],
    ignore_gpu: bool,
    key_refs: KeyRefs | None,
) -> None:
    """Run WORKFLOW; exit 0 when it Succeeded, 1 when it Failed or Errored, 2 on bad input, 128+N when
    signal N stopped it (130 for Ctrl-C).

    A workflow argofl compiled (label app.kubernetes.io/name: argofl) runs as argofl run runs its config,
    not with the cluster's store and MLflow: parameters not given with -p get argofl run's local defaults
    (store and MLflow database beside --runs-dir: runs/store, runs/mlflow.db), relative paths given are
    made absolute, and a store or MLflow URI its steps could not use is refused before anything starts.
    Any other workflow runs with its own defaults.
    """
    manifest = _load(workflow)
    parameters = check_overrides(manifest, overrides)  # as argofl run/submit: one message, exit 2
    argofl = is_argofl_workflow(manifest)
    if parallelism is None and argofl:
        parallelism = local_parallelism(manifest)
    if parallelism is not None:
        check_parallelism(manifest, parallelism)
    containers = container_options(runtime, image_map, mounts, ignore_gpu)
    env = None
    if argofl:
        parameters, containers, env = _as_argofl_run(manifest, parameters, runs_dir, containers, key_refs)
    stop_before_start()
    started = time.monotonic()
    result = run_workflow(
        manifest,
        parameters,
        runs_dir=runs_dir.resolve(),
        parallelism=parallelism,
        stop_on_signals=True,
        env=env,
        containers=containers,
        key_refs=key_refs,
    )
    summary = None
    if argofl and result.phase == Phase.SUCCEEDED:
        summary = _write_summary(result.run_dir, time.monotonic() - started, key_refs)
    if as_json:
        click.echo(json.dumps(result.status, indent=2))
    else:
        click.echo(render_status(result.name, result.status), nl=False)
        line = mlflow_run_line(result.status, parameters.get("mlflow-uri", "")) if argofl else None
        if line is not None:
            click.echo(line)
        if summary is not None:
            click.echo(f"summary: {summary}")
    if result.stopped_by is not None:
        sys.exit(128 + result.stopped_by)
    sys.exit(0 if result.phase == Phase.SUCCEEDED else 1)


def _write_summary(run_dir: Path, wall: float, key_refs: KeyRefs | None) -> Path | None:
    """``run_dir/summary.json`` of a succeeded argofl run, as ``argofl run`` writes it; None when the run
    wrote no summary (a workflow without argofl's finalize), and a warning when it cannot be read."""
    from argofl.pipelines.run_summary import save_run_summary
    from argofl.steps.store import ObjectNotFound, StoreError

    try:
        return save_run_summary(run_dir, wall, key_refs)[0]
    except (ObjectNotFound, KeyError):
        return None
    except (StoreError, ValueError) as exc:
        click.echo(f"warning: no summary.json for {run_dir.name}: {one_line(exc)}", err=True)
        return None


def _as_argofl_run(
    manifest: Mapping[str, Any],
    given: dict[str, str],
    runs_dir: Path,
    containers: DockerOptions | None,
    key_refs: KeyRefs | None,
) -> tuple[dict[str, str], DockerOptions | None, dict[str, str] | None]:
    """``argofl run``'s local defaults for the argofl workflow ``manifest``: its parameters (``given`` over
    the store and MLflow database in ``runs_dir``'s parent; one line, nothing started, where its steps could
    not use them), ``containers`` with that directory shared, and the environment of host-process steps,
    whose fork server it starts."""
    root = runs_dir.resolve().parent  # argofl run's runs directory: run directories in root/workflows
    declared = parameters_of(manifest)
    params = workflow_local_parameters(declared, given, root)
    values = {**declared, **params}
    hints = {name: f"'-p {name}'" for name in ("store", "mlflow-uri")}  # the defaults are valid
    check_services(manifest, values, key_refs, hints=hints, probe=containers is None)
    check_local_inputs(values, given, host=containers is None)
    if containers is not None:
        return params, containers_for(root, containers), None
    prestart_steps(framework_of(values))
    return params, None, user_code_env()


RUN_DIRS = (Path("runs/local"), Path("runs/workflows"))
"""Where ``argofl local run`` and ``argofl run`` put run directories by default."""


def _run_dir(run: str, runs_dir: Path | None) -> Path:
    """RUN as a path, or its name under ``runs_dir`` (default: :data:`RUN_DIRS`)."""
    parents = [runs_dir] if runs_dir is not None else list(RUN_DIRS)
    for candidate in (Path(run), *(parent / run for parent in parents)):
        if (candidate / "status.json").is_file():
            return candidate
    raise click.BadParameter(
        f"{run!r}: no run directory with a status.json here or under {' or '.join(map(str, parents))}",
        param_hint="RUN",
    )


@local.command("logs")
@click.argument("run")
@click.argument("node", required=False)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where run directories are [default: runs/local (argofl local run), then runs/workflows "
    "(argofl run)].",
)
def logs_cmd(run: str, node: str | None, runs_dir: Path | None) -> None:
    """Print the logs of every pod of RUN and of the workflows it created, or of NODE (display name, the
    loop item the Argo UI shows such as 'round 1 / client 0', a step of a round such as 'round 1 /
    server', a template such as finish, or id: a pod, or every pod under a retried step, a fan-out such
    as train, or a DAG such as a round), attempt by attempt."""
    run_dir = _run_dir(run, runs_dir)
    found = False
    refs: list[str] = []
    pods: list[tuple[str, Path, dict[str, Any], str]] = []  # started at, run directory, its status, pod
    for directory in _with_children(run_dir):
        status = json.loads((directory / "status.json").read_text())
        nodes = status.get("nodes") or {}
        if node is None:
            ids = [i for i, n in nodes.items() if n.get("type") == "Pod"]
        else:
            targets = find_nodes(status, node)
            found = found or bool(targets)
            refs += [] if targets else node_refs(status)
            ids = [pod for target in targets for pod in pods_under(status, str(target["id"]))]
        pods += [(str(nodes[i].get("startedAt")), directory, status, i) for i in dict.fromkeys(ids)]
    if node is not None and not found:
        candidates = suggest_refs(node, refs)
        more = ", …" if len(candidates) < len(set(refs)) else ""
        raise click.BadParameter(
            f"{node!r}: no node with that display name, loop item or id in {run_dir.name} "
            f"(candidates: {', '.join(map(repr, candidates))}{more})",
            param_hint="NODE",
        )
    if node is not None and not pods:
        click.echo(f"{node}: no pod ran under this node in {run_dir.name}; it has no logs", err=True)
    for _, directory, status, pod in sorted(pods, key=lambda p: p[0]):
        for entry in log_files(directory, status, pod):
            shown = (status.get("nodes") or {}).get(entry.node_id, {}).get("displayName", entry.node_id)
            click.echo(f"==> {shown} ({entry.node_id}) attempt {entry.attempt} <==")
            if entry.log.is_file():
                click.echo(entry.log.read_text(errors="replace"), nl=False)


def _with_children(run_dir: Path) -> list[Path]:
    """``run_dir`` and the run directories of the workflows it created (``workflows/<child>/``, nested)."""
    children = sorted(p.parent for p in (run_dir / "workflows").glob("*/status.json"))
    return [run_dir, *(d for child in children for d in _with_children(child))]
