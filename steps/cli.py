"""``argofl step NAME``: the commands that workflow containers run.

stdout carries only what Argo captures as ``outputs.result`` (distribute's JSON list); logs go to
stderr. ``--output NAME=PATH`` writes one of the step's outputs to a file for ``valueFrom.path``.
Exit codes come from :mod:`steps.errors`: 0 ok, 2 bad input (settings, checkpoints, run state),
75 transient (store or MLflow unreachable: retried), 1 anything else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from argofl.steps.errors import EXIT_FAILURE, ArgoflError, one_line
from argofl.steps.name_value import NameValue, to_dict
from argofl.steps.settings import Settings


def _outputs_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--output",
        "outputs",
        multiple=True,
        type=NameValue("PATH", allow_empty=False),
        metavar="NAME=PATH",
        help="Write output NAME to PATH (for Argo valueFrom.path).",
    )(fn)


def _run_key_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--run-key", required=True, help="<experiment>/<run> prefix of the run in the store."
    )(fn)


class RoundType(click.ParamType):
    """A round: its number or its loop label (``3`` or ``round 3``), at least 1."""

    name = "round"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from argofl.steps.labels import LabelError, parse_round

        if isinstance(value, int):
            number = value
        else:
            try:
                number = parse_round(str(value))
            except LabelError as exc:
                self.fail(str(exc), param, ctx)
        if number < 1:
            self.fail(f"round must be at least 1, got {value!r}", param, ctx)
        return number


def _resume_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--resume-from", default="", help="<experiment>/<run> a resubmission continues from.")(
        fn
    )
    return click.option(
        "--start-round", type=click.IntRange(min=1), default=1, help="First round (resubmissions)."
    )(fn)


def _init_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """An init step's options: the run, the workflow's identity, where it resumes from, its outputs."""
    fn = _resume_options(_outputs_option(fn))
    fn = click.option("--workflow-uid", default="")(fn)
    fn = click.option("--workflow-name", required=True)(fn)
    return _run_key_option(fn)


def _round_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--round", "round_", type=RoundType(), required=True, help="Round number or label ('round 3')."
    )(fn)


def _write_outputs(requested: tuple[tuple[str, str], ...], values: Mapping[str, Any]) -> None:
    for name, path in requested:
        if name not in values:
            raise click.BadParameter(
                f"unknown output {name!r}; this step has {sorted(values)}", param_hint="--output"
            )
        value = values[name]
        text = value if isinstance(value, str) else json.dumps(value)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


TERMINATION_LOG = Path("/dev/termination-log")
"""Kubernetes' default ``terminationMessagePath``: what a pod writes there becomes its node's message."""


def _fail(exc: BaseException | str, code: int) -> None:
    """Print ``exc`` as the one ``error: …`` line (also the pod's termination message) and exit."""
    line = f"error: {one_line(exc)}"
    click.echo(line, err=True)
    if TERMINATION_LOG.is_file():
        with contextlib.suppress(OSError):
            TERMINATION_LOG.write_text(line[: 4096 - 1])
    sys.exit(code)


def _guard(fn: Callable[[], Any]) -> Any:
    """Run a step body; an argofl error exits with its ``exit_code`` (2 bad input, 1 failure,
    75 transient) after one ``error: …`` line; anything else logs its traceback and exits 1."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return fn()
    except ArgoflError as exc:
        _fail(exc, exc.exit_code)
    except click.ClickException:
        raise
    except Exception as exc:
        logging.getLogger("argofl.step").exception("step failed")
        _fail(RuntimeError(f"{type(exc).__name__}: {one_line(exc)}"), EXIT_FAILURE)


class _StepGroup(click.Group):
    """The steps' group: an option value a step refuses (a workflow parameter such as ``-p start-round=0``
    reaches ``--start-round``) is the one ``error: …`` line too, so the node's message says what is wrong
    (click's usage text alone left it ``Error (exit code 2)``)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            _fail(exc.format_message(), exc.exit_code)


@click.group(cls=_StepGroup)
def step() -> None:
    """Run one workflow step (what a container runs)."""


def _settings_params(
    ctx: click.Context, param: click.Parameter, pairs: tuple[tuple[str, str], ...]
) -> dict[str, str]:
    return to_dict(pairs, option="--param")


@step.command("init")
@click.option(
    "--param",
    "params",
    multiple=True,
    type=NameValue(),
    callback=_settings_params,
    metavar="NAME=VALUE",
    help="A setting, e.g. rounds=5 (Argo parameter names).",
)
@click.option(
    "--data",
    "data",
    multiple=True,
    type=NameValue(),
    callback=_settings_params,
    metavar="NAME=VALUE",
    help="A data option, e.g. source=per-client (data.NAME; default: partition the dataset).",
)
@_init_options
def init_cmd(
    params: dict[str, str],
    data: dict[str, str],
    run_key: str,
    workflow_name: str,
    workflow_uid: str,
    start_round: int,
    resume_from: str,
    outputs: tuple[tuple[str, str], ...],
) -> None:
    """Validate settings, write the round-0 checkpoint, create the MLflow run."""
    from argofl.steps import step_init
    from argofl.steps.client_data import DataOptions

    def body() -> None:
        settings = Settings.from_mapping(params, where="workflow parameters", strings=True)
        unused = settings.unused_option()
        if (
            unused is not None
        ):  # an A/B run (`argo submit -p strategy=fedavg`) or a mistaken -p: it cannot tell
            logging.getLogger("argofl.steps.init").warning("workflow parameters: %s", unused)
        options = DataOptions.from_mapping(data, where="workflow parameters", strings=True)
        _write_outputs(
            outputs,
            step_init.run(
                settings,
                run_key=run_key,
                workflow_name=workflow_name,
                workflow_uid=workflow_uid,
                start_round=start_round,
                resume_from=resume_from,
                data=options,
            ),
        )

    _guard(body)


@step.command("distribute")
@_run_key_option
@_round_option
@click.option(
    "--placement",
    default=None,
    metavar="JSON",
    help='Placement groups {"site-a": [0, 1], ...}: output clients-<group> lists each group\'s pods.',
)
@click.option(
    "--fanin",
    type=int,
    default=0,
    show_default=True,
    help="Combine tasks' fan-in (cluster.aggregate_fanin): output combines lists their batches of pods.",
)
@click.option(
    "--levels",
    type=int,
    default=1,
    show_default=True,
    help="Levels of combine tasks (cluster.aggregate_levels): outputs combines-2 … list the deeper batches.",
)
@_outputs_option
def distribute_cmd(
    run_key: str,
    round_: int,
    placement: str | None,
    fanin: int,
    levels: int,
    outputs: tuple[tuple[str, str], ...],
) -> None:
    """Sample the round's clients; print the JSON list of client groups."""
    from argofl.steps import combine_plan, step_distribute

    def body() -> list[str]:
        groups = step_distribute.parse_placement(placement) if placement is not None else None
        plan = step_distribute.plan_round(
            run_key=run_key, round=round_, placement=groups, fanin=fanin, levels=levels
        )
        pods = plan.get("pods", {})
        batches = [combine_plan.output_name(k) for k in range(1, combine_plan.level_count(plan) + 1)]
        _write_outputs(
            outputs,
            {
                **{f"clients-{name}": json.dumps(labels) for name, labels in pods.items()},
                **{name: json.dumps(plan[name]) for name in batches},
            },
        )
        labels: list[str] = plan["groups"]
        return labels

    click.echo(json.dumps(_guard(body)))


@step.command("train")
@_run_key_option
@_round_option
@click.option(
    "--clients",
    required=True,
    help="Clients trained in this pod: 'round 3 / clients 6,7' (the loop label) or '6,7'.",
)
@click.option(
    "--only-clients",
    default=None,
    metavar="A,B,…",
    help="Refuse any other client (a placement group's pods: only the group's clients).",
)
@_outputs_option
def train_cmd(
    run_key: str, round_: int, clients: str, only_clients: str | None, outputs: tuple[tuple[str, str], ...]
) -> None:
    """Train the given clients from the previous global model and write their updates."""
    from argofl.steps import step_train

    allowed = None if only_clients is None else [c.strip() for c in only_clients.split(",") if c.strip()]
    _guard(
        lambda: _write_outputs(
            outputs, step_train.run(run_key=run_key, round=round_, clients=clients, only=allowed)
        )
    )


@step.command("combine")
@_run_key_option
@_round_option
@click.option(
    "--pods",
    required=True,
    help="The batch to combine (the loop label): 'round 3 / pods 0-7' (or '0-7') at level 1, "
    "'round 3 / level 2 / batches 0-7' deeper.",
)
@_outputs_option
def combine_cmd(run_key: str, round_: int, pods: str, outputs: tuple[tuple[str, str], ...]) -> None:
    """Sum a batch of pods' updates or partial sums (or deeper, combined partials) into one partial sum
    (a tree of aggregate tasks)."""
    from argofl.steps import step_combine

    _guard(lambda: _write_outputs(outputs, step_combine.run(run_key=run_key, round=round_, pods=pods)))


@step.command("aggregate")
@_run_key_option
@_round_option
@_outputs_option
@click.option(
    "--checkpoint-out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also copy the new global checkpoint (blob + manifest) here (an Argo output artifact).",
)
def aggregate_cmd(
    run_key: str, round_: int, outputs: tuple[tuple[str, str], ...], checkpoint_out: Path | None
) -> None:
    """Validate the round's updates and write the new global checkpoint."""
    from argofl.steps import step_aggregate

    def body() -> None:
        metrics = step_aggregate.run(run_key=run_key, round=round_)
        if checkpoint_out is not None:
            step_aggregate.export_global(run_key=run_key, round=round_, directory=checkpoint_out)
        _write_outputs(outputs, metrics)

    _guard(body)


@step.command("evaluate")
@_run_key_option
@_round_option
@_outputs_option
def evaluate_cmd(run_key: str, round_: int, outputs: tuple[tuple[str, str], ...]) -> None:
    """Evaluate the round's global model on the test set."""
    from argofl.steps import step_evaluate

    _guard(lambda: _write_outputs(outputs, step_evaluate.run(run_key=run_key, round=round_)))


@step.command("finalize")
@_run_key_option
@_outputs_option
def finalize_cmd(run_key: str, outputs: tuple[tuple[str, str], ...]) -> None:
    """Write summary.json, log the final model, close the MLflow run."""
    from argofl.steps import step_finalize

    def body() -> None:
        summary = step_finalize.run(run_key=run_key)
        _write_outputs(outputs, {"accuracy": summary["final_accuracy"], "summary": json.dumps(summary)})

    _guard(body)


@step.command("finish")
@_run_key_option
@click.option("--status", required=True, help="{{workflow.status}}")
def finish_cmd(run_key: str, status: str) -> None:
    """Exit handler: mark the MLflow run failed if the workflow did not succeed."""
    from argofl.steps import step_finalize

    _guard(lambda: step_finalize.finish(run_key=run_key, status=status))


# --- split learning (steps/split/) -------------------------------------------------------------------


@step.command("split-init")
@click.option(
    "--param", "params", multiple=True, type=NameValue(), callback=_settings_params, metavar="NAME=VALUE"
)
@click.option(
    "--split",
    "split",
    multiple=True,
    type=NameValue(),
    callback=_settings_params,
    metavar="NAME=VALUE",
    help="split.NAME=VALUE",
)
@_init_options
def split_init_cmd(
    params: dict[str, str],
    split: dict[str, str],
    run_key: str,
    workflow_name: str,
    workflow_uid: str,
    start_round: int,
    resume_from: str,
    outputs: tuple[tuple[str, str], ...],
) -> None:
    """Split learning: init (round-0 model, MLflow run), plus the split options and the run token."""
    from argofl.steps.split import steps as split_steps
    from argofl.steps.split.settings import SplitOptions

    def body() -> None:
        settings = Settings.from_mapping(params, where="workflow parameters", strings=True)
        options = SplitOptions.from_mapping(split, where="workflow parameters", strings=True)
        result = split_steps.init(
            settings,
            options,
            run_key=run_key,
            workflow_name=workflow_name,
            workflow_uid=workflow_uid,
            start_round=start_round,
            resume_from=resume_from,
        )
        _write_outputs(outputs, result)

    _guard(body)


@step.command("split-server")
@_run_key_option
@_round_option
@click.option("--host", default=None, help="Address to bind (default: $POD_IP, else 0.0.0.0).")
@_outputs_option
def split_server_cmd(
    run_key: str, round_: int, host: str | None, outputs: tuple[tuple[str, str], ...]
) -> None:
    """Split learning: serve the top half for one round (a daemon step)."""
    from argofl.steps.split import steps as split_steps

    _guard(lambda: _write_outputs(outputs, split_steps.server(run_key=run_key, round=round_, host=host)))


@step.command("split-client")
@_run_key_option
@_round_option
@click.option("--client", "client", required=True, help="Client: 'round 3 / client 7' or '7'.")
@click.option("--server", "server_url", required=True, help="http://HOST:PORT of the split server.")
@_outputs_option
def split_client_cmd(
    run_key: str, round_: int, client: str, server_url: str, outputs: tuple[tuple[str, str], ...]
) -> None:
    """Split learning: train one client's bottom half against the server."""
    from argofl.steps.split import steps as split_steps

    _guard(
        lambda: _write_outputs(
            outputs, split_steps.client(run_key=run_key, round=round_, client=client, server_url=server_url)
        )
    )


@step.command("split-evaluate")
@_run_key_option
@_round_option
@click.option(
    "--server", "server_url", default=None, help="http://HOST:PORT of the round's server (fail fast if gone)."
)
@_outputs_option
def split_evaluate_cmd(
    run_key: str, round_: int, server_url: str | None, outputs: tuple[tuple[str, str], ...]
) -> None:
    """Split learning: reassemble bottom + top of the round and evaluate it on the test set."""
    from argofl.steps.split import steps as split_steps

    _guard(
        lambda: _write_outputs(
            outputs, split_steps.evaluate(run_key=run_key, round=round_, server_url=server_url)
        )
    )


@step.command("split-health")
@click.option("--port", type=click.IntRange(1, 65535), required=True)
@click.option("--host", default=None, help="Default: $POD_IP, else 127.0.0.1.")
@click.option("--run-key", default=None, help="Ready only when the server is this run's (and --round's).")
@click.option("--round", "round_", type=RoundType(), default=None, help="The round it must serve.")
def split_health_cmd(port: int, host: str | None, run_key: str | None, round_: int | None) -> None:
    """Readiness probe of the split server: exit 0 when GET /healthz answers 200 (with --run-key: from
    this run's server of --round, serving)."""
    import os
    import urllib.request

    address = host or os.environ.get("POD_IP") or "127.0.0.1"
    url = f"http://{address}:{port}"
    if run_key is None:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                ok = response.status == 200
        except OSError:
            ok = False
        sys.exit(0 if ok else 1)
    from argofl.steps.runinfo import store_from_env
    from argofl.steps.split.client import probe
    from argofl.steps.split.steps import load_token

    try:
        token = load_token(store_from_env(), run_key)
        state = probe(url, run=run_key, round=round_ or 0, token=token, timeout=2)
    except Exception as exc:  # a probe: whatever fails (store, token, server) means "not ready"
        click.echo(f"not ready: {exc}", err=True)
        sys.exit(1)
    sys.exit(0 if state == "serving" else 1)
