"""``argofl compile``, ``argofl run`` and ``argofl resume``: config → Argo manifest, that manifest run on
this machine, and a stopped local run continued from its last evaluated round."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click

from argofl.pipelines.config import ConfigError, load_config
from argofl.pipelines.kinds import display_of, kind_of
from argofl.pipelines.local.cli import (
    SECRETS_FILE,
    check_parallelism,
    container_options,
    runtime_options,
    secrets_option,
)
from argofl.pipelines.local.containers import DockerOptions
from argofl.pipelines.local.refs import KeyRefs
from argofl.pipelines.local_params import local_parallelism, local_parameters, user_code_env
from argofl.pipelines.local_runs import RESUMES, continuation, json_object, read_run
from argofl.pipelines.local_start import (
    check_local_inputs,
    check_s3_access,
    check_services,
    check_tracking,
    containers_for,
    mlflow_run_line,
    prestart_steps,
)
from argofl.pipelines.parameters import (
    check_overrides,
    overrides_option,
    parameters_of,
    resubmission_manifest,
)
from argofl.pipelines.progress import AS_NAMED, NodeDisplay, last_completed_round, step_line, step_of
from argofl.pipelines.run_summary import save_run_summary
from argofl.pipelines.stop_signals import installed, stop_before_start

__all__ = ["Progress", "compile_cmd", "resume_cmd", "run_cmd"]


class ConfigPath(click.Path):
    """A config file argument whose load errors become usage errors."""

    name = "config"

    def __init__(self) -> None:
        super().__init__(exists=True, dir_okay=False, path_type=Path)


@click.command("compile")
@click.argument("configs", nargs=-1, required=True, type=ConfigPath())
@click.option(
    "--out-dir",
    default="argo",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where manifests are written.",
)
def compile_cmd(configs: tuple[Path, ...], out_dir: Path) -> None:
    """Compile experiment CONFIGS into Argo Workflow manifests (argo/NAME.yaml) and WorkflowTemplates
    (argo/templates/NAME.yaml, and NAME-rounds.yaml for blocks of rounds)."""
    from argofl.pipelines.compile import compile_files

    for config in configs:
        try:
            workflow, *templates = compile_files(config, out_dir)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
        except OSError as exc:
            raise click.BadParameter(
                f"cannot write {out_dir}: {exc.strerror or exc}", param_hint="'--out-dir'"
            ) from None
        click.echo(f"wrote {workflow} (templates: {', '.join(map(str, templates))})")


class Progress:
    """Prints one line per finished step from the executor's node events, as ``argofl watch`` does;
    ``display`` is the experiment kind's (which template is which step)."""

    def __init__(self, out: Any = None, display: NodeDisplay = AS_NAMED) -> None:
        self.out = out or sys.stdout
        self.display = display
        self.lock = threading.Lock()
        self.seen: set[tuple[str, str]] = set()
        self.start = time.monotonic()

    def __call__(self, node: dict[str, Any]) -> None:
        phase = node.get("phase", "")
        if phase not in ("Succeeded", "Failed", "Error") or node.get("type") != "Pod":
            return
        key = (node.get("id", ""), phase)
        if key in self.seen:
            return
        self.seen.add(key)
        stamp = f"[{time.monotonic() - self.start:7.1f}s]"
        with self.lock:
            print(f"{stamp} {step_line(step_of(node, self.display))}", file=self.out, flush=True)


@click.command("run")
@click.argument("config", type=ConfigPath())
@overrides_option
@click.option(
    "--runs-dir",
    default="runs",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the local store, MLflow database, logs and summaries go.",
)
@click.option(
    "--parallelism",
    default=None,
    type=click.IntRange(min=1),
    help="Most step processes at once on this machine [default: 2; 3 for split learning, whose server "
    "daemon holds one all round].",
)
@click.option("--mlflow-uri", default=None, help="Tracking URI (default: sqlite database under --runs-dir).")
@click.option("--store", default=None, help="Store URI (default: file:// under --runs-dir).")
@runtime_options
@secrets_option
def run_cmd(
    config: Path,
    overrides: dict[str, str],
    runs_dir: Path,
    parallelism: int | None,
    mlflow_uri: str | None,
    store: str | None,
    runtime: str,
    image_map: tuple[str, ...],
    mounts: tuple[Path, ...],
    ignore_gpu: bool,
    key_refs: KeyRefs | None,
) -> None:
    """Compile CONFIG and run the workflow on this machine (no cluster needed).

    With --runtime docker every step runs in its image (make images) as it would in a pod; the
    runs directory is bind-mounted at the same path, so the file store and MLflow database are shared.
    """
    stop_before_start()  # a Ctrl-C while the commands were imported: start nothing
    if runtime == "process":
        prestart_steps(overrides.get("framework") or _framework_of_config(config))
    from argofl.pipelines.compile import manifest_for, workflow_templates_for

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    _refuse_client_volumes(cfg.placement)
    manifest = manifest_for(cfg)
    overrides = check_overrides(manifest, overrides)  # a ParameterError exits 2 with its one line
    if parallelism is None:
        parallelism = local_parallelism(manifest)
    check_parallelism(manifest, parallelism)
    root = runs_dir.resolve()
    options = container_options(runtime, image_map, mounts, ignore_gpu)
    # steps run in their own working directories: relative paths are the user's, resolved here
    params = local_parameters(
        overrides,
        root,
        store=store,
        mlflow_uri=mlflow_uri,
        data_dir=cfg.settings.data_dir,
        data_uri=cfg.data.uri,
    )
    # the option that gave the store and MLflow URIs: -p, else --store and --mlflow-uri
    hints = {n: f"'-p {n}'" if overrides.get(n) else f"'--{n}'" for n in ("store", "mlflow-uri")}
    values = {**parameters_of(manifest), **params}
    check_services(manifest, values, key_refs, hints=hints, probe=runtime == "process")
    check_local_inputs(values, overrides, runtime == "process")
    stop_before_start()
    with _runs_dir(root, runs_dir):  # only now: a refused run leaves no runs directory behind
        containers = containers_for(root, options)
        stop_before_start()
        click.echo(f"running {cfg.name} locally: store {params['store']}, MLflow {params['mlflow-uri']}")
        display = kind_of(cfg).display
        templates = workflow_templates_for(cfg)
        workflows = root / "workflows"
        _run_locally(manifest, params, workflows, parallelism, containers, key_refs, display, templates)


@contextlib.contextmanager
def _runs_dir(root: Path, given: Path) -> Iterator[None]:
    """Make the runs directory ``root`` (``--runs-dir`` ``given``) for the block, which starts the run. A
    stop signal that keeps the run from starting (the block exits 128+N) removes the directories made
    here again, those still empty."""
    made = next((p for p in reversed((root, *root.parents)) if not p.exists()), None)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot create {given}: {exc.strerror or exc}", param_hint="'--runs-dir'"
        ) from None
    try:
        yield
    except SystemExit:
        guard = installed()
        if made is not None and guard is not None and guard.pending is not None:  # never started
            for path, _, _ in os.walk(made, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(path)
        raise


def _refuse_client_volumes(placement: tuple[Any, ...]) -> None:
    """One line, before anything starts, for a placement group with a volume (the local executor mounts
    none: its message would name a template index and suggest rewriting the workflow)."""
    for group in placement:
        for kind, where in group.volume.items():
            raise click.UsageError(
                f"placement group {group.name!r} mounts a volume ({kind}: {where}), which needs a cluster: "
                "run this config with argofl submit (locally, give the group no volume and point data.uri "
                "at its shards); nothing was started"
            )


def _framework_of_config(config: Path) -> str:
    """The ``framework`` the config file ``config`` names (its YAML, as :func:`forkserver.framework_of`
    reads a mapping), read before it is loaded (which takes ~0.5 s of imports the fork server would wait
    for); ``torch`` when it names none or cannot be read (loading it then says why)."""
    import yaml

    from argofl.pipelines.local.forkserver import framework_of

    try:
        loaded = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return framework_of({})
    return framework_of(loaded if isinstance(loaded, dict) else {})


def _run_locally(
    manifest: Mapping[str, Any],
    params: Mapping[str, str],
    runs_dir: Path,
    parallelism: int,
    containers: DockerOptions | None = None,
    key_refs: KeyRefs | None = None,
    display: NodeDisplay = AS_NAMED,
    workflow_templates: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Run ``manifest`` with the local executor under ``runs_dir`` (``<root>/workflows``); print progress,
    then the summary, or what failed; exit non-zero unless it succeeded."""
    from argofl.pipelines.local import run_workflow
    from argofl.pipelines.local.forkserver import framework_of
    from argofl.steps.store import FileStore

    if containers is None:  # a server already started for these steps is kept (resume starts one here)
        prestart_steps(framework_of({**parameters_of(manifest), **params}))
    stop_before_start()
    started = time.monotonic()
    # a LocalExecutorError reaches the command group, which exits with its exit_code
    result = run_workflow(
        manifest,
        params,
        runs_dir=runs_dir,
        artifact_store=FileStore(runs_dir.parent / "artifacts"),
        on_node=Progress(display=display),
        parallelism=parallelism,
        stop_on_signals=True,
        env=user_code_env() if containers is None else None,
        containers=containers,
        key_refs=key_refs,
        workflow_templates=workflow_templates,
    )
    wall = time.monotonic() - started
    if result.phase != "Succeeded":
        click.echo(
            f"error: workflow {result.name} {result.phase}: {result.status.get('message', '')}", err=True
        )
        for node in result.status.get("nodes", {}).values():
            if node.get("type") == "Pod" and node.get("phase") in ("Failed", "Error"):
                click.echo(f"  {node.get('displayName')}: {node.get('message', '')}", err=True)
        click.echo(f"logs: argofl local logs {result.run_dir}", err=True)
        if result.stopped_by is not None:
            click.echo(f"continue it: {_resume_command(result.run_dir)}", err=True)
            sys.exit(128 + result.stopped_by)
        sys.exit(1)
    values = parameters_of(json.loads((result.run_dir / "workflow.json").read_text()))
    summary_path, summary = save_run_summary(result.run_dir, wall, key_refs)
    for row in summary["rounds"]:
        click.echo(f"  round {row['round']}: {_evaluated(row)}, loss {row['loss']:.4f}")
    if summary["rounds"] and _federated(summary["rounds"][-1]):
        click.echo(
            "  (no central test set: each round's clients evaluated the model that entered it; the final "
            "model is not evaluated)"
        )
    click.echo(f"done in {wall:.1f}s; summary: {summary_path}")
    line = mlflow_run_line(result.status, values["mlflow-uri"])
    if line is not None:
        click.echo(line)


def _federated(row: Mapping[str, Any]) -> bool:
    """Whether a summary round's loss and accuracy are its clients' (no central test set)."""
    return row.get("evaluated_on") == "clients' test splits"


def _evaluated(row: Mapping[str, Any]) -> str:
    """A summary round's accuracy, named for what it measures: the central test set's, or (its
    ``evaluated_on`` the clients' test splits) their federated evaluation of the model that entered it."""
    if _federated(row):
        clients = int((row.get("federated") or {}).get("clients") or 0)
        return f"fed accuracy of the incoming model {row['accuracy']:.4f} ({clients} clients)"
    return f"test accuracy {row['accuracy']:.4f}"


def _resume_command(run_dir: Path) -> str:
    """``argofl resume RUN_DIR`` with the options of this command that the resumed run needs again:
    the runtime's and ``--secrets`` (without them its steps lack the credentials they were given)."""
    ctx = click.get_current_context(silent=True)
    words = ["argofl", "resume"]
    if ctx is not None:
        if ctx.params.get("runtime") == "docker":
            words += ["--runtime", "docker"]
        for image in ctx.params.get("image_map") or ():
            words += ["--image-map", str(image)]
        for mount in ctx.params.get("mounts") or ():
            words += ["--mount", str(Path(mount).resolve())]
        if ctx.params.get("ignore_gpu"):
            words.append("--ignore-gpu")
        if ctx.meta.get(SECRETS_FILE):
            words += ["--secrets", str(ctx.meta[SECRETS_FILE])]
    return shlex.join([*words, str(run_dir)])


@click.command("resume")
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--parallelism",
    default=None,
    type=click.IntRange(min=1),
    help="Most step processes at once on this machine [default: as argofl run].",
)
@runtime_options
@secrets_option
def resume_cmd(
    run_dir: Path,
    parallelism: int | None,
    runtime: str,
    image_map: tuple[str, ...],
    mounts: tuple[Path, ...],
    ignore_gpu: bool,
    key_refs: KeyRefs | None,
) -> None:
    """Continue the stopped or failed local run in RUN_DIR (runs/workflows/NAME) in a new run, from the
    round after its last evaluated one, as `argofl resubmit` does on a cluster."""
    from argofl.pipelines.local.runlock import run_is_locked

    given, run_dir = run_dir, run_dir.resolve()
    try:
        old = read_run(run_dir)  # with the rounds of its child Workflows (blocks of rounds)
        status = old.pop("status")
    except (OSError, ValueError) as exc:
        runs = [*run_dir.glob("*/workflow.json"), *run_dir.glob("workflows/*/workflow.json")]
        latest = max(runs, key=lambda p: p.stat().st_mtime).parent if runs else None
        hint = "" if latest is None else f"; it holds runs: give one, e.g. the latest, {latest}"
        raise click.BadParameter(
            f"{run_dir}: not a local run directory (workflow.json and status.json): {exc}{hint}",
            param_hint="RUN_DIR",
        ) from None
    name = str((old.get("metadata") or {}).get("name") or run_dir.name)
    if run_is_locked(run_dir):
        raise click.UsageError(
            f"{name} is still running; stop it (Ctrl-C or kill its argofl) before resuming"
        )
    params = parameters_of(old)
    missing = [p for p in ("start-round", "resume-from", "experiment", "rounds") if p not in params]
    if missing:
        raise click.UsageError(
            f"{name} cannot resume: its workflow declares no {', '.join(missing)} parameter, so its rounds "
            "cannot start later; run it again with argofl run"
        )
    _refuse_continued(given, run_dir.name)
    display = display_of(old)
    last = last_completed_round(status, display)
    rounds = int(params["rounds"])
    if last is not None and last >= rounds:
        click.echo(f"all {rounds} rounds of {name} completed; nothing to resume")
        return
    if last is None:  # nothing finished: start where it started, from what it resumed (if anything)
        start, resume = int(params["start-round"] or 1), params["resume-from"]
    else:
        start, resume = last + 1, f"{params['experiment']}/{name}"
    try:
        manifest = resubmission_manifest(old, start, resume)
    except (KeyError, ValueError) as exc:
        raise click.UsageError(f"{name} cannot resume: {exc}") from None
    manifest["metadata"].setdefault("annotations", {})[RESUMES] = run_dir.name
    if parallelism is None:
        parallelism = local_parallelism(manifest)
    check_parallelism(manifest, parallelism)
    values = parameters_of(manifest)
    check_s3_access(manifest, values, key_refs)
    check_tracking(values.get("mlflow-uri", ""), None, runtime == "process")
    phase = str(status.get("phase") or "?")
    if phase == "Running":  # not locked: its executor was killed before it could record the end
        phase = "stopped (its executor was killed)"
    click.echo(
        f"{name} {phase}: last completed round {last if last is not None else 'none'}; "
        f"resuming from round {start}" + (f" ({resume})" if resume else "")
    )
    containers = containers_for(
        run_dir.parent.parent, container_options(runtime, image_map, mounts, ignore_gpu)
    )
    templates_file = run_dir / "workflow-templates.json"  # the blocks of rounds' (rounds_per_workflow)
    templates = json.loads(templates_file.read_text()) if templates_file.is_file() else None
    _run_locally(manifest, {}, run_dir.parent, parallelism, containers, key_refs, display, templates)


def _refuse_continued(given: Path, name: str) -> None:
    """One line when a run beside ``given`` (the run directory as the user named it; ``name``, its run)
    already continues it: resuming it again would continue it twice. It names the last run of the chain
    of resumes, the one to resume (or says it is running, or completed the run)."""
    from argofl.pipelines.local.runlock import run_is_locked

    last = continuation(given, name)
    if last is None:
        return
    shown = given.parent / last.name
    try:
        phase = json_object(last / "status.json").get("phase")
    except (OSError, ValueError):
        phase = None
    if run_is_locked(last):
        advice = "it is still running"
    elif phase == "Succeeded":
        advice = "it completed the run: nothing to resume"
    else:
        advice = f"resume {shown} instead"
    raise click.UsageError(f"{given} was already resumed by {shown}: {advice}")
