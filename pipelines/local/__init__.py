"""The local executor: run a compiled Argo Workflow on this machine, without Kubernetes.

``run_workflow(manifest, parameters, runs_dir=...)`` validates the manifest against the supported subset
(:mod:`.validate`), then executes it with Argo's semantics (:mod:`.engine`): each container's
``command``/``args`` — or a script template's ``source``, written to a file and passed to the
``command`` — runs as a host process with the template's environment; the image is ignored and
``python``/``python3`` are the running interpreter. Artifacts go through a :class:`steps.store.Store`
(:mod:`.artifacts`). Declared paths get a node-private view (:mod:`.sandbox`) so concurrent nodes that
write the same fixed path do not clash.

On disk, under ``<runs_dir>/<workflow name>/``: ``status.json`` (Argo's ``status``, rewritten atomically
as the run progresses), ``workflow.json`` (the manifest as run, its parameters with the values they got),
``logs/<node-id>/attempt-<n>.log`` (stdout+stderr) and ``.stdout``, ``nodes/<node-id>/`` (each node's
private files) and ``.lock``, held while the run runs (:mod:`.runlock`).

Step processes never outlive the executor (:mod:`.lifeline`); with ``stop_on_signals``, SIGINT, SIGTERM
and SIGHUP stop the run as ``argo stop`` does (:mod:`.signals`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from argofl.pipelines.local.containers import DockerOptions, DockerRuntime
from argofl.pipelines.local.engine import Engine, LocalRunResult, generate_name, new_uid
from argofl.pipelines.local.errors import LocalExecutorError, UnsupportedWorkflow, WorkflowInputError
from argofl.pipelines.local.refs import KeyRefs
from argofl.pipelines.local.runlock import hold_run_lock
from argofl.pipelines.local.signals import StopOnSignals
from argofl.pipelines.local.state import RunOptions
from argofl.pipelines.local.validate import check_structure, check_supported, global_parameters, spec_of
from argofl.steps.store import FileStore, Store

__all__ = [
    "DockerOptions",
    "LocalExecutorError",
    "LocalRunResult",
    "UnsupportedWorkflow",
    "WorkflowInputError",
    "run_workflow",
]


def _workflow_name(kind: str, metadata: Mapping[str, Any]) -> str:
    if kind == "Workflow" and metadata.get("name"):
        return str(metadata["name"])
    prefix = metadata.get("generateName")
    if not prefix:
        if not metadata.get("name"):
            raise WorkflowInputError("metadata: set name or generateName")
        prefix = f"{metadata['name']}-"
    return generate_name(str(prefix))


def run_workflow(
    manifest: Mapping[str, Any],
    parameters: Mapping[str, str] | None = None,
    *,
    runs_dir: Path,
    artifact_store: Store | None = None,
    env: Mapping[str, str] | None = None,
    on_node: Callable[[dict[str, Any]], None] | None = None,
    parallelism: int | None = None,
    stop_on_signals: bool = False,
    containers: DockerOptions | None = None,
    key_refs: KeyRefs | None = None,
    workflow_templates: Mapping[str, Mapping[str, Any]] | None = None,
) -> LocalRunResult:
    """Run ``manifest`` (a Workflow, or a WorkflowTemplate as if submitted with ``--from``) to completion.

    ``runs_dir`` is made absolute first: steps run in their own working directories. With
    ``stop_on_signals`` (from the main thread), SIGINT/SIGTERM/SIGHUP stop the run; the result's
    ``stopped_by`` names the signal. With ``containers`` each pod runs as a container of its image
    (:mod:`.containers`); the run's containers and network are removed at the end, also when it is
    interrupted. ``key_refs`` (:func:`.refs.load_refs`) resolve ``secretKeyRef``/``configMapKeyRef``
    before the environment does. ``workflow_templates`` (by name) resolve the ``workflowTemplateRef`` of a
    Workflow a resource template creates (:mod:`.resources`; kept in ``workflow-templates.json``).
    Raises :class:`UnsupportedWorkflow` or :class:`WorkflowInputError` before anything runs when the
    manifest cannot be run; a workflow that runs and fails returns a result with phase Failed or Error.
    """
    kind, metadata, spec = spec_of(manifest)
    check_supported(spec)
    params = global_parameters(spec, parameters)
    templates = check_structure(spec, params)
    if parallelism is not None and int(parallelism) < 1:
        raise WorkflowInputError(f"parallelism: {parallelism!r} must be at least 1")
    name = _workflow_name(kind, metadata)
    runs_dir = Path(runs_dir).resolve()
    run_dir = runs_dir / name
    while run_dir.exists():
        if kind == "Workflow" and metadata.get("name"):
            raise WorkflowInputError(
                f"workflow {name!r} already exists in {runs_dir}: delete {run_dir} or use "
                "metadata.generateName"
            )
        name = _workflow_name(kind, metadata)
        run_dir = runs_dir / name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "workflow.json").write_text(
        json.dumps(
            {
                "apiVersion": "argoproj.io/v1alpha1",
                "kind": "Workflow",
                "metadata": {**metadata, "name": name},
                "spec": {**spec, "arguments": {**(spec.get("arguments") or {}), "parameters": params}},
            },
            indent=1,
            default=str,
        )
    )
    if workflow_templates:
        (run_dir / "workflow-templates.json").write_text(
            json.dumps(workflow_templates, indent=1, default=str)
        )
    store = artifact_store if artifact_store is not None else FileStore(runs_dir / "artifacts")
    runtime = DockerRuntime(containers, name, run_dir) if containers is not None else None
    options = RunOptions(
        name=name,
        uid=new_uid(),
        metadata=metadata,
        spec=spec,
        templates=templates,
        parameters=params,
        run_dir=run_dir,
        store=store,
        env=env,
        on_node=on_node,
        parallelism=parallelism,
        key_refs=key_refs,
        containers=runtime,
    )
    engine = Engine(options, workflow_templates)
    with hold_run_lock(run_dir):
        try:
            if runtime is not None:
                runtime.open()
            if not stop_on_signals:
                return engine.run()
            with StopOnSignals(engine.interrupt) as signals:
                result = engine.run()
            result.stopped_by = signals.signum
            return result
        finally:
            if runtime is not None:
                runtime.close()
