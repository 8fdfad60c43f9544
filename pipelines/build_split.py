"""The split-learning experiment (``kind: split``) as an Argo Workflow, built with hera.

```
split (steps, parallelism 1)
├── init                                   round-0 model, MLflow run, split options, the run's token
├── round(0:1) … round(R-1:R)              withSequence, one after another
│   └── round (dag)
│       ├── server        daemon           top half + labels + optimizer behind HTTP (readinessProbe /healthz)
│       ├── clients                        vanilla: a steps template, clients take turns (parallelism 1)
│       │                                  splitfed: withSequence fan-out, all clients at once
│       │   └── client(i)  → http://{{tasks.server.ip}}:PORT
│       └── evaluate                       bottom ∪ top → global model, test metrics → outputs, MLflow
└── finalize                               summary.json, final model to MLflow
onExit: finish
```
The server is a daemon: it ends on its own when every client is done (or after ``split.idle_timeout``
without a request), and Argo stops it when the round's DAG ends at the latest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hera.workflows import DAG, Parameter, Step, Steps, Task, Workflow
from hera.workflows.models import (
    ContainerPort,
    ContinueOn,
    ExecAction,
    IntOrString,
    Probe,
    Sequence,
    ValueFrom,
)

from argofl.pipelines.config import ClusterOptions, ConfigError, ExperimentConfig
from argofl.pipelines.workflow_parts import (
    INIT_OUTPUTS,
    RUN_KEY,
    common_parameters,
    experiment_steps,
    finish_and_finalize,
    resume_args,
    resume_parameters,
    step_container,
    work_resources,
    workflow_settings,
    wp,
)
from argofl.steps.labels import client_sequence_format
from argofl.steps.settings import Settings, SettingsError, param_name
from argofl.steps.split.settings import SPLIT_STRATEGY_NOTE, UNUSED_SETTINGS, SplitOptions

__all__ = ["SplitExperimentConfig", "build_split_workflow", "split_config"]

# Workflow parameters for the split options that may change per submission (mode and port shape the
# manifest and are fixed at compile time).
SPLIT_PARAMS = ("cut", "idle_timeout", "request_timeout")


@dataclass(frozen=True)
class SplitExperimentConfig(ExperimentConfig):
    """A ``kind: split`` experiment config: settings, cluster options and the ``split:`` section."""

    split: SplitOptions = field(default_factory=SplitOptions)


def split_config(
    *,
    name: str,
    settings: Settings,
    cluster: ClusterOptions,
    source: Path | None,
    split: Any,
    where: str,
) -> SplitExperimentConfig:
    """Validate the ``split:`` section of a ``kind: split`` config."""
    if not isinstance(split, dict):
        raise ConfigError(f"{where}: split: expected a mapping, got {type(split).__name__}")
    if settings.strategy != "fedavg":
        raise ConfigError(f"{where}: strategy: {SPLIT_STRATEGY_NOTE}, got {settings.strategy!r}")
    if settings.attack != "none":
        raise ConfigError(f"{where}: attack: split learning simulates no attacks, got {settings.attack!r}")
    try:
        options = SplitOptions.from_mapping(split, where=where)
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None
    return SplitExperimentConfig(
        name=name, settings=settings, cluster=cluster, source=source, kind="split", split=options
    )


def _param(key: str) -> str:
    return "split-" + key.replace("_", "-")


def build_split_workflow(cfg: ExperimentConfig) -> Workflow:
    """The split-learning workflow for ``cfg`` (a :class:`SplitExperimentConfig`)."""
    if not isinstance(cfg, SplitExperimentConfig):
        raise ConfigError(f"{cfg.name}: not a split-learning config (kind: split)")
    c, o = cfg.cluster, cfg.split
    unused = {param_name(k) for k in UNUSED_SETTINGS}
    settings = {k: v for k, v in cfg.settings.to_params().items() if k not in unused}
    arguments = (
        [Parameter(name=k, value=v) for k, v in settings.items()]
        + [Parameter(name=_param(k), value=str(getattr(o, k))) for k in SPLIT_PARAMS]
        + common_parameters(c)
        + resume_parameters()
    )
    round_in = [Parameter(name="round")]
    round_arg = ["--run-key", RUN_KEY, "--round", "{{inputs.parameters.round}}"]
    port = o.port
    server_url = f"http://{{{{tasks.server.ip}}}}:{port}"

    with Workflow(
        arguments=arguments,
        **workflow_settings(
            cfg,
            entrypoint="split",
            description=f"argofl split-learning experiment {cfg.name} ({o.mode}): "
            "rounds of a server daemon (top half, labels) and clients (data, bottom half), then evaluate",
        ),
    ) as wf:
        init = step_container(
            cfg,
            "split-init",
            "Validate settings, write the round-0 model, create the MLflow run, the split options and token",
            [
                "--run-key",
                RUN_KEY,
                "--workflow-name",
                "{{workflow.name}}",
                "--workflow-uid",
                "{{workflow.uid}}",
                "--split",
                f"mode={o.mode}",
                "--split",
                f"port={port}",
                *resume_args(),
            ]
            + [a for k in SPLIT_PARAMS for a in ("--split", f"{k}={wp(_param(k))}")]
            + [a for k in settings for a in ("--param", f"{k}={wp(k)}")],
            outputs=tuple(INIT_OUTPUTS),
            global_outputs=INIT_OUTPUTS,
        )
        server = step_container(
            cfg,
            "split-server",
            "Split-learning server of one round: top half, labels, optimizer behind an HTTP API",
            round_arg,
            inputs=round_in,
            resources=work_resources(c),
            retries=0,
            daemon=True,
            ports=[ContainerPort(container_port=port, name="split-api", protocol="TCP")],
            # exec, not httpGet: httpGet.port is an IntOrString that Argo's schema wants as a string, which
            # Kubernetes would then read as a (invalid) port name; the command GETs /healthz itself.
            readiness_probe=Probe(
                exec=ExecAction(
                    command=[
                        "argofl",
                        "step",
                        "split-health",
                        "--port",
                        str(port),
                        "--run-key",
                        RUN_KEY,
                        "--round",
                        "{{inputs.parameters.round}}",
                    ]
                ),
                initial_delay_seconds=1,
                period_seconds=2,
                timeout_seconds=2,
                failure_threshold=60,
            ),
        )
        client = (
            step_container(  # named like FedAvg's train/evaluate so `argofl run` reports them the same way
                cfg,
                "train",
                "Split-learning client: its data and bottom half, activations to the server, gradients back",
                [
                    *round_arg,
                    "--client",
                    "{{inputs.parameters.clients}}",
                    "--server",
                    "{{inputs.parameters.server}}",
                ],
                command="split-client",
                inputs=[*round_in, Parameter(name="clients"), Parameter(name="server")],
                outputs=("loss", "accuracy", "seconds"),
                resources=work_resources(c),
                retries=0,
            )
        )
        evaluate = step_container(
            cfg,
            "evaluate",
            "Bottom ∪ top of the round → global model; test metrics (fails at once if the server is gone)",
            [*round_arg, "--server", "{{inputs.parameters.server}}"],
            command="split-evaluate",
            inputs=[*round_in, Parameter(name="server")],
            outputs=("loss", "accuracy"),
        )
        finalize = finish_and_finalize(cfg)
        count = Sequence(
            count=IntOrString(wp("clients")),
            format=client_sequence_format("{{inputs.parameters.round}}"),
        )
        taking_turns = None
        if o.mode == "vanilla":
            with Steps(
                name="split-clients",
                inputs=[*round_in, Parameter(name="server")],
                parallelism=1,
                annotations={
                    "workflows.argoproj.io/description": "Vanilla split learning: clients take turns"
                },
            ) as taking_turns:
                Step(
                    name="client",
                    template=client,
                    arguments={
                        "round": "{{inputs.parameters.round}}",
                        "clients": "{{item}}",
                        "server": "{{inputs.parameters.server}}",
                    },
                    with_sequence=count,
                    continue_on=ContinueOn(failed=True, error=True),
                )

        with DAG(
            name="round",
            inputs=round_in,
            # the server daemon stays Running (an active child) all round: one slot more for clients
            parallelism=c.parallelism + 1,
            outputs=[
                Parameter(
                    name=n, value_from=ValueFrom(parameter=f"{{{{tasks.evaluate.outputs.parameters.{n}}}}}")
                )
                for n in ("loss", "accuracy")
            ],
            annotations={"workflows.argoproj.io/description": f"One split-learning round ({o.mode})"},
        ) as round_dag:
            r = {"round": "{{inputs.parameters.round}}"}
            Task(name="server", template=server, arguments=r)
            if taking_turns is not None:
                Task(
                    name="clients",
                    template=taking_turns,
                    arguments={**r, "server": server_url},
                    depends="server",
                    continue_on=ContinueOn(failed=True, error=True),
                )
            else:
                Task(
                    name="clients",
                    template=client,
                    arguments={**r, "clients": "{{item}}", "server": server_url},
                    with_sequence=count,
                    depends="server",
                    continue_on=ContinueOn(failed=True, error=True),
                )
            Task(
                name="evaluate",
                template=evaluate,
                arguments={**r, "server": server_url},
                depends="clients.Succeeded || clients.Failed || clients.Errored",
            )

        experiment_steps(
            "split", init=init, round_dag=round_dag, finalize=finalize, start_round=wp("start-round")
        )
    return wf
