"""The FedAvg experiment as an Argo Workflow, built with hera.

```
fedavg (steps, parallelism 1)
├── init                                  round-0 global checkpoint, MLflow run
├── round(0:1) … round(R-1:R)             withSequence 1..{{workflow.parameters.rounds}}, one after another
│   └── round (dag)
│       ├── distribute                    prints the JSON list of client groups
│       ├── train(i:clients)              withParam over distribute's result, continueOn failed, retried
│       ├── aggregate                     FedAvg of the valid updates (needs min-clients)
│       └── evaluate                      test metrics → output parameters, MLflow
└── finalize                              summary.json, final model to MLflow
onExit: finish                            marks the MLflow run failed unless the workflow succeeded
```
Every setting is a workflow parameter; round r reads what round r-1 wrote in the store.
"""

from __future__ import annotations

from typing import Any

from hera.workflows import (
    DAG,
    Artifact,
    Container,
    Env,
    NoneArchiveStrategy,
    Parameter,
    Resources,
    RetryStrategy,
    SecretEnv,
    Step,
    Steps,
    Task,
    Workflow,
)
from hera.workflows.models import (
    Backoff,
    Capabilities,
    ContinueOn,
    EmptyDirVolumeSource,
    IntOrString,
    PodGC,
    PodSecurityContext,
    SeccompProfile,
    SecurityContext,
    Sequence,
    Toleration,
    TTLStrategy,
    ValueFrom,
    Volume,
    VolumeMount,
)

from pipelines.config import ExperimentConfig
from steps.settings import FIELDS, param_name

__all__ = ["OUTPUT_DIR", "build_workflow"]

OUTPUT_DIR = "/tmp/argofl/outputs"
CHECKPOINT_DIR = "/tmp/argofl/checkpoint"
RUN_KEY = "{{workflow.parameters.experiment}}/{{workflow.name}}"
STEP_UID = 10001


def _wp(name: str) -> str:
    return f"{{{{workflow.parameters.{name}}}}}"


def _env(cfg: ExperimentConfig) -> list[Any]:
    secret = "argofl-s3"
    return [
        Env(name="ARGOFL_STORE", value=_wp("store")),
        Env(name="MLFLOW_TRACKING_URI", value=_wp("mlflow-uri")),
        Env(name="ARGOFL_S3_ENDPOINT", value=_wp("s3-endpoint")),
        SecretEnv(name="ARGOFL_S3_ACCESS_KEY", secret_name=secret, secret_key="accesskey", optional=True),
        SecretEnv(name="ARGOFL_S3_SECRET_KEY", secret_name=secret, secret_key="secretkey", optional=True),
        Env(name="MLFLOW_S3_ENDPOINT_URL", value=_wp("s3-endpoint")),
    ]


def _outputs(*names: str) -> list[Parameter]:
    return [Parameter(name=n, value_from=ValueFrom(path=f"{OUTPUT_DIR}/{n}")) for n in names]


def _output_args(*names: str) -> list[str]:
    return [arg for n in names for arg in ("--output", f"{n}={OUTPUT_DIR}/{n}")]


def _step_container(
    cfg: ExperimentConfig,
    name: str,
    description: str,
    args: list[str],
    *,
    inputs: list[Parameter] | None = None,
    outputs: tuple[str, ...] = (),
    resources: Resources | None = None,
    retries: int | None = None,
    artifacts: list[Artifact] | None = None,
) -> Container:
    return Container(
        name=name,
        image=_wp("image"),
        command=["argofl", "step", name],
        args=args + _output_args(*outputs),
        env=_env(cfg),
        inputs=inputs or [],
        outputs=[*_outputs(*outputs), *(artifacts or [])],
        resources=resources or Resources(cpu_request="100m", memory_request="512Mi", memory_limit="2Gi"),
        retry_strategy=RetryStrategy(
            limit=str(retries if retries is not None else cfg.cluster.retries),
            retry_policy="Always",
            backoff=Backoff(duration="5s", factor=IntOrString("2"), max_duration="5m"),
        ),
        active_deadline_seconds=str(cfg.cluster.step_timeout),
        annotations={"workflows.argoproj.io/description": description},
        # The image's root filesystem stays read-only; /tmp (HOME, caches, outputs) is an emptyDir.
        security_context=SecurityContext(
            read_only_root_filesystem=True,
            allow_privilege_escalation=False,
            capabilities=Capabilities(drop=["ALL"]),
        ),
        volume_mounts=[VolumeMount(name="tmp", mount_path="/tmp")],
    )


def build_workflow(cfg: ExperimentConfig) -> Workflow:
    """The experiment workflow for ``cfg`` (not yet serialised)."""
    c = cfg.cluster
    settings = cfg.settings.to_params()
    arguments = [Parameter(name=k, value=v) for k, v in settings.items()] + [
        Parameter(name="image", value=c.image),
        Parameter(name="store", value=c.store),
        Parameter(name="s3-endpoint", value=c.s3_endpoint),
        Parameter(name="mlflow-uri", value=c.mlflow_uri),
        Parameter(name="start-round", value="1", description="first round to run (resubmissions)"),
        Parameter(name="resume-from", value="", description="<experiment>/<run> a resubmission continues"),
    ]
    round_in = [Parameter(name="round")]
    round_arg = ["--run-key", RUN_KEY, "--round", "{{inputs.parameters.round}}"]
    train_resources = Resources(
        cpu_request=c.cpu,
        cpu_limit=c.cpu,
        memory_request=c.memory,
        memory_limit=c.memory,
        gpus=c.gpus or None,
    )

    with Workflow(
        generate_name=f"{cfg.name}-",
        entrypoint="fedavg",
        on_exit="finish",
        arguments=arguments,
        service_account_name=c.service_account,
        labels={"app.kubernetes.io/name": "argofl", "argofl.io/experiment": cfg.settings.experiment},
        annotations={
            "workflows.argoproj.io/description": f"argofl FedAvg experiment {cfg.name}: rounds of "
            "distribute, train, aggregate, evaluate"
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
        init = _step_container(
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
                "--start-round",
                _wp("start-round"),
                "--resume-from",
                _wp("resume-from"),
            ]
            + [a for k in settings for a in ("--param", f"{k}={_wp(k)}")],
            outputs=("mlflow-run-id",),
        )
        distribute = _step_container(
            cfg, "distribute", "Sample this round's clients (JSON list of pods)", round_arg, inputs=round_in
        )
        train = _step_container(
            cfg,
            "train",
            "Local training of a client group from the previous global model",
            [*round_arg, "--clients", "{{inputs.parameters.clients}}"],
            inputs=[*round_in, Parameter(name="clients")],
            outputs=("loss", "accuracy", "seconds"),
            resources=train_resources,
        )
        aggregate = _step_container(
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
        evaluate = _step_container(
            cfg,
            "evaluate",
            "Global model on the test set",
            round_arg,
            inputs=round_in,
            outputs=("loss", "accuracy"),
        )
        _step_container(
            cfg,
            "finish",
            "Exit handler: close the MLflow run as failed unless the workflow succeeded",
            ["--run-key", RUN_KEY, "--status", "{{workflow.status}}"],
            retries=1,
        )
        finalize = _step_container(
            cfg,
            "finalize",
            "Write summary.json and log the final model to MLflow",
            ["--run-key", RUN_KEY],
            outputs=("accuracy",),
        )

        with DAG(
            name="round",
            inputs=round_in,
            parallelism=c.parallelism,
            outputs=[
                Parameter(
                    name=n, value_from=ValueFrom(parameter=f"{{{{tasks.evaluate.outputs.parameters.{n}}}}}")
                )
                for n in ("loss", "accuracy")
            ],
            annotations={"workflows.argoproj.io/description": "One FedAvg round"},
        ) as round_dag:
            r = {"round": "{{inputs.parameters.round}}"}
            t_distribute = Task(name="distribute", template=distribute, arguments=r)
            t_train = Task(
                name="train",
                template=train,
                arguments={**r, "clients": "{{item}}"},
                with_param="{{tasks.distribute.outputs.result}}",
                continue_on=ContinueOn(failed=True, error=True),
                depends="distribute",
            )
            t_aggregate = Task(
                name="aggregate",
                template=aggregate,
                arguments=r,
                depends="train.Succeeded || train.Failed || train.Errored",
            )
            t_evaluate = Task(name="evaluate", template=evaluate, arguments=r, depends="aggregate")
            del t_distribute, t_train, t_aggregate, t_evaluate

        with Steps(
            name="fedavg",
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
                with_sequence=Sequence(start=IntOrString(_wp("start-round")), end=IntOrString(_wp("rounds"))),
            )
            Step(name="finalize", template=finalize)
    return wf


def manifest_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The compiled manifest as a plain dict."""
    built: dict[str, Any] = build_workflow(cfg).to_dict()
    return built


__all__ += ["manifest_dict"]
_ = FIELDS, param_name
