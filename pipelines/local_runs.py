"""A local run's records as ``argofl run`` leaves them: ``RUN_DIR/workflow.json`` (the manifest as run),
``RUN_DIR/status.json`` (Argo's ``status``), and for blocks of rounds each child Workflow's under
``RUN_DIR/workflows/<child>/``, read back as one workflow, the shape an Argo server's answer has."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from argofl.pipelines.parameters import merge_children, parameters_of

__all__ = ["RESUMES", "continuation", "is_run_dir", "json_object", "read_run"]

RESUMES = "argofl.io/resumes"
"""The annotation of a run ``argofl resume`` started: the name of the run it continues (its
``resume-from`` names an earlier one when that run completed no round)."""


def json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ValueError if it holds something else."""
    value = json.loads(path.read_text())
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a {type(value).__name__}, not a JSON object")
    return value


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a local run's directory (it holds ``workflow.json``)."""
    return (path / "workflow.json").is_file()


def read_run(run_dir: Path) -> dict[str, Any]:
    """The workflow run in ``run_dir``: its manifest with its ``status``, the nodes of the child Workflows
    it created (blocks of rounds) merged in and listed in ``status.children``. OSError or ValueError when a
    record is missing or not a JSON object."""
    workflow = json_object(run_dir / "workflow.json")
    workflow["status"] = json_object(run_dir / "status.json")
    children = []
    for child_status in sorted((run_dir / "workflows").glob("*/status.json")):
        child_dir = child_status.parent
        child_workflow = child_dir / "workflow.json"
        child = json_object(child_workflow) if child_workflow.is_file() else {}
        child.setdefault("metadata", {}).setdefault("name", child_dir.name)
        child["status"] = json_object(child_status)
        children.append(child)
    return merge_children(workflow, children) if children else workflow


def continuation(run_dir: Path, name: str) -> Path | None:
    """The run beside ``run_dir`` (whose run is ``name``) that continues it, through every later resume:
    the last of the chain, the one to resume now; None when no run continues it."""
    continued_by: dict[str, Path] = {}  # run name → the run that continues it
    for workflow in sorted(run_dir.resolve().parent.glob("*/workflow.json")):
        try:
            manifest = json_object(workflow)
        except (OSError, ValueError):
            continue
        annotations = (manifest.get("metadata") or {}).get("annotations") or {}
        resumed = (
            annotations.get(RESUMES) or parameters_of(manifest).get("resume-from", "").rpartition("/")[2]
        )
        if resumed:
            continued_by.setdefault(str(resumed), workflow.parent)
    last: Path | None = None
    while name in continued_by:  # popped: a cycle of records ends too
        last = continued_by.pop(name)
        name = last.name
    return last
