"""Workflow manifests' parameters: reading them, ``-p`` overrides and resubmission.

``-p NAME=VALUE`` has one implementation for ``argofl run``, ``submit``, ``resubmit``, ``local run`` and
the Python API: :data:`overrides_option` parses it (``steps.name_value``), :func:`check_overrides` refuses
a name the workflow does not declare and, for an argofl experiment, a value its kind refuses, with the
same one line everywhere (:class:`ParameterError`, exit code 2).
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import click

from argofl.pipelines.blocks import block_size_problem
from argofl.pipelines.kinds import manifest_kind
from argofl.steps.errors import BadInputError
from argofl.steps.name_value import NameValue, to_dict
from argofl.steps.settings import SettingsError, param_name

__all__ = [
    "ParameterError",
    "ResumeError",
    "apply_overrides",
    "check_overrides",
    "merge_children",
    "outputs_of",
    "overrides_option",
    "parameters_of",
    "resubmission_manifest",
    "resume_problem",
    "set_parameters",
]

NOTHING_STARTED = "nothing was started"


class ParameterError(BadInputError, ValueError):
    """A ``-p`` name the workflow does not declare, or a value it cannot take (one line, exit code 2)."""


class ResumeError(BadInputError, ValueError):
    """A workflow that cannot continue from a later round (its templates ignore the resume parameters)."""


def overrides_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``-p/--parameter NAME=VALUE`` (repeatable), parsed into a dict, as with ``argo submit -p``; the
    command checks it against its workflow with :func:`check_overrides`."""
    return click.option(
        "-p",
        "--parameter",
        "overrides",
        multiple=True,
        type=NameValue(),
        callback=lambda ctx, param, pairs: to_dict(pairs, option="-p/--parameter"),
        metavar="NAME=VALUE",
        help="Set a workflow parameter, e.g. -p rounds=20 (as with argo submit); repeatable.",
    )(command)


def check_overrides(manifest: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, str]:
    """``overrides`` as the workflow's parameter values; raises :class:`ParameterError` for a name the
    workflow does not declare and, for an argofl experiment, for a value its kind refuses.

    A setting may be spelled as in a config (``min_clients``) where the workflow declares its
    parameter (``min-clients``), but not both ways with different values."""
    declared = parameters_of(manifest)
    given: dict[str, str] = {}
    for raw, value in overrides.items():
        name = _declared_spelling(str(raw), declared)
        if name in given and given[name] != str(value):
            raise ParameterError(
                f"{name} is given twice, as {given[name]!r} and {str(value)!r}; {NOTHING_STARTED}"
            )
        given[name] = str(value)
    kind = manifest_kind(manifest)
    if kind is not None:
        try:
            kind.check_parameters({**declared, **given}, where="parameters", given=given)
        except SettingsError as exc:
            raise ParameterError(f"{exc}; {NOTHING_STARTED}") from None
    problem = block_size_problem(given)
    if problem is not None:
        raise ParameterError(problem)
    return given


def _declared_spelling(name: str, declared: Mapping[str, str]) -> str:
    if name in declared:
        return name
    if param_name(name) in declared:
        return param_name(name)
    close = difflib.get_close_matches(name, list(declared), n=1)
    hint = f" did you mean {close[0]!r}?" if close else ""
    raise ParameterError(
        f"unknown workflow parameter {name!r};{hint} valid: {', '.join(declared) or '(none)'}; "
        f"{NOTHING_STARTED}"
    )


def apply_overrides(manifest: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set the ``-p`` values on ``manifest`` (in place; returned) after :func:`check_overrides`."""
    return set_parameters(manifest, check_overrides(manifest, overrides))


def parameters_of(workflow: Mapping[str, Any]) -> dict[str, str]:
    """``spec.arguments.parameters`` as name → value (missing values as '')."""
    params = ((workflow.get("spec") or {}).get("arguments") or {}).get("parameters") or []
    return {str(p["name"]): "" if p.get("value") is None else str(p["value"]) for p in params}


def merge_children(workflow: Mapping[str, Any], children: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``workflow`` with the nodes of the Workflows it created in its ``status.nodes`` (node ids are unique
    across workflows: they start with the workflow's name), so rounds, steps and the last completed
    round read as in one workflow; ``status.children`` lists the children's names and phases."""
    merged = copy.deepcopy(dict(workflow))
    status = dict(merged.get("status") or {})
    nodes = dict(status.get("nodes") or {})
    for child in children:
        nodes.update((child.get("status") or {}).get("nodes") or {})
    status["nodes"] = nodes
    status["children"] = [
        {
            "name": str((c.get("metadata") or {}).get("name") or ""),
            "phase": str((c.get("status") or {}).get("phase") or "Pending"),
        }
        for c in children
    ]
    merged["status"] = status
    return merged


def outputs_of(status: Mapping[str, Any]) -> dict[str, str]:
    """The workflow's global outputs (``status.outputs.parameters``: mlflow-run-url, final-accuracy, …)."""
    params = ((status.get("outputs") or {}).get("parameters")) or []
    return {str(p["name"]): str(p.get("value") or "") for p in params if p.get("name")}


def set_parameters(
    workflow: dict[str, Any], values: Mapping[str, str], *, add: Iterable[str] = ()
) -> dict[str, Any]:
    """Set parameter values in ``workflow`` (in place; returned). Names not declared raise KeyError,
    except those in ``add``, which are appended when missing."""
    arguments = workflow.setdefault("spec", {}).setdefault("arguments", {})
    params: list[dict[str, Any]] = arguments.setdefault("parameters", [])
    by_name = {p["name"]: p for p in params}
    addable = set(add)
    for name, value in values.items():
        if name in by_name:
            by_name[name]["value"] = str(value)
        elif name in addable:
            entry = {"name": name, "value": str(value)}
            params.append(entry)
            by_name[name] = entry
        else:
            raise KeyError(name)
    return workflow


_KEEP_ANNOTATIONS = ("workflows.argoproj.io/description", "workflows.argoproj.io/title")


_RESUME_PARAMETERS = ("start-round", "resume-from")


def resume_problem(workflow: Mapping[str, Any]) -> str | None:
    """Why ``workflow`` cannot continue from a later round (None when it can).

    It can when its templates use the ``start-round`` and ``resume-from`` parameters (the round loop
    starts at one, init copies the earlier run's state from the other); setting them on a workflow that
    ignores them would silently rerun it from round 1."""
    templates = json.dumps((workflow.get("spec") or {}).get("templates") or [])
    missing = [p for p in _RESUME_PARAMETERS if "{{workflow.parameters." + p + "}}" not in templates]
    if not missing:
        return None
    name = (workflow.get("metadata") or {}).get("name") or "the workflow"
    return (
        f"{name} cannot resume from a later round: its templates do not use the parameter(s) "
        f"{', '.join(missing)} (a kind that cannot resume, or compiled by an older argofl); "
        "nothing was submitted; recompile its config and submit it again"
    )


def resubmission_manifest(old: Mapping[str, Any], start_round: int, resume_from: str) -> dict[str, Any]:
    """A new workflow from ``old``'s spec continuing at ``start_round`` from run ``resume_from``.

    Keeps the user's labels and annotations (not the ones the controller manages), drops ``status`` and
    server-assigned metadata, and uses ``generateName`` so the server picks a fresh name. A workflow that
    cannot resume (:func:`resume_problem`) raises :class:`ResumeError`."""
    problem = resume_problem(old)
    if problem is not None:
        raise ResumeError(problem)
    meta = old.get("metadata") or {}
    name = str(meta.get("name") or "")
    generate = meta.get("generateName") or (re.sub(r"-[a-z0-9]{5}$", "", name) + "-" if name else "argofl-")
    labels = {
        k: v for k, v in (meta.get("labels") or {}).items() if not k.startswith("workflows.argoproj.io/")
    }
    annotations = {
        k: v
        for k, v in (meta.get("annotations") or {}).items()
        if not k.startswith("workflows.argoproj.io/") or k in _KEEP_ANNOTATIONS
    }
    new_meta: dict[str, Any] = {"generateName": generate}
    if labels:
        new_meta["labels"] = labels
    if annotations:
        new_meta["annotations"] = annotations
    manifest: dict[str, Any] = {
        "apiVersion": old.get("apiVersion") or "argoproj.io/v1alpha1",
        "kind": old.get("kind") or "Workflow",
        "metadata": new_meta,
        "spec": copy.deepcopy(dict(old.get("spec") or {})),
    }
    set_parameters(
        manifest,
        {"start-round": str(start_round), "resume-from": resume_from},
        add=_RESUME_PARAMETERS,
    )
    return manifest
