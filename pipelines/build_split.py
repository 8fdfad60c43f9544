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

from argofl.pipelines.experiment import ConfigError, ExperimentConfig
from argofl.pipelines.split_config import SPLIT_PARAMS, SplitExperimentConfig, split_param
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
from argofl.steps.settings import PARAM_NAMES

__all__ = ["build_split_workflow"]


def build_split_workflow(cfg: ExperimentConfig) -> Workflow:
    """The split-learning workflow for ``cfg`` (a :class:`SplitExperimentConfig`)."""
    if not isinstance(cfg, SplitExperimentConfig):
        raise ConfigError(f"{cfg.name}: not a split-learning config (kind: split)")
    c, o = cfg.cluster, cfg.split
    own = cfg.workflow_parameters()
    settings = [k for k in own if k in PARAM_NAMES]  # the others are split-* options
    arguments = (
        [Parameter(name=k, value=v) for k, v in own.items()] + common_parameters(c) + resume_parameters()
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
            + [a for k in SPLIT_PARAMS for a in ("--split", f"{k}={wp(split_param(k))}")]
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
        client = step_container(  # progress lines show it as a client's training (the kind's display)
            cfg,
            "split-client",
            "Split-learning client: its data and bottom half, activations to the server, gradients back",
            [
                *round_arg,
                "--client",
                "{{inputs.parameters.clients}}",
                "--server",
                "{{inputs.parameters.server}}",
            ],
            inputs=[*round_in, Parameter(name="clients"), Parameter(name="server")],
            outputs=("loss", "accuracy", "seconds"),
            resources=work_resources(c),
            retries=0,
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
