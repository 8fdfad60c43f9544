"""Resource templates in the local executor: ``action: create`` of an Argo ``Workflow`` (child workflows).

A resource template that creates a Workflow (``argoproj.io/v1alpha1``) runs that child here, with the same
executor: under ``<run_dir>/workflows/<child name>/`` (its own ``status.json`` and ``workflow.json``), with
the parent's artifact store, environment, container runtime, key references and pod slots (the
parent's parallelism caps both), its nodes reported through the same ``on_node`` callback. An interrupt
of the parent stops the child. A ``workflowTemplateRef`` resolves against the WorkflowTemplates given to
``run_workflow`` (``workflow_templates``), as the controller would against the cluster's; the
Workflow's own ``arguments`` override the template's.

When the child has ended, ``failureCondition`` then ``successCondition`` are evaluated against its
status (:mod:`.resource_spec`). The node Succeeds or Fails as Argo's would.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from argofl.pipelines.local.errors import WorkflowInputError
from argofl.pipelines.local.graph import Call, LogKey
from argofl.pipelines.local.model import Node, Phase, generate_name
from argofl.pipelines.local.resource_spec import API_VERSION, load_manifest, phase_condition
from argofl.pipelines.local.state import WorkflowState
from argofl.pipelines.local.validate import check_structure, check_supported, global_parameters, spec_of

__all__ = ["CHILDREN_DIR", "ChildRun", "ResourceRunner"]

CHILDREN_DIR = "workflows"
"""Where a run keeps the runs of the Workflows it created (``<run_dir>/workflows/<name>``)."""


class _ChildResult(Protocol):
    status: dict[str, Any]


class ChildRun(Protocol):
    """What a resource runner needs of a child workflow's engine."""

    def run(self) -> _ChildResult: ...

    def interrupt(self, message: str, *, hard: bool = False) -> list[threading.Thread]: ...


ChildFactory = Callable[..., ChildRun]
"""Builds the engine of a child workflow (keyword arguments: name, metadata, spec, templates,
parameters, run_dir), sharing the parent's store, environment, runtime, key refs and pod slots."""


def _resolve(
    manifest: dict[str, Any], templates: Mapping[str, Mapping[str, Any]], where: str
) -> dict[str, Any]:
    """``manifest`` with its ``workflowTemplateRef`` replaced by the template's spec (arguments merged)."""
    spec = dict(manifest.get("spec") or {})
    ref = spec.pop("workflowTemplateRef", None)
    if ref is None:
        return manifest
    name = str((ref or {}).get("name") or "")
    if (ref or {}).get("clusterScope") or name not in templates:
        known = ", ".join(sorted(templates)) or "none"
        raise WorkflowInputError(
            f"{where}: workflowTemplateRef {name!r} is not one of the WorkflowTemplates given to the local "
            f"executor ({known}); pass it with the parent manifest"
        )
    base = copy.deepcopy(dict(templates[name].get("spec") or {}))
    own = {str(p.get("name")): p for p in (spec.pop("arguments", None) or {}).get("parameters") or []}
    parameters = [
        own.pop(str(p.get("name")), p) for p in (base.get("arguments") or {}).get("parameters") or []
    ]
    base["arguments"] = {**(base.get("arguments") or {}), "parameters": [*parameters, *own.values()]}
    return {**manifest, "spec": {**base, **spec}}


class _ChildStop:
    """The child's engine as a running pod of the parent: the parent's interrupt stops it."""

    def __init__(self, child: ChildRun) -> None:
        self.child = child

    def stop(self, reason: str) -> None:
        for thread in self.child.interrupt(f"stopped: parent workflow {reason}"):
            thread.join()


class ResourceRunner:
    """Runs ``resource`` templates: creates the child Workflow, runs it, evaluates the conditions."""

    def __init__(
        self, state: WorkflowState, templates: Mapping[str, Mapping[str, Any]], make_child: ChildFactory
    ) -> None:
        self.state = state
        self.templates = templates
        self.make_child = make_child

    def run(self, call: Call, tmpl: dict[str, Any], retried: bool, log_key: LogKey | None) -> Node:
        """Create the Workflow of ``tmpl``'s resource, run it to completion and evaluate the conditions."""
        state, graph = self.state, self.state.graph
        node = graph.create_for_call(call, "Pod", Phase.PENDING, tmpl, retried=retried)
        stopping = state.stopping(call)
        if stopping is not None:
            return graph.set_phase(node, Phase.FAILED, stopping)
        resource = tmpl["resource"]
        where = f"templates.{call.template_name}.resource"
        manifest = _resolve(
            load_manifest(resource.get("manifest"), f"{where}.manifest"), self.templates, f"{where}.manifest"
        )
        _, metadata, spec = spec_of(manifest)
        check_supported(spec)
        params = global_parameters(spec, None)
        child_templates = check_structure(spec, params)
        children = state.run_dir / CHILDREN_DIR
        name = str(metadata.get("name") or "") or generate_name(
            str(metadata.get("generateName") or f"{state.name}-")
        )
        while not metadata.get("name") and (children / name).exists():
            name = generate_name(str(metadata.get("generateName")))
        if (children / name).exists():
            raise WorkflowInputError(f"{where}: workflow {name!r} already exists")
        if resource.get("setOwnerReference"):
            owner = {"apiVersion": API_VERSION, "kind": "Workflow", "name": state.name, "uid": state.uid}
            metadata["ownerReferences"] = [*(metadata.get("ownerReferences") or []), owner]
        run_dir = children / name
        _write_manifest(run_dir, {**metadata, "name": name}, spec, params)
        child = self.make_child(
            name=name,
            metadata={**metadata, "name": name},
            spec=spec,
            templates=child_templates,
            parameters=params,
            run_dir=run_dir,
        )
        graph.set_phase(node, Phase.RUNNING, f"workflow {name}")
        state.pod_started(node, _ChildStop(child), call)
        try:
            result = child.run()
        finally:
            state.pod_ended(node)
        status = result.status
        phase = str(status.get("phase"))
        failure = resource.get("failureCondition")
        success = resource.get("successCondition")
        detail = f"workflow {name} {phase}" + (f": {status.get('message')}" if status.get("message") else "")
        if failure and phase in phase_condition(str(failure), f"{where}.failureCondition"):
            return graph.set_phase(node, Phase.FAILED, f"{detail} (failureCondition {failure!r} holds)")
        if not success or phase in phase_condition(str(success), f"{where}.successCondition"):
            return graph.set_phase(node, Phase.SUCCEEDED, f"workflow {name}")
        return graph.set_phase(node, Phase.FAILED, f"{detail}: successCondition {success!r} does not hold")


def _write_manifest(
    run_dir: Path, metadata: Mapping[str, Any], spec: Mapping[str, Any], params: list[dict[str, Any]]
) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "workflow.json").write_text(
        json.dumps(
            {
                "apiVersion": API_VERSION,
                "kind": "Workflow",
                "metadata": dict(metadata),
                "spec": {**spec, "arguments": {**(spec.get("arguments") or {}), "parameters": params}},
            },
            indent=1,
            default=str,
        )
    )
