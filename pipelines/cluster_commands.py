"""``argofl submit``, ``status``, ``watch`` and ``resubmit``: the compiled workflow on an Argo server.

Each command takes ``--host/--token/--namespace/--verify`` (or ``ARGO_SERVER``, ``ARGO_TOKEN``,
``ARGO_NAMESPACE``, ``ARGO_INSECURE_SKIP_VERIFY``); they become a :class:`ClusterTarget` in the click
context object, whose hera ``WorkflowsService`` is built on first use.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from argofl.pipelines.argo_server import (
    DEFAULT_NAMESPACE,
    ClusterError,
    ClusterTarget,
    env_secure,
    env_verify,
    normalize_host,
)
from argofl.pipelines.commands import ConfigPath
from argofl.pipelines.config import ConfigError, load_config
from argofl.pipelines.kinds import display_of
from argofl.pipelines.local.runlock import run_is_locked
from argofl.pipelines.local_runs import continuation, is_run_dir, read_run
from argofl.pipelines.parameters import (
    apply_overrides,
    check_overrides,
    outputs_of,
    overrides_option,
    parameters_of,
    resubmission_manifest,
    resume_problem,
)
from argofl.pipelines.progress import (
    DONE_PHASES,
    federated_clients,
    finished_steps,
    format_number,
    last_completed_round,
    round_views,
    step_line,
)
from argofl.steps.errors import ArgoflError

__all__ = ["resubmit_cmd", "status_cmd", "submit_cmd", "watch_cmd"]

_WATCH_FAILURES = 5  # consecutive failed polls before watch gives up


class CommandError(ArgoflError, click.ClickException):
    """A runtime failure: printed as one ``error: …`` line, exit code 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


# ------------------------------------------------------------------------------------ shared options


def cluster_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the Argo server options; the command receives the :class:`ClusterTarget` first."""
    return _server_options(command, local_runs=False)


def run_or_cluster_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """:func:`cluster_options` for a command whose ``name`` may also be a local run's directory
    (``runs/workflows/NAME``): it then receives ``None`` for the target and needs no server."""
    return _server_options(command, local_runs=True)


def _server_options(command: Callable[..., Any], *, local_runs: bool) -> Callable[..., Any]:
    @functools.wraps(command)
    def wrapper(
        *args: Any, host: str | None, token: str | None, namespace: str, verify: bool | None, **kwargs: Any
    ) -> Any:
        ctx = click.get_current_context()
        if local_runs and not isinstance(ctx.obj, ClusterTarget) and is_run_dir(Path(kwargs["name"])):
            return command(None, *args, **kwargs)
        if not isinstance(ctx.obj, ClusterTarget):  # tests may pass one in with obj=
            ctx.obj = _target(host, token, namespace, verify)
        return command(ctx.obj, *args, **kwargs)

    options = [
        click.option(
            "--host",
            envvar="ARGO_SERVER",
            metavar="URL",
            help="Argo server: https://host:2746 or host:port [env ARGO_SERVER].",
        ),
        click.option(
            "--token",
            envvar="ARGO_TOKEN",
            metavar="TOKEN",
            help="Bearer token for the Argo server [env ARGO_TOKEN].",
        ),
        click.option(
            "-n",
            "--namespace",
            envvar="ARGO_NAMESPACE",
            default=DEFAULT_NAMESPACE,
            show_default=True,
            help="Namespace of the workflows [env ARGO_NAMESPACE].",
        ),
        click.option(
            "--verify/--no-verify",
            default=None,
            help="Check the server's TLS certificate (default: yes unless ARGO_INSECURE_SKIP_VERIFY=true).",
        ),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def _target(host: str | None, token: str | None, namespace: str, verify: bool | None) -> ClusterTarget:
    if not host or not host.strip():
        raise click.UsageError(
            "no Argo server given: pass --host https://HOST:2746 or set ARGO_SERVER=HOST:PORT"
        )
    try:
        url = normalize_host(host, secure=env_secure())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--host' / ARGO_SERVER") from None
    if not namespace.strip():
        raise click.BadParameter("empty namespace", param_hint="'--namespace' / ARGO_NAMESPACE")
    return ClusterTarget(
        host=url,
        namespace=namespace.strip(),
        token=token,
        verify=env_verify() if verify is None else verify,
    )


def _run(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except ClusterError as exc:
        raise CommandError(str(exc)) from None


def _submit(target: ClusterTarget, manifest: Mapping[str, Any]) -> str:
    created = _run(lambda: target.create(manifest))
    name = str((created.get("metadata") or {}).get("name") or "")
    if not name:
        raise CommandError(f"Argo server at {target.host} created a workflow but returned no name")
    click.echo(f"submitted {name} to namespace {target.namespace}")
    click.echo(target.url(name))
    return name


# ------------------------------------------------------------------------------------------ commands


@click.command("submit")
@click.argument("config", type=ConfigPath())
@overrides_option
@cluster_options
@click.option("--wait", is_flag=True, help="Then watch the workflow until it finishes (exit 1 if it fails).")
@click.option(
    "--interval", default=5.0, show_default=True, type=click.FloatRange(min=0.01), help="Poll seconds."
)
def submit_cmd(
    target: ClusterTarget, config: Path, overrides: dict[str, str], wait: bool, interval: float
) -> None:
    """Compile CONFIG and submit the workflow to an Argo server (with cluster.rounds_per_workflow,
    first create or update the WorkflowTemplate its blocks of rounds run)."""
    from argofl.pipelines.compile import manifest_for, workflow_templates_for

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    manifest = apply_overrides(manifest_for(cfg), overrides)
    for template_name, template in workflow_templates_for(cfg).items():
        done = _run(functools.partial(target.apply_template, template))
        click.echo(f"{done} workflow template {template_name} in namespace {target.namespace}")
    name = _submit(target, manifest)
    if wait:
        _watch(target, name, interval, reached=True)


@click.command("status")
@click.argument("name")
@run_or_cluster_options
@click.option("--json", "as_json", is_flag=True, help="Print the workflow's raw status as JSON.")
def status_cmd(target: ClusterTarget | None, name: str, as_json: bool) -> None:
    """Show the phase and per-round progress of workflow NAME (and of the workflows it created), or of
    the local run in directory NAME (runs/workflows/NAME)."""
    workflow = _fetch(target, name)
    status = workflow.get("status") or {}
    if as_json:
        click.echo(json.dumps(status, indent=2, sort_keys=True))
        return
    for line in _status_lines(target, name, workflow):
        click.echo(line)


def _fetch(target: ClusterTarget | None, name: str) -> dict[str, Any]:
    """Workflow ``name`` from ``target`` with its children's nodes, or the local run in directory ``name``."""
    if target is None:
        return _local_run(Path(name))
    return dict(_run(lambda: target.get_with_children(name)))


def _local_run(run_dir: Path) -> dict[str, Any]:
    """The local run in ``run_dir`` as a server would answer for it; its phase is ``Running`` only while
    its executor runs (one killed before it could record the end left ``Running``)."""
    try:
        workflow = read_run(run_dir)
    except (OSError, ValueError) as exc:
        raise CommandError(f"{run_dir}: cannot read the local run: {exc}") from None
    status = workflow["status"]
    if status.get("phase") in (None, "Pending", "Running") and not run_is_locked(run_dir):
        status["phase"] = KILLED
    return workflow


KILLED = "Stopped (its executor was killed)"
"""The phase shown for a local run left ``Running`` by an executor that no longer runs."""


def _status_lines(target: ClusterTarget | None, name: str, workflow: Mapping[str, Any]) -> list[str]:
    """``argofl status`` of ``workflow``: a cluster's (``target``) or the local run in directory ``name``."""
    status = workflow.get("status") or {}
    params = parameters_of(workflow)
    views = round_views(status, display_of(workflow))
    total = _total_rounds(params)
    evaluated = sum(v.evaluated for v in views)
    first = _int_or(params.get("start-round"), 1)
    phase = status.get("phase") or "Pending"
    if target is None:
        run_name = (workflow.get("metadata") or {}).get("name") or Path(name).name
        lines = [f"Name:       {run_name}", f"Run dir:    {name}"]
    else:
        lines = [f"Name:       {name}", f"Namespace:  {target.namespace}"]
    lines.append(f"Phase:      {phase}")
    if status.get("message"):
        lines.append(f"Message:    {status['message']}")
    if status.get("startedAt"):
        lines.append(f"Started:    {status['startedAt']}")
    if status.get("finishedAt"):
        lines.append(f"Finished:   {status['finishedAt']}")
    if params.get("experiment"):
        lines.append(f"Experiment: {params['experiment']}")
    planned = f" of rounds {first}..{total}" if total is not None else ""
    lines.append(f"Rounds:     {evaluated} evaluated{planned}")
    if params.get("resume-from"):
        lines.append(f"Resumes:    {params['resume-from']}")
    for child in status.get("children") or []:  # rounds_per_workflow: a child Workflow per block of rounds
        where = target.url(child["name"]) if target is not None else Path(name) / "workflows" / child["name"]
        lines.append(f"Child:      {child['name']} {child['phase']} ({where})")
    lines += [f"  {view.line()}" for view in views]
    outputs = outputs_of(status)
    if outputs.get("final-accuracy"):
        final, last = format_number(outputs["final-accuracy"]), views[-1] if views else None
        if last is not None and federated_clients(last.evaluation) is not None:
            lines.append(
                f"Final:      fed accuracy of the incoming model {final} (round {last.round}; the final "
                "model is not evaluated)"
            )
        else:
            lines.append(f"Final:      test accuracy {final}")
    if outputs.get("mlflow-run-url"):
        lines.append(f"MLflow:     {outputs['mlflow-run-url']}")
    if target is not None:
        lines.append(f"URL:        {target.url(name)}")
    elif phase not in ("Succeeded", "Running") and {"start-round", "resume-from"} <= params.keys():
        later = continuation(Path(name), Path(name).resolve().name)
        if later is None:
            lines.append(f"Resume:     argofl resume {name}")
        else:  # resuming it again would continue it twice: argofl resume refuses
            lines.append(f"Resumed by: {Path(name).parent / later.name}")
    return lines


def _int_or(value: Any, default: int) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return default


def _total_rounds(params: Mapping[str, str]) -> int | None:
    try:
        return int(params["rounds"])
    except (KeyError, ValueError):
        return None


@click.command("watch")
@click.argument("name")
@run_or_cluster_options
@click.option(
    "--interval", default=5.0, show_default=True, type=click.FloatRange(min=0.01), help="Poll seconds."
)
def watch_cmd(target: ClusterTarget | None, name: str, interval: float) -> None:
    """Follow workflow NAME, or the local run in directory NAME (runs/workflows/NAME, from another
    terminal): one line per finished client and round; exit 1 if it fails."""
    _watch(target, name, interval)


def _watch(target: ClusterTarget | None, name: str, interval: float, *, reached: bool = False) -> None:
    """Follow ``name``; failed polls are retried once the server has answered (``reached``: it did before).
    A local run (``target`` None) is read from its directory until it ends or its executor is gone."""
    seen: set[tuple[str, str]] = set()
    shown_link = False
    failures = 0
    started = time.monotonic()
    try:
        while True:
            try:
                workflow = _fetch(target, name)
                failures = 0
                reached = True
            except CommandError as exc:
                failures += 1
                if failures >= _WATCH_FAILURES or "not found" in str(exc) or not reached:
                    raise
                click.echo(f"warning: {exc.message} (retrying)", err=True)
                time.sleep(interval)
                continue
            status = workflow.get("status") or {}
            display = display_of(workflow)
            link = outputs_of(status).get("mlflow-run-url")
            if link and not shown_link:
                click.echo(f"MLflow run: {link}")
                shown_link = True
            for step in finished_steps(status, display):
                if step.key in seen:
                    continue
                seen.add(step.key)
                stamp = f"[{time.monotonic() - started:7.1f}s]"
                click.echo(f"{stamp} {step_line(step)}")
            phase = str(status.get("phase") or "")
            if phase in DONE_PHASES or phase == KILLED:
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        where = "on the server" if target is not None else "on this machine"
        click.echo(f"\nstopped watching {name}; it keeps running {where}", err=True)
        sys.exit(130)
    views = round_views(status, display)
    done = [v for v in views if v.evaluated]
    if done:
        last = done[-1]
        click.echo(
            f"{name} {phase}: {len(done)} round(s) evaluated, round {last.round} {last.evaluation_text()}"
        )
    if phase != "Succeeded":
        message = status.get("message") or ""
        raise CommandError(f"workflow {name} {phase}{': ' + message if message else ''}")
    if not done:
        click.echo(f"{name} {phase}")


@click.command("resubmit")
@click.argument("name")
@overrides_option
@cluster_options
def resubmit_cmd(target: ClusterTarget, name: str, overrides: dict[str, str]) -> None:
    """Continue workflow NAME in a new workflow from the round after its last completed one."""
    old = _run(lambda: target.get_with_children(name))
    status = old.get("status") or {}
    phase = str(status.get("phase") or "")
    if phase in ("", "Pending", "Running"):
        raise CommandError(
            f"workflow {name} is {phase or 'Pending'}; wait for it to finish (or stop it) before resubmitting"
        )
    params = parameters_of(old)
    experiment = params.get("experiment") or (old.get("metadata") or {}).get("labels", {}).get(
        "argofl.io/experiment", ""
    )
    if not experiment:
        raise CommandError(f"workflow {name} has no 'experiment' parameter; is it an argofl workflow?")
    problem = resume_problem(old)
    if problem is not None:  # never "resubmit" a workflow whose rounds would silently start over
        raise CommandError(problem)
    overrides = check_overrides(resubmission_manifest(old, 1, ""), overrides)  # bad -p fails first
    last = last_completed_round(status, display_of(old))
    total = _total_rounds({**params, **overrides})
    if last is not None and total is not None and last >= total:
        click.echo(f"all {total} rounds of {name} completed; nothing to resubmit")
        return
    if last is None:
        # Nothing new finished: start where the old workflow started, from what it resumed (if anything).
        start, resume = _int_or(params.get("start-round"), 1), params.get("resume-from", "")
    else:
        start, resume = last + 1, f"{experiment}/{name}"
    manifest = resubmission_manifest(old, start, resume)
    manifest = apply_overrides(manifest, overrides)
    click.echo(
        f"{name} {phase}: last completed round {last if last is not None else 'none'}; "
        f"resubmitting from round {start}" + (f" (resuming {resume})" if resume else "")
    )
    _submit(target, manifest)
