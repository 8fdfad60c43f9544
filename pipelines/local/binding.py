"""Template binding: a call's arguments bound to the template's inputs (Argo's ``ProcessArgs``).

Input parameters take the argument's value, else their own ``value``/``default`` (an ``enum`` is
checked); input artifacts take the argument's location but keep the template's ``path``, ``mode`` and
``recurseMode`` (and its ``archive`` unless the argument sets one). ``{{...}}`` is then substituted in two
passes: globals and node-local variables, then the template's own ``inputs.*`` and ``outputs.*.path``
variables.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from argofl.pipelines.local.artifacts import has_location
from argofl.pipelines.local.errors import WorkflowInputError
from argofl.pipelines.local.expressions import format_value, go_json
from argofl.pipelines.local.templating import NONE, substitute, substitute_obj

__all__ = ["find_template", "process_args"]


def find_template(
    templates: Mapping[str, dict[str, Any]], ref: str | dict[str, Any]
) -> dict[str, Any] | None:
    """The template a call names (an inline template is itself)."""
    if isinstance(ref, dict):
        return ref
    return templates.get(ref)


def process_args(
    tmpl_raw: Mapping[str, Any],
    arguments: Mapping[str, Any],
    local: Mapping[str, str],
    gscope: Mapping[str, Any],
) -> dict[str, Any]:
    """Bind arguments to inputs and substitute globals, locals and inputs (Argo's ``ProcessArgs``)."""
    tmpl = copy.deepcopy(dict(tmpl_raw))
    inputs = tmpl.get("inputs") or {}
    arg_params = {str(p.get("name")): p for p in arguments.get("parameters") or []}
    arg_arts = {str(a.get("name")): a for a in arguments.get("artifacts") or []}
    params: list[dict[str, Any]] = []
    for p in inputs.get("parameters") or []:
        p = dict(p)
        value = p.get("value")
        if value is None and p.get("default") is not None:
            value = p["default"]
        supplied = arg_params.get(str(p.get("name")))
        if supplied is not None and supplied.get("value") is not None:
            value = supplied["value"]
        if value is None:
            raise WorkflowInputError(f"inputs.parameters.{p.get('name')} was not supplied")
        value = substitute(format_value(value), gscope, NONE)
        enum = p.get("enum")
        if enum and value not in [format_value(e) for e in enum]:
            raise WorkflowInputError(
                f"inputs.parameters.{p.get('name')}: value {value!r} is not one of "
                f"{[format_value(e) for e in enum]}"
            )
        p["value"] = value
        params.append(p)
    arts: list[dict[str, Any]] = []
    for a in inputs.get("artifacts") or []:
        given = arg_arts.get(str(a.get("name")))
        if given is not None:
            merged = {k: v for k, v in given.items() if k not in ("from", "globalName")}
            merged["name"] = a["name"]
            for key in ("path", "mode", "recurseMode"):
                if key in a:
                    merged[key] = a[key]
                else:
                    merged.pop(key, None)
            if a.get("optional") or given.get("optional"):
                merged["optional"] = True
            if "archive" in a and "archive" not in merged:
                merged["archive"] = a["archive"]
            arts.append(merged)
        else:
            if not a.get("optional") and not has_location(a):
                raise WorkflowInputError(f"inputs.artifacts.{a.get('name')} was not supplied")
            arts.append(dict(a))
    if params or arts:
        tmpl["inputs"] = {k: v for k, v in (("parameters", params), ("artifacts", arts)) if v}
    scope: dict[str, Any] = {**gscope, **local}
    tmpl = substitute_obj(tmpl, scope, NONE)
    for p in (tmpl.get("inputs") or {}).get("parameters") or []:
        scope[f"inputs.parameters.{p['name']}"] = str(p["value"])
    scope["inputs.parameters"] = go_json((tmpl.get("inputs") or {}).get("parameters") or [])
    for a in (tmpl.get("inputs") or {}).get("artifacts") or []:
        if a.get("path"):
            scope[f"inputs.artifacts.{a['name']}.path"] = a["path"]
    for a in (tmpl.get("outputs") or {}).get("artifacts") or []:
        if a.get("path"):
            scope[f"outputs.artifacts.{a['name']}.path"] = a["path"]
    for p in (tmpl.get("outputs") or {}).get("parameters") or []:
        if (p.get("valueFrom") or {}).get("path"):
            scope[f"outputs.parameters.{p['name']}.path"] = p["valueFrom"]["path"]
    return dict(substitute_obj(tmpl, scope, NONE))
