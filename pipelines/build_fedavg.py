"""The FedAvg experiment as an Argo Workflow, built with hera.

```
fedavg (steps, parallelism 1)
├── init                                  round-0 global checkpoint, MLflow run
├── round(0:1) … round(R-1:R)             withSequence 1..{{workflow.parameters.rounds}}, one after another
│   └── round (dag)
│       ├── distribute                    prints the JSON list of client groups
│       ├── train(i:clients)              withParam over distribute's result, continueOn failed, retried
│       ├── combine(i:pods)               with cluster.aggregate_fanin: withParam over its batches of pods
│       ├── combine-2 … combine-L(i:…)    with cluster.aggregate_levels: L, over the level below's batches
│       ├── aggregate                     FedAvg of the valid updates (needs min-clients)
│       └── evaluate                      test metrics → output parameters, MLflow
└── finalize                              summary.json, final model to MLflow
onExit: finish                            marks the MLflow run failed unless the workflow succeeded
```
Every setting is a workflow parameter; round r reads what round r-1 wrote in the store.
"""

from __future__ import annotations

from typing import Any, TypeVar

from hera.workflows import DAG, Artifact, NoneArchiveStrategy, Parameter, Task, Workflow, WorkflowTemplate
from hera.workflows.models import ContinueOn, ValueFrom

from argofl.pipelines.blocks import split_rounds
from argofl.pipelines.experiment import ExperimentConfig
from argofl.pipelines.placement import placement_arg
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
from argofl.steps.combine_plan import output_name
from argofl.steps.settings import PARAM_NAMES
from argofl.steps.step_evaluate import FEDERATED_OUTPUTS

__all__ = ["CHECKPOINT_DIR", "build_rounds_template", "build_workflow"]

CHECKPOINT_DIR = "/tmp/argofl/checkpoint"
T = TypeVar("T", Workflow, WorkflowTemplate)


def build_workflow(cfg: ExperimentConfig) -> Workflow:
    """The experiment workflow for ``cfg`` (not yet serialised); with ``cluster.rounds_per_workflow`` the
    parent of the blocks of rounds (:mod:`.blocks`)."""
    wf = _single_workflow(cfg)
    if not cfg.cluster.rounds_per_workflow:
        return wf
    parent, _ = split_rounds(wf.to_dict(), name=cfg.name, size=cfg.cluster.rounds_per_workflow)
    return _hera(Workflow, parent)


def build_rounds_template(cfg: ExperimentConfig) -> WorkflowTemplate | None:
    """The WorkflowTemplate each block's child Workflow references (None without rounds_per_workflow)."""
    if not cfg.cluster.rounds_per_workflow:
        return None
    _, child = split_rounds(
        _single_workflow(cfg).to_dict(), name=cfg.name, size=cfg.cluster.rounds_per_workflow
    )
    return _hera(WorkflowTemplate, child)


def _hera(cls: type[T], manifest: dict[str, Any]) -> T:
    built = cls.from_dict(manifest)
    if not isinstance(built, cls):  # from_dict is typed on hera's mixin
        raise TypeError(f"hera built {type(built).__name__}, expected a {cls.__name__}")
    return built


def _single_workflow(cfg: ExperimentConfig) -> Workflow:
    """Every round in one workflow."""
    c = cfg.cluster
    own = cfg.workflow_parameters()  # the settings, then data-* when the config has a data: section
    settings = [k for k in own if k in PARAM_NAMES]
    data = [k for k in own if k not in PARAM_NAMES]
    arguments = [
        *(Parameter(name=k, value=v) for k, v in own.items()),
        *common_parameters(c),
        *resume_parameters(),
    ]
    round_in = [Parameter(name="round")]
    round_arg = ["--run-key", RUN_KEY, "--round", "{{inputs.parameters.round}}"]

    with Workflow(
        arguments=arguments,
        **workflow_settings(
            cfg,
            entrypoint="fedavg",
            description=f"argofl FedAvg experiment {cfg.name}: rounds of "
            "distribute, train, aggregate, evaluate",
        ),
    ) as wf:
        init = step_container(
            cfg,
            "init",
            "Validate settings, write the round-0 global checkpoint, create the MLflow run",
            [
                "--run-key",
                RUN_KEY,
                "--workflow-name",
                "{{workflow.name}}",
                "--workflow-uid",
                "{{workflow.uid}}",
                *resume_args(),
            ]
            + [a for k in settings for a in ("--param", f"{k}={wp(k)}")]
            + [a for k in data for a in ("--data", f"{k.removeprefix('data-')}={wp(k)}")],
            outputs=tuple(INIT_OUTPUTS),
            global_outputs=INIT_OUTPUTS,
        )
        groups = cfg.placement
        fanin = c.aggregate_fanin
        levels = c.aggregate_levels if fanin else 0
        distribute = step_container(
            cfg,
            "distribute",
            "Sample this round's clients (JSON list of pods"
            + ("; one list per placement group" if groups else "")
            + ("; the combine tasks' batches of pods)" if fanin else ")"),
            round_arg
            + (["--placement", placement_arg(groups)] if groups else [])
            + (["--fanin", str(fanin)] if fanin else [])
            + (["--levels", str(levels)] if levels > 1 else []),
            inputs=round_in,
            outputs=(
                *(f"clients-{g.name}" for g in groups),
                *(output_name(k) for k in range(1, levels + 1)),
            ),
        )
        train_args = [*round_arg, "--clients", "{{inputs.parameters.clients}}"]
        train_inputs = [*round_in, Parameter(name="clients")]
        if not groups:
            trains = {
                "train": step_container(
                    cfg,
                    "train",
                    "Local training of a client group from the previous global model",
                    train_args,
                    inputs=train_inputs,
                    outputs=("loss", "accuracy", "seconds"),
                    resources=work_resources(c),
                )
            }
        else:  # one train template per placement group: only it carries the group's volume and Secret
            trains = {
                f"train-{g.name}": step_container(
                    cfg,
                    f"train-{g.name}",
                    f"Local training of clients of placement group {g.name} (its nodes, volume, Secret)",
                    [*train_args, "--only-clients", ",".join(map(str, g.clients))],
                    command="train",
                    inputs=train_inputs,
                    outputs=("loss", "accuracy", "seconds"),
                    resources=work_resources(c),
                    env=g.env(),
                    mounts=g.mounts(),
                    **g.template_settings(c.node_selector, c.tolerations),
                )
                for g in groups
            }
        aggregate = step_container(
            cfg,
            "aggregate",
            "FedAvg of the valid client updates (weighted by examples)",
            [*round_arg, "--checkpoint-out", CHECKPOINT_DIR],
            inputs=round_in,
            outputs=("loss", "accuracy", "clients"),
            # the global checkpoint also as an output artifact, so the Argo UI lists it on the node
            artifacts=[
                Artifact(name="global-checkpoint", path=CHECKPOINT_DIR, archive=NoneArchiveStrategy())
            ],
        )
        combine = (
            step_container(
                cfg,
                "combine",
                f"Sum ≤ {fanin} pods' updates or partial sums into one (a tree of aggregate tasks)"
                if levels == 1
                else f"Sum ≤ {fanin} pods' updates or partial sums, or ≤ {fanin} combined partials of the "
                "level below, into one (a tree of aggregate tasks)",
                [*round_arg, "--pods", "{{inputs.parameters.pods}}"],
                inputs=[*round_in, Parameter(name="pods")],
            )
            if fanin
            else None
        )
        evaluate = step_container(
            cfg,
            "evaluate",
            "Global model on the test set" + (", and the clients' federated evaluation" if data else ""),
            round_arg,
            inputs=round_in,
            outputs=("loss", "accuracy", *(FEDERATED_OUTPUTS if data else ())),
        )
        finalize = finish_and_finalize(cfg)

        with DAG(
            name="round",
            inputs=round_in,
            parallelism=c.parallelism,
            outputs=[
                Parameter(
                    name=n, value_from=ValueFrom(parameter=f"{{{{tasks.evaluate.outputs.parameters.{n}}}}}")
                )
                for n in ("loss", "accuracy", *(FEDERATED_OUTPUTS if data else ()))
            ],
            annotations={"workflows.argoproj.io/description": "One FedAvg round"},
        ) as round_dag:
            r = {"round": "{{inputs.parameters.round}}"}
            t_distribute = Task(name="distribute", template=distribute, arguments=r)
            for name, template in trains.items():
                Task(
                    name=name,
                    template=template,
                    arguments={**r, "clients": "{{item}}"},
                    with_param=f"{{{{tasks.distribute.outputs.parameters.clients-{name[6:]}}}}}"
                    if groups
                    else "{{tasks.distribute.outputs.result}}",
                    continue_on=ContinueOn(failed=True, error=True),
                    depends="distribute",
                )
            # a placement group without sampled clients this round fans out over [] and is Skipped
            ended = "Succeeded || {t}.Failed || {t}.Errored" + (" || {t}.Skipped" if groups else "")
            trained = " && ".join(
                f"({t}.{ended.format(t=t)})" if groups else f"{t}.{ended.format(t=t)}" for t in trains
            )
            # one combine task per batch of ≤ fan-in pods (level 1) or of the level below's partials, every
            # level after the one below has ended, then the aggregate
            for level in range(1, levels + 1):
                task = "combine" if level == 1 else f"combine-{level}"
                Task(
                    name=task,
                    template=combine,
                    arguments={**r, "pods": "{{item}}"},
                    with_param=f"{{{{tasks.distribute.outputs.parameters.{output_name(level)}}}}}",
                    continue_on=ContinueOn(failed=True, error=True),
                    depends=trained,
                )
                trained = f"{task}.Succeeded || {task}.Failed || {task}.Errored"
            t_aggregate = Task(name="aggregate", template=aggregate, arguments=r, depends=trained)
            t_evaluate = Task(name="evaluate", template=evaluate, arguments=r, depends="aggregate")
            del t_distribute, t_aggregate, t_evaluate

        experiment_steps(
            "fedavg", init=init, round_dag=round_dag, finalize=finalize, start_round=wp("start-round")
        )
    return wf
