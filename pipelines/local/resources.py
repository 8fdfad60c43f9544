"""Resource templates in the local executor: ``action: create`` of an Argo ``Workflow`` (child workflows).

A resource template that creates a Workflow (``argoproj.io/v1alpha1``) runs that child here, with the same
executor: under ``<run_dir>/workflows/<child name>/`` (its own ``status.json`` and ``workflow.json``), with
the parent's artifact store, environment, container runtime, key references and pod slots (the
parent's parallelism caps both), its nodes reported through the same ``on_node`` callback. An interrupt
of the parent stops the child. A ``workflowTemplateRef`` resolves against the WorkflowTemplates given to
``run_workflow`` (``workflow_templates``), as the controller would against the cluster's; the
Workflow's own ``arguments`` override the template's.

When the child has ended, ``failureCondition`` then ``successCondition`` are evaluated against its
status; the forms ``status.phase == P`` and ``status.phase in (P, Q)`` are supported. The node
Succeeds or Fails as Argo's would. Any other action, kind or condition is refused before anything runs.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import yaml

from argofl.pipelines.local.errors import UnsupportedWorkflow, WorkflowInputError

if TYPE_CHECKING:
    from argofl.pipelines.local.engine import Engine
    from argofl.pipelines.local.model import Node
    from argofl.pipelines.local.state import Call

__all__ = ["CHILDREN_DIR", "check_resource", "phase_condition", "run_resource"]

CHILDREN_DIR = "workflows"
"""Where a run keeps the runs of the Workflows it created (``<run_dir>/workflows/<name>``)."""

_API_VERSION = "argoproj.io/v1alpha1"
_CONDITION = re.compile(
    r"^\s*status\.phase\s*(?:==\s*(?P<one>[A-Za-z]+)|in\s*\((?P<many>[A-Za-z,\s]+)\))\s*$"
)
_SUPPORTED_FIELDS = {"action", "manifest", "setOwnerReference", "successCondition", "failureCondition"}


def phase_condition(text: str, where: str) -> frozenset[str]:
    """The phases a ``status.phase == P`` / ``status.phase in (P, Q)`` condition holds for."""
    match = _CONDITION.match(text)
    if match is None:
        raise UnsupportedWorkflow(
            f"{where}: condition {text!r} is not supported by the local executor; use "
            "'status.phase == Phase' or 'status.phase in (Phase, Phase)'"
        )
    if match.group("one"):
        return frozenset({match.group("one")})
    phases = [p.strip() for p in match.group("many").split(",")]
    if not all(phases):
        raise UnsupportedWorkflow(f"{where}: condition {text!r} lists an empty phase")
    return frozenset(phases)


def check_resource(resource: Any, path: str) -> None:
    """Raise :class:`UnsupportedWorkflow` unless ``resource`` creates an Argo Workflow from its manifest."""
    if not isinstance(resource, Mapping):
        raise WorkflowInputError(f"{path}: expected a mapping")
    action = resource.get("action")
    if action != "create":
        raise UnsupportedWorkflow(
            f"{path}.action: resource action {action!r} is not supported by the local executor; "
            "only create (of an argoproj.io Workflow) is"
        )
    for field in sorted(set(resource) - _SUPPORTED_FIELDS):
        raise UnsupportedWorkflow(f"{path}.{field}: {field} is not supported by the local executor")
    for field in ("successCondition", "failureCondition"):
        if resource.get(field):
            phase_condition(str(resource[field]), f"{path}.{field}")
    manifest = _load(resource.get("manifest"), f"{path}.manifest")
    kind, api = manifest.get("kind"), manifest.get("apiVersion")
    if kind != "Workflow" or api != _API_VERSION:
        raise UnsupportedWorkflow(
            f"{path}.manifest: creating a {api}/{kind} is not supported by the local executor; only "
            f"{_API_VERSION} Workflow is"
        )


def _load(text: Any, where: str) -> dict[str, Any]:
    if not isinstance(text, str) or not text.strip():
        raise WorkflowInputError(f"{where}: expected the YAML text of the object to create")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WorkflowInputError(f"{where}: not YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(doc, dict):
        raise WorkflowInputError(f"{where}: expected a mapping, got {type(doc).__name__}")
    return doc


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

    def __init__(self, child: Engine) -> None:
        self.child = child

    def stop(self, reason: str) -> None:
        for thread in self.child.interrupt(f"stopped: parent workflow {reason}"):
            thread.join()


def run_resource(engine: Engine, call: Call, tmpl: dict[str, Any], retried: bool) -> Node:
    """Create the Workflow of ``tmpl``'s resource, run it to completion and evaluate the conditions."""
    from argofl.pipelines.local.engine import Engine, generate_name, new_uid
    from argofl.pipelines.local.validate import check_structure, check_supported, global_parameters, spec_of

    node = engine._create_for_call(call, "Pod", "Pending", tmpl, retried=retried)
    stopping = engine._stopping(call)
    if stopping is not None:
        return engine._set_phase(node, "Failed", stopping)
    resource = tmpl["resource"]
    where = f"templates.{call.template_name}.resource"
    templates: Mapping[str, Mapping[str, Any]] = getattr(engine, "workflow_templates", None) or {}
    manifest = _resolve(_load(resource.get("manifest"), f"{where}.manifest"), templates, f"{where}.manifest")
    _, metadata, spec = spec_of(manifest)
    check_supported(spec)
    params = global_parameters(spec, None)
    child_templates = check_structure(spec, params)
    children = engine.run_dir / CHILDREN_DIR
    name = str(metadata.get("name") or "") or generate_name(
        str(metadata.get("generateName") or f"{engine.name}-")
    )
    while not metadata.get("name") and (children / name).exists():
        name = generate_name(str(metadata.get("generateName")))
    if (children / name).exists():
        raise WorkflowInputError(f"{where}: workflow {name!r} already exists")
    if resource.get("setOwnerReference"):
        owner = {"apiVersion": _API_VERSION, "kind": "Workflow", "name": engine.name, "uid": engine.uid}
        metadata["ownerReferences"] = [*(metadata.get("ownerReferences") or []), owner]
    run_dir = children / name
    run_dir.mkdir(parents=True)
    (run_dir / "workflow.json").write_text(
        json.dumps(
            {
                "apiVersion": _API_VERSION,
                "kind": "Workflow",
                "metadata": {**metadata, "name": name},
                "spec": {**spec, "arguments": {**(spec.get("arguments") or {}), "parameters": params}},
            },
            indent=1,
            default=str,
        )
    )
    child = Engine(
        name=name,
        uid=new_uid(),
        metadata={**metadata, "name": name},
        spec=spec,
        templates=child_templates,
        parameters=params,
        run_dir=run_dir,
        store=engine.store,
        env=engine.extra_env,
        on_node=engine.on_node,
        parallelism=None,
    )
    child.key_refs = engine.key_refs
    child.containers = engine.containers
    child.workflow_templates = templates  # type: ignore[attr-defined]
    if engine.pod_slots is not None:
        child.pod_slots = engine.pod_slots
    engine._set_phase(node, "Running", f"workflow {name}")
    stop = _ChildStop(child)
    engine._pod_started(node, stop, call)
    try:
        result = child.run()
    finally:
        engine._pod_ended(node)
    status = result.status
    phase = str(status.get("phase"))
    failure = resource.get("failureCondition")
    success = resource.get("successCondition")
    detail = f"workflow {name} {phase}" + (f": {status.get('message')}" if status.get("message") else "")
    if failure and phase in phase_condition(str(failure), f"{where}.failureCondition"):
        return engine._set_phase(node, "Failed", f"{detail} (failureCondition {failure!r} holds)")
    if not success or phase in phase_condition(str(success), f"{where}.successCondition"):
        return engine._set_phase(node, "Succeeded", f"workflow {name}")
    return engine._set_phase(node, "Failed", f"{detail}: successCondition {success!r} does not hold")
