"""``argofl step NAME``: the commands that workflow containers run.

stdout carries only what Argo captures as ``outputs.result`` (distribute's JSON list); logs go to
stderr. ``--output NAME=PATH`` writes one of the step's outputs to a file for ``valueFrom.path``.
Exit codes: 0 ok, 2 bad input (settings, checkpoints, run state), 1 anything else.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from steps.settings import FIELDS, Settings, SettingsError, param_name

_BAD_INPUT: tuple[type[BaseException], ...] = ()


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    from steps.checkpoint import CheckpointError
    from steps.data import DatasetError
    from steps.frameworks.base import FrameworkError, TrainingDiverged
    from steps.partition import PartitionError
    from steps.runinfo import RunError
    from steps.store import StoreError
    from steps.strategies import AggregationError
    from steps.tracking import TrackingError

    return (
        SettingsError,
        CheckpointError,
        DatasetError,
        FrameworkError,
        PartitionError,
        RunError,
        AggregationError,
        TrainingDiverged,
        StoreError,
        TrackingError,
    )


def _outputs_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--output",
        "outputs",
        multiple=True,
        metavar="NAME=PATH",
        help="Write output NAME to PATH (for Argo valueFrom.path).",
    )(fn)


def _run_key_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--run-key", required=True, help="<experiment>/<run> prefix of the run in the store."
    )(fn)


def _round_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--round", "round_", type=click.IntRange(min=1), required=True, help="Round number.")(
        fn
    )


def _write_outputs(requested: tuple[str, ...], values: Mapping[str, Any]) -> None:
    for item in requested:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise click.BadParameter(f"expected NAME=PATH, got {item!r}", param_hint="--output")
        if name not in values:
            raise click.BadParameter(
                f"unknown output {name!r}; this step has {sorted(values)}", param_hint="--output"
            )
        value = values[name]
        text = value if isinstance(value, str) else json.dumps(value)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def _guard(fn: Callable[[], Any]) -> Any:
    """Run a step body, turning known failures into a one-line error and exit code 2."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return fn()
    except _bad_input_errors() as exc:
        click.echo(f"error: {' '.join(str(exc).split())}", err=True)
        sys.exit(2)


@click.group()
def step() -> None:
    """Run one workflow step (what a container runs)."""


def _settings_params(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}")
        out[name] = value
    return out


@step.command("init")
@click.option(
    "--param",
    "params",
    multiple=True,
    callback=_settings_params,
    metavar="NAME=VALUE",
    help="A setting, e.g. rounds=5 (Argo parameter names).",
)
@_run_key_option
@click.option("--workflow-name", required=True)
@click.option("--workflow-uid", default="")
@_outputs_option
def init_cmd(
    params: dict[str, str], run_key: str, workflow_name: str, workflow_uid: str, outputs: tuple[str, ...]
) -> None:
    """Validate settings, write the round-0 checkpoint, create the MLflow run."""
    from steps import step_init

    def body() -> None:
        settings = Settings.from_mapping(params, where="workflow parameters", strings=True)
        _write_outputs(
            outputs,
            step_init.run(settings, run_key=run_key, workflow_name=workflow_name, workflow_uid=workflow_uid),
        )

    _guard(body)


@step.command("distribute")
@_run_key_option
@_round_option
def distribute_cmd(run_key: str, round_: int) -> None:
    """Sample the round's clients; print the JSON list of client groups."""
    from steps import step_distribute

    groups = _guard(lambda: step_distribute.run(run_key=run_key, round=round_))
    click.echo(json.dumps(groups))


@step.command("train")
@_run_key_option
@_round_option
@click.option("--clients", required=True, help="Comma-separated client indices trained in this pod.")
@_outputs_option
def train_cmd(run_key: str, round_: int, clients: str, outputs: tuple[str, ...]) -> None:
    """Train the given clients from the previous global model and write their updates."""
    from steps import step_train

    _guard(lambda: _write_outputs(outputs, step_train.run(run_key=run_key, round=round_, clients=clients)))


@step.command("aggregate")
@_run_key_option
@_round_option
@_outputs_option
def aggregate_cmd(run_key: str, round_: int, outputs: tuple[str, ...]) -> None:
    """Validate the round's updates and write the new global checkpoint."""
    from steps import step_aggregate

    _guard(lambda: _write_outputs(outputs, step_aggregate.run(run_key=run_key, round=round_)))


@step.command("evaluate")
@_run_key_option
@_round_option
@_outputs_option
def evaluate_cmd(run_key: str, round_: int, outputs: tuple[str, ...]) -> None:
    """Evaluate the round's global model on the test set."""
    from steps import step_evaluate

    _guard(lambda: _write_outputs(outputs, step_evaluate.run(run_key=run_key, round=round_)))


@step.command("finalize")
@_run_key_option
@_outputs_option
def finalize_cmd(run_key: str, outputs: tuple[str, ...]) -> None:
    """Write summary.json, log the final model, close the MLflow run."""
    from steps import step_finalize

    def body() -> None:
        summary = step_finalize.run(run_key=run_key)
        _write_outputs(outputs, {"accuracy": summary["final_accuracy"], "summary": json.dumps(summary)})

    _guard(body)


@step.command("finish")
@_run_key_option
@click.option("--status", required=True, help="{{workflow.status}}")
def finish_cmd(run_key: str, status: str) -> None:
    """Exit handler: mark the MLflow run failed if the workflow did not succeed."""
    from steps import step_finalize

    _guard(lambda: step_finalize.finish(run_key=run_key, status=status))


SETTING_PARAMS = tuple(param_name(f.name) for f in FIELDS)
