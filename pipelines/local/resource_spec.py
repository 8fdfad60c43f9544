"""What the local executor accepts of a ``resource`` template: ``action: create`` of an Argo ``Workflow``,
with ``successCondition``/``failureCondition`` on ``status.phase`` (checked before anything runs by
:mod:`.validate`; run by :mod:`.resources`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

from argofl.pipelines.local.errors import UnsupportedWorkflow, WorkflowInputError

__all__ = ["API_VERSION", "check_resource", "load_manifest", "phase_condition"]

API_VERSION = "argoproj.io/v1alpha1"
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
    manifest = load_manifest(resource.get("manifest"), f"{path}.manifest")
    kind, api = manifest.get("kind"), manifest.get("apiVersion")
    if kind != "Workflow" or api != API_VERSION:
        raise UnsupportedWorkflow(
            f"{path}.manifest: creating a {api}/{kind} is not supported by the local executor; only "
            f"{API_VERSION} Workflow is"
        )


def load_manifest(text: Any, where: str) -> dict[str, Any]:
    if not isinstance(text, str) or not text.strip():
        raise WorkflowInputError(f"{where}: expected the YAML text of the object to create")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WorkflowInputError(f"{where}: not YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(doc, dict):
        raise WorkflowInputError(f"{where}: expected a mapping, got {type(doc).__name__}")
    return doc
