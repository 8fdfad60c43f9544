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

from hera.workflows import (
    DAG,
    Container,
    Parameter,
    Resources,
    RetryStrategy,
    Step,
    Steps,
    Task,
    Workflow,
)
from hera.workflows.models import (
    Backoff,
    Capabilities,
    ContainerPort,
    ContinueOn,
    EmptyDirVolumeSource,
    ExecAction,
    IntOrString,
    PodGC,
    PodSecurityContext,
    Probe,
    SeccompProfile,
    SecurityContext,
    Sequence,
    Toleration,
    TTLStrategy,
    ValueFrom,
    Volume,
    VolumeMount,
)

from pipelines.build_fedavg import OUTPUT_DIR, RUN_KEY, STEP_UID, _env, _output_args, _outputs, _wp
from pipelines.config import ClusterOptions, ConfigError, ExperimentConfig
from steps.settings import Settings, SettingsError
from steps.split.settings import SplitOptions

__all__ = ["SplitExperimentConfig", "build_split_workflow", "split_config"]

_ = OUTPUT_DIR
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
    try:
        options = SplitOptions.from_mapping(split, where=where)
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None
    return SplitExperimentConfig(
        name=name, settings=settings, cluster=cluster, source=source, kind="split", split=options
    )


def _param(key: str) -> str:
    return "split-" + key.replace("_", "-")


def _container(
    cfg: ExperimentConfig,
    name: str,
    description: str,
    args: list[str],
    *,
    command: str | None = None,
    inputs: list[Parameter] | None = None,
    outputs: tuple[str, ...] = (),
    resources: Resources | None = None,
    retries: int | None = None,
    **extra: Any,
) -> Container:
    return Container(
        name=name,
        image=_wp("image"),
        command=["argofl", "step", command or name],
        args=args + _output_args(*outputs),
        env=_env(cfg),
        inputs=inputs or [],
        outputs=_outputs(*outputs),
        resources=resources or Resources(cpu_request="100m", memory_request="512Mi", memory_limit="2Gi"),
        retry_strategy=None
        if retries == 0
        else RetryStrategy(
            limit=str(retries if retries is not None else cfg.cluster.retries),
            retry_policy="Always",
            backoff=Backoff(duration="5s", factor=IntOrString("2"), max_duration="5m"),
        ),
        active_deadline_seconds=str(cfg.cluster.step_timeout),
        annotations={"workflows.argoproj.io/description": description},
        # as FedAvg's steps: read-only root filesystem; /tmp (HOME, caches, outputs) is an emptyDir
        security_context=SecurityContext(
            read_only_root_filesystem=True,
            allow_privilege_escalation=False,
            capabilities=Capabilities(drop=["ALL"]),
        ),
        volume_mounts=[VolumeMount(name="tmp", mount_path="/tmp")],
        **extra,
    )


def build_split_workflow(cfg: ExperimentConfig) -> Workflow:
    """The split-learning workflow for ``cfg`` (a :class:`SplitExperimentConfig`)."""
    if not isinstance(cfg, SplitExperimentConfig):
        raise ConfigError(f"{cfg.name}: not a split-learning config (kind: split)")
    c, o = cfg.cluster, cfg.split
    settings = cfg.settings.to_params()
    arguments = (
        [Parameter(name=k, value=v) for k, v in settings.items()]
        + [Parameter(name=_param(k), value=str(getattr(o, k))) for k in SPLIT_PARAMS]
        + [
            Parameter(name="image", value=c.image),
            Parameter(name="store", value=c.store),
            Parameter(name="s3-endpoint", value=c.s3_endpoint),
            Parameter(name="mlflow-uri", value=c.mlflow_uri),
        ]
    )
    round_in = [Parameter(name="round")]
    round_arg = ["--run-key", RUN_KEY, "--round", "{{inputs.parameters.round}}"]
    work_resources = Resources(
        cpu_request=c.cpu,
        cpu_limit=c.cpu,
        memory_request=c.memory,
        memory_limit=c.memory,
        gpus=c.gpus or None,
    )
    port = o.port
    server_url = f"http://{{{{tasks.server.ip}}}}:{port}"

    with Workflow(
        generate_name=f"{cfg.name}-",
        entrypoint="split",
        on_exit="finish",
        arguments=arguments,
        service_account_name=c.service_account,
        labels={"app.kubernetes.io/name": "argofl", "argofl.io/experiment": cfg.settings.experiment},
        annotations={
            "workflows.argoproj.io/description": f"argofl split-learning experiment {cfg.name} ({o.mode}): "
            "rounds of a server daemon (top half, labels) and clients (data, bottom half), then evaluate"
        },
        pod_gc=PodGC(strategy="OnWorkflowSuccess"),
        ttl_strategy=TTLStrategy(seconds_after_success=7 * 86400, seconds_after_failure=14 * 86400),
        volumes=[Volume(name="tmp", empty_dir=EmptyDirVolumeSource())],
        security_context=PodSecurityContext(
            seccomp_profile=SeccompProfile(type="RuntimeDefault"),
            run_as_non_root=True,
            run_as_user=STEP_UID,
            run_as_group=STEP_UID,
            fs_group=STEP_UID,
        ),
        node_selector=c.node_selector or None,
        tolerations=[Toleration(**t) for t in c.tolerations] or None,
    ) as wf:
        init = _container(
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
            ]
            + [a for k in SPLIT_PARAMS for a in ("--split", f"{k}={_wp(_param(k))}")]
            + [a for k in settings for a in ("--param", f"{k}={_wp(k)}")],
            outputs=("mlflow-run-id",),
        )
        server = _container(
            cfg,
            "split-server",
            "Split-learning server of one round: top half, labels, optimizer behind an HTTP API",
            round_arg,
            inputs=round_in,
            resources=work_resources,
            retries=0,
            daemon=True,
            ports=[ContainerPort(container_port=port, name="split-api", protocol="TCP")],
            # exec, not httpGet: httpGet.port is an IntOrString that Argo's schema wants as a string, which
            # Kubernetes would then read as a (invalid) port name; the command GETs /healthz itself.
            readiness_probe=Probe(
                exec=ExecAction(command=["argofl", "step", "split-health", "--port", str(port)]),
                initial_delay_seconds=1,
                period_seconds=2,
                timeout_seconds=2,
                failure_threshold=60,
            ),
        )
        client = _container(  # named like FedAvg's train/evaluate so `argofl run` reports them the same way
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
            resources=work_resources,
            retries=0,
        )
        evaluate = _container(
            cfg,
            "evaluate",
            "Bottom ∪ top of the round → global model; test metrics",
            round_arg,
            command="split-evaluate",
            inputs=round_in,
            outputs=("loss", "accuracy"),
        )
        _container(
            cfg,
            "finish",
            "Exit handler: close the MLflow run as failed unless the workflow succeeded",
            ["--run-key", RUN_KEY, "--status", "{{workflow.status}}"],
            retries=1,
        )
        finalize = _container(
            cfg,
            "finalize",
            "Write summary.json and log the final model to MLflow",
            ["--run-key", RUN_KEY],
            outputs=("accuracy",),
        )
        count = Sequence(count=IntOrString(_wp("clients")))
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
            parallelism=max(2, c.parallelism),
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
                arguments=r,
                depends="clients.Succeeded || clients.Failed || clients.Errored",
            )

        with Steps(
            name="split",
            parallelism=1,
            fail_fast=True,
            annotations={
                "workflows.argoproj.io/description": "init, then the rounds in order, then finalize"
            },
        ):
            Step(name="init", template=init)
            Step(
                name="round",
                template=round_dag,
                arguments={"round": "{{item}}"},
                with_sequence=Sequence(start=IntOrString("1"), end=IntOrString(_wp("rounds"))),
            )
            Step(name="finalize", template=finalize)
    return wf
