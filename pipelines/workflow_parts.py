"""What every argofl workflow shares, whatever its rounds look like: the step container (image,
command, env, outputs, retries, deadline, read-only root filesystem), the common workflow
parameters and the workflow-level pod settings (service account, security context, scratch volume,
pod GC, TTL, node selection)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hera.workflows import (
    Artifact,
    Container,
    Env,
    Parameter,
    Resources,
    RetryStrategy,
    SecretEnv,
    Step,
    Steps,
)
from hera.workflows.models import (
    Backoff,
    Capabilities,
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

from argofl.pipelines.blocks import ROUNDS_IN_ORDER
from argofl.pipelines.experiment import ClusterOptions, ExperimentConfig
from argofl.steps.errors import EXIT_TRANSIENT
from argofl.steps.labels import ROUND_FORMAT

__all__ = [
    "INIT_OUTPUTS",
    "OUTPUT_DIR",
    "RETRY_EXPRESSION",
    "RUN_KEY",
    "STEP_UID",
    "common_parameters",
    "experiment_steps",
    "finish_and_finalize",
    "output_args",
    "output_params",
    "resume_args",
    "resume_parameters",
    "step_container",
    "work_resources",
    "workflow_settings",
    "wp",
]

OUTPUT_DIR = "/tmp/argofl/outputs"
INIT_OUTPUTS = {"mlflow-run-id": "mlflow-run-id", "mlflow-run-url": "mlflow-run-url"}
"""init's outputs, also exported as workflow outputs: the Argo UI shows the MLflow run link."""
RUN_KEY = "{{workflow.parameters.experiment}}/{{workflow.name}}"
STEP_UID = 10001
RETRY_EXPRESSION = (
    f'lastRetry.status == "Error" || asInt(lastRetry.exitCode) == {EXIT_TRANSIENT} '
    "|| asInt(lastRetry.exitCode) >= 128"
)
"""Retry transient failures only: an Error node (pod deleted or evicted), a transient step error
(exit 75, a service unreachable) or a signal (137 = SIGKILL, e.g. OOM); never bad input (2) or a
failed run (1), which fail the same way again."""
S3_SECRET = "argofl-s3"


def wp(name: str) -> str:
    """``{{workflow.parameters.NAME}}``."""
    return f"{{{{workflow.parameters.{name}}}}}"


def step_env() -> list[Any]:
    """Store, MLflow and S3 settings of every step; credentials only through the Secret."""
    return [
        Env(name="ARGOFL_STORE", value=wp("store")),
        Env(name="MLFLOW_TRACKING_URI", value=wp("mlflow-uri")),
        Env(name="ARGOFL_S3_ENDPOINT", value=wp("s3-endpoint")),
        SecretEnv(name="ARGOFL_S3_ACCESS_KEY", secret_name=S3_SECRET, secret_key="accesskey", optional=True),
        SecretEnv(name="ARGOFL_S3_SECRET_KEY", secret_name=S3_SECRET, secret_key="secretkey", optional=True),
        Env(name="MLFLOW_S3_ENDPOINT_URL", value=wp("s3-endpoint")),
        Env(name="ARGOFL_MLFLOW_UI", value=wp("mlflow-ui")),
    ]


def output_params(*names: str, global_names: Mapping[str, str] | None = None) -> list[Parameter]:
    """Output parameters read from ``OUTPUT_DIR/NAME``; ``global_names`` also exports some as workflow
    outputs (``status.outputs``, shown on the workflow in the Argo UI)."""
    exported = global_names or {}
    return [
        Parameter(name=n, value_from=ValueFrom(path=f"{OUTPUT_DIR}/{n}"), global_name=exported.get(n))
        for n in names
    ]


def output_args(*names: str) -> list[str]:
    """``--output NAME=OUTPUT_DIR/NAME`` for each output."""
    return [arg for n in names for arg in ("--output", f"{n}={OUTPUT_DIR}/{n}")]


def step_container(
    cfg: ExperimentConfig,
    name: str,
    description: str,
    args: list[str],
    *,
    command: str | None = None,
    inputs: list[Parameter] | None = None,
    outputs: tuple[str, ...] = (),
    global_outputs: Mapping[str, str] | None = None,
    artifacts: list[Artifact] | None = None,
    resources: Resources | None = None,
    retries: int | None = None,
    env: list[Any] | None = None,
    mounts: list[VolumeMount] | None = None,
    **extra: Any,
) -> Container:
    """A template running ``argofl step COMMAND`` (default: ``name``); ``retries=0`` disables retrying.

    ``env`` and ``mounts`` come on top of every step's environment and ``/tmp`` scratch volume.
    """
    limit = cfg.cluster.retries if retries is None else retries
    return Container(
        name=name,
        image=wp("image"),
        command=["argofl", "step", command or name],
        args=args + output_args(*outputs),
        env=step_env() + (env or []),
        inputs=inputs or [],
        outputs=[*output_params(*outputs, global_names=global_outputs), *(artifacts or [])],
        resources=resources or Resources(cpu_request="100m", memory_request="512Mi", memory_limit="2Gi"),
        retry_strategy=None
        if limit == 0
        else RetryStrategy(
            limit=str(limit),
            retry_policy="Always",
            expression=RETRY_EXPRESSION,
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
        volume_mounts=[VolumeMount(name="tmp", mount_path="/tmp"), *(mounts or [])],
        **extra,
    )


def finish_and_finalize(cfg: ExperimentConfig) -> Container:
    """The ``finish`` exit handler and the ``finalize`` step every experiment ends with; returns finalize."""
    step_container(
        cfg,
        "finish",
        "Exit handler: close the MLflow run as failed unless the workflow succeeded",
        ["--run-key", RUN_KEY, "--status", "{{workflow.status}}"],
        retries=1,
    )
    return step_container(
        cfg,
        "finalize",
        "Write summary.json and log the final model to MLflow",
        ["--run-key", RUN_KEY],
        outputs=("accuracy",),
        global_outputs={"accuracy": "final-accuracy"},
    )


def work_resources(c: ClusterOptions) -> Resources:
    """Requests = limits from the config for the steps that train (GPUs when asked)."""
    return Resources(
        cpu_request=c.cpu,
        cpu_limit=c.cpu,
        memory_request=c.memory,
        memory_limit=c.memory,
        gpus=c.gpus or None,
    )


def common_parameters(c: ClusterOptions) -> list[Parameter]:
    """Workflow parameters every experiment has besides its settings."""
    return [
        Parameter(name="image", value=c.image),
        Parameter(name="store", value=c.store),
        Parameter(name="s3-endpoint", value=c.s3_endpoint),
        Parameter(name="mlflow-uri", value=c.mlflow_uri),
        Parameter(
            name="mlflow-ui",
            value=c.mlflow_ui or c.mlflow_uri,
            description="MLflow UI address as browsers reach it, for the run link (mlflow-run-url output)",
        ),
    ]


def resume_parameters() -> list[Parameter]:
    """``start-round`` and ``resume-from``: where a resubmitted workflow continues (init copies its state)."""
    return [
        Parameter(name="start-round", value="1", description="first round to run (resubmissions)"),
        Parameter(name="resume-from", value="", description="<experiment>/<run> a resubmission continues"),
    ]


def resume_args() -> list[str]:
    """init's arguments for :func:`resume_parameters`; the round loop starts at ``wp("start-round")``."""
    return ["--start-round", wp("start-round"), "--resume-from", wp("resume-from")]


def workflow_settings(cfg: ExperimentConfig, *, entrypoint: str, description: str) -> dict[str, Any]:
    """Keyword arguments of :class:`hera.workflows.Workflow` shared by every experiment kind."""
    c = cfg.cluster
    return {
        "generate_name": f"{cfg.name}-",
        "entrypoint": entrypoint,
        "on_exit": "finish",
        "service_account_name": c.service_account,
        "labels": {"app.kubernetes.io/name": "argofl", "argofl.io/experiment": cfg.settings.experiment},
        "annotations": {
            "workflows.argoproj.io/description": f"{description}. Metrics in MLflow experiment "
            f"{cfg.settings.experiment!r}, run named after the workflow; its link is the workflow output "
            "mlflow-run-url",
            "argofl.io/mlflow-experiment": cfg.settings.experiment,
        },
        "pod_gc": PodGC(strategy="OnWorkflowSuccess"),
        "ttl_strategy": TTLStrategy(seconds_after_success=7 * 86400, seconds_after_failure=14 * 86400),
        "volumes": [Volume(name="tmp", empty_dir=EmptyDirVolumeSource())],
        "security_context": PodSecurityContext(
            seccomp_profile=SeccompProfile(type="RuntimeDefault"),
            run_as_non_root=True,
            run_as_user=STEP_UID,
            run_as_group=STEP_UID,
            fs_group=STEP_UID,
        ),
        "node_selector": c.node_selector or None,
        "tolerations": [Toleration(**t) for t in c.tolerations] or None,
    }


def experiment_steps(name: str, *, init: Any, round_dag: Any, finalize: Any, start_round: str) -> None:
    """The entrypoint: init, then the rounds one after another, then finalize.

    Only the rounds' loop (:data:`~argofl.pipelines.blocks.ROUNDS_IN_ORDER`) fails fast: Argo counts a
    retried step's failed attempts among its template's failed children, so a fail-fast entrypoint would
    stop after an init that failed once (MLflow briefly unreachable) and succeeded on retry."""
    with Steps(
        name=ROUNDS_IN_ORDER,
        parallelism=1,
        fail_fast=True,
        annotations={"workflows.argoproj.io/description": "the rounds in order; none after one that failed"},
    ) as rounds:
        Step(
            name="round",
            template=round_dag,
            arguments={"round": "{{item}}"},
            with_sequence=Sequence(
                start=IntOrString(start_round), end=IntOrString(wp("rounds")), format=ROUND_FORMAT
            ),
        )
    with Steps(
        name=name,
        parallelism=1,
        annotations={"workflows.argoproj.io/description": "init, then the rounds in order, then finalize"},
    ):
        Step(name="init", template=init)
        Step(name="rounds", template=rounds)
        Step(name="finalize", template=finalize)
