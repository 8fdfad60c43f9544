"""Checks made before anything runs: the supported subset, the manifest's structure, the parameters.

:func:`check_supported` raises :class:`UnsupportedWorkflow` naming the first field outside the subset
(``spec.templates[2].suspend: suspend templates are not supported by the local executor``). Fields that
only matter on a cluster (image, resources, nodeSelector, tolerations, podGC, metrics, ...) are accepted
and ignored. :func:`check_structure` raises :class:`WorkflowInputError` for malformed manifests: unknown
templates, bad ``depends``, undeclared ``{{inputs.parameters.x}}``, entrypoint inputs without values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from argofl.pipelines.local.depends import resolve_depends
from argofl.pipelines.local.errors import ExpressionError, UnsupportedWorkflow, WorkflowInputError
from argofl.pipelines.local.expressions import format_value, parse
from argofl.pipelines.local.resource_spec import check_resource
from argofl.pipelines.local.templating import find_tags

__all__ = ["check_structure", "check_supported", "global_parameters", "spec_of"]

_REASON = "are not supported by the local executor"
_IS = "is not supported by the local executor"

_SPEC_UNSUPPORTED = {
    "volumeClaimTemplates": "volume claims need a cluster",
    "podSpecPatch": "a pod spec patch can change commands the local executor runs",
    "synchronization": "synchronization (mutexes, semaphores) needs the workflow controller",
    "workflowTemplateRef": "workflowTemplateRef needs the cluster's WorkflowTemplates; pass the manifest",
    "executorPlugins": "executor plugins need a cluster",
    "templateDefaults": "templateDefaults " + _IS,
}

_TEMPLATE_UNSUPPORTED = {
    "suspend": "suspend templates " + _REASON,
    "http": "http templates " + _REASON,
    "plugin": "plugin templates " + _REASON,
    "containerSet": "containerSet templates " + _REASON,
    "data": "data templates " + _REASON,
    "synchronization": "synchronization (mutexes, semaphores) needs the workflow controller",
    "memoize": "memoization needs the controller's ConfigMap cache",
    "podSpecPatch": "a pod spec patch can change commands the local executor runs",
    "initContainers": "init containers " + _REASON,
    "sidecars": "sidecars " + _REASON,
    "volumes": "volumes need a cluster; declare artifacts or parameters instead",
}

_CONTAINER_UNSUPPORTED = {
    "volumeDevices": "volume devices need a cluster",
    "envFrom": "envFrom (whole Secrets/ConfigMaps) " + _IS + "; list env entries instead",
    "lifecycle": "container lifecycle hooks " + _REASON,
}

_ARTIFACT_LOCATIONS = ("artifactory", "azure", "gcs", "git", "hdfs", "http", "oss", "plugin")


def _fail(path: str, reason: str) -> UnsupportedWorkflow:
    return UnsupportedWorkflow(f"{path}: {reason}")


def spec_of(manifest: Mapping[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(kind, metadata, spec) of a Workflow or WorkflowTemplate manifest."""
    if not isinstance(manifest, Mapping):
        raise WorkflowInputError(
            f"manifest: expected a mapping (an Argo Workflow), got {type(manifest).__name__}"
        )
    kind = str(manifest.get("kind") or "Workflow")
    if kind not in ("Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate"):
        raise WorkflowInputError(f"kind: {kind!r} is not a Workflow or WorkflowTemplate")
    spec = manifest.get("spec")
    if not isinstance(spec, Mapping):
        raise WorkflowInputError("spec: missing; an Argo Workflow needs spec.entrypoint and spec.templates")
    metadata = manifest.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise WorkflowInputError("metadata: expected a mapping")
    return kind, dict(metadata), dict(spec)


def _check_artifact(art: Mapping[str, Any], path: str) -> None:
    for loc in _ARTIFACT_LOCATIONS:
        if art.get(loc) is not None:
            raise _fail(
                f"{path}.{loc}", f"{loc} artifacts {_REASON}; use s3 keys (the local store) or raw data"
            )
    if art.get("fromExpression"):
        raise _fail(f"{path}.fromExpression", "fromExpression " + _IS + "; use from")
    if art.get("subPath"):
        raise _fail(f"{path}.subPath", "artifact subPath " + _IS)
    archive = art.get("archive")
    if isinstance(archive, Mapping) and "zip" in archive:
        raise _fail(f"{path}.archive.zip", "zip archives " + _REASON + "; use tar (the default) or none")


def _check_hooks(hooks: Any, path: str) -> None:
    if not hooks:
        return
    if not isinstance(hooks, Mapping):
        raise WorkflowInputError(f"{path}: expected a mapping of lifecycle hooks")
    for name, hook in hooks.items():
        if name != "exit":
            raise _fail(f"{path}.{name}", "lifecycle hooks other than exit " + _REASON)
        if isinstance(hook, Mapping) and hook.get("templateRef"):
            raise _fail(f"{path}.{name}.templateRef", "templateRef needs the cluster's WorkflowTemplates")


def _empty_dirs(spec: Mapping[str, Any]) -> set[str]:
    """Names of ``spec.volumes``; only ``emptyDir`` volumes are accepted.

    An emptyDir mount (typically ``/tmp`` beside ``readOnlyRootFilesystem``) is scratch space; on one
    host its mount path is simply the host's path, so the mount itself is ignored.
    """
    names = set()
    for i, vol in enumerate(spec.get("volumes") or []):
        if not isinstance(vol, Mapping) or set(vol) - {"name", "emptyDir"} or "emptyDir" not in vol:
            raise _fail(f"spec.volumes[{i}]", "only emptyDir volumes are supported by the local executor")
        names.add(str(vol.get("name")))
    return names


def _check_mounts(ctr: Mapping[str, Any], path: str, empty_dirs: frozenset[str]) -> None:
    for i, mount in enumerate(ctr.get("volumeMounts") or []):
        name = mount.get("name") if isinstance(mount, Mapping) else None
        if name not in empty_dirs:
            raise _fail(
                f"{path}.volumeMounts[{i}]",
                f"volume {name!r} is not an emptyDir of spec.volumes; only emptyDir mounts are supported",
            )


def _check_container(ctr: Mapping[str, Any], path: str, script: bool, empty_dirs: frozenset[str]) -> None:
    for field, reason in _CONTAINER_UNSUPPORTED.items():
        if ctr.get(field):
            raise _fail(f"{path}.{field}", reason)
    _check_mounts(ctr, path, empty_dirs)
    if not ctr.get("command"):
        raise _fail(
            f"{path}.command",
            "a container without command runs its image's entrypoint, which the local "
            "executor cannot know; give the command explicitly",
        )
    for i, env in enumerate(ctr.get("env") or []):
        source = env.get("valueFrom") if isinstance(env, Mapping) else None
        if source:
            for kind in source:
                if kind not in ("secretKeyRef", "configMapKeyRef", "fieldRef"):
                    raise _fail(f"{path}.env[{i}].valueFrom.{kind}", f"env valueFrom.{kind} {_IS}")
    probe = ctr.get("readinessProbe")
    if isinstance(probe, Mapping) and not any(k in probe for k in ("httpGet", "tcpSocket", "exec")):
        raise _fail(
            f"{path}.readinessProbe", "only httpGet, tcpSocket and exec readiness probes are supported"
        )


def _check_step(step: Mapping[str, Any], path: str, empty_dirs: frozenset[str]) -> None:
    if step.get("templateRef"):
        raise _fail(
            f"{path}.templateRef", "templateRef needs the cluster's WorkflowTemplates; inline the template"
        )
    _check_hooks(step.get("hooks"), f"{path}.hooks")
    for j, art in enumerate((step.get("arguments") or {}).get("artifacts") or []):
        _check_artifact(art, f"{path}.arguments.artifacts[{j}]")
    if isinstance(step.get("inline"), Mapping):
        _check_template(step["inline"], f"{path}.inline", empty_dirs)


def _check_template(tmpl: Mapping[str, Any], path: str, empty_dirs: frozenset[str]) -> None:
    for field, reason in _TEMPLATE_UNSUPPORTED.items():
        if tmpl.get(field) is not None and tmpl.get(field) != []:
            raise _fail(f"{path}.{field}", reason)
    if tmpl.get("resource") is not None:
        check_resource(tmpl["resource"], f"{path}.resource")
    for kind in ("container", "script"):
        if isinstance(tmpl.get(kind), Mapping):
            _check_container(tmpl[kind], f"{path}.{kind}", kind == "script", empty_dirs)
    inputs = tmpl.get("inputs") or {}
    for i, param in enumerate(inputs.get("parameters") or []):
        if (param.get("valueFrom") or {}).get("configMapKeyRef"):
            raise _fail(
                f"{path}.inputs.parameters[{i}].valueFrom.configMapKeyRef",
                "input parameters from ConfigMaps " + _REASON,
            )
    for i, art in enumerate(inputs.get("artifacts") or []):
        _check_artifact(art, f"{path}.inputs.artifacts[{i}]")
    outputs = tmpl.get("outputs") or {}
    for i, param in enumerate(outputs.get("parameters") or []):
        for field in ("jqFilter", "jsonPath", "event", "supplied", "configMapKeyRef"):
            if (param.get("valueFrom") or {}).get(field) is not None:
                raise _fail(f"{path}.outputs.parameters[{i}].valueFrom.{field}", f"valueFrom.{field} {_IS}")
    for i, art in enumerate(outputs.get("artifacts") or []):
        _check_artifact(art, f"{path}.outputs.artifacts[{i}]")
    for g, group in enumerate(tmpl.get("steps") or []):
        for s, step in enumerate(group if isinstance(group, list) else []):
            _check_step(step, f"{path}.steps[{g}][{s}]", empty_dirs)
    for t, task in enumerate((tmpl.get("dag") or {}).get("tasks") or []):
        _check_step(task, f"{path}.dag.tasks[{t}]", empty_dirs)


def check_supported(spec: Mapping[str, Any]) -> None:
    """Raise :class:`UnsupportedWorkflow` for the first field outside the supported subset."""
    for field, reason in _SPEC_UNSUPPORTED.items():
        if spec.get(field):
            raise _fail(f"spec.{field}", reason)
    if spec.get("suspend"):
        raise _fail("spec.suspend", "suspended workflows " + _REASON)
    _check_hooks(spec.get("hooks"), "spec.hooks")
    empty_dirs = frozenset(_empty_dirs(spec))
    for i, art in enumerate((spec.get("arguments") or {}).get("artifacts") or []):
        _check_artifact(art, f"spec.arguments.artifacts[{i}]")
    for i, tmpl in enumerate(spec.get("templates") or []):
        if isinstance(tmpl, Mapping):
            _check_template(tmpl, f"spec.templates[{i}]", empty_dirs)


def global_parameters(spec: Mapping[str, Any], overrides: Mapping[str, str] | None) -> list[dict[str, Any]]:
    """``spec.arguments.parameters`` with ``-p`` overrides applied; unknown names are an error."""
    declared = [dict(p) for p in (spec.get("arguments") or {}).get("parameters") or []]
    names = [str(p.get("name")) for p in declared]
    for name, value in (overrides or {}).items():
        if name not in names:
            known = ", ".join(names) or "none"
            raise WorkflowInputError(f"unknown parameter {name!r}: the workflow declares {known}")
        for p in declared:
            if p.get("name") == name:
                p["value"] = str(value)
                p.pop("valueFrom", None)
    for i, p in enumerate(declared):
        if p.get("value") is None:
            default = (p.get("valueFrom") or {}).get("default", p.get("default"))
            if default is None:
                raise WorkflowInputError(
                    f"spec.arguments.parameters[{i}] ({p.get('name')}): no value; pass "
                    f"-p {p.get('name')}=VALUE"
                )
            p["value"] = default
            p.pop("valueFrom", None)
        p["value"] = format_value(p["value"])
        enum = p.get("enum")
        if enum and p["value"] not in [format_value(e) for e in enum]:
            raise WorkflowInputError(
                f"parameter {p.get('name')!r}: value {p['value']!r} is not one of the allowed "
                f"values {[format_value(e) for e in enum]}"
            )
    return declared


_INPUT_REF = re.compile(r"^inputs\.parameters\.([^.\s]+)$")


def _strings(obj: Any) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, Mapping):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []


def _check_refs(tmpl: Mapping[str, Any], path: str, wf_params: set[str]) -> None:
    declared = {str(p.get("name")) for p in (tmpl.get("inputs") or {}).get("parameters") or []}
    for text in _strings({k: v for k, v in tmpl.items() if k != "name"}):
        for _, _, tag in find_tags(text):
            if tag.startswith("="):
                try:
                    parse(tag[1:].strip(), "expr")
                except ExpressionError as exc:
                    raise WorkflowInputError(f"{path}: bad expression {{{{{tag}}}}}: {exc}") from None
                continue
            name = tag.strip()
            match = _INPUT_REF.match(name)
            if match and match.group(1) not in declared:
                raise WorkflowInputError(
                    f"{path}: failed to resolve {{{{{name}}}}}: the template declares no input "
                    f"parameter {match.group(1)!r}"
                )
            if (
                name.startswith("workflow.parameters.")
                and name[len("workflow.parameters.") :] not in wf_params
            ):
                raise WorkflowInputError(
                    f"{path}: failed to resolve {{{{{name}}}}}: spec.arguments declares no "
                    f"parameter {name[len('workflow.parameters.') :]!r}"
                )


def _check_call(step: Mapping[str, Any], path: str, templates: Mapping[str, Mapping[str, Any]]) -> None:
    name = step.get("name")
    if not name:
        raise WorkflowInputError(f"{path}.name: every step and task needs a name")
    if isinstance(step.get("inline"), Mapping):
        return
    target = step.get("template")
    if not target:
        raise WorkflowInputError(f"{path}: step/task {name!r} names no template")
    if target not in templates:
        raise WorkflowInputError(f"{path}.template: template {target!r} not found")
    args = {str(p.get("name")) for p in (step.get("arguments") or {}).get("parameters") or []}
    for p in (templates[target].get("inputs") or {}).get("parameters") or []:
        has_value = (
            p.get("value") is not None or p.get("default") is not None or p.get("valueFrom") is not None
        )
        if not has_value and str(p.get("name")) not in args:
            raise WorkflowInputError(
                f"{path}: inputs.parameters.{p.get('name')} was not supplied to template "
                f"{target!r} by step/task {name!r}"
            )
    for hook_name, hook in (step.get("hooks") or {}).items():
        if hook.get("template") not in templates:
            raise WorkflowInputError(
                f"{path}.hooks.{hook_name}.template: template {hook.get('template')!r} not found"
            )


def check_structure(spec: Mapping[str, Any], params: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Validate templates, references and ``depends``; return the templates by name."""
    templates_list = spec.get("templates")
    if not isinstance(templates_list, list) or not templates_list:
        raise WorkflowInputError("spec.templates: a workflow needs at least one template")
    templates: dict[str, dict[str, Any]] = {}
    for i, tmpl in enumerate(templates_list):
        if not isinstance(tmpl, Mapping) or not tmpl.get("name"):
            raise WorkflowInputError(f"spec.templates[{i}].name: every template needs a name")
        if tmpl["name"] in templates:
            raise WorkflowInputError(
                f"spec.templates[{i}].name: template name {tmpl['name']!r} is used twice"
            )
        kinds = [k for k in ("container", "script", "steps", "dag", "resource") if tmpl.get(k) is not None]
        if len(kinds) != 1:
            raise WorkflowInputError(
                f"spec.templates[{i}] ({tmpl['name']}): a template needs exactly one of "
                f"container, script, steps, dag or resource, found {kinds or 'none'}"
            )
        templates[str(tmpl["name"])] = dict(tmpl)
    entry = spec.get("entrypoint")
    if not entry:
        raise WorkflowInputError("spec.entrypoint: missing; name the template to run first")
    if entry not in templates:
        raise WorkflowInputError(f"spec.entrypoint: template {entry!r} not found")
    for key in ("onExit",):
        if spec.get(key) and spec[key] not in templates:
            raise WorkflowInputError(f"spec.{key}: template {spec[key]!r} not found")
    exit_hook = (spec.get("hooks") or {}).get("exit")
    if exit_hook and exit_hook.get("template") not in templates:
        raise WorkflowInputError(
            f"spec.hooks.exit.template: template {exit_hook.get('template')!r} not found"
        )
    wf_params = {str(p.get("name")) for p in params}
    supplied = {str(p.get("name")) for p in params}
    for p in (templates[entry].get("inputs") or {}).get("parameters") or []:
        if p.get("value") is None and p.get("default") is None and str(p.get("name")) not in supplied:
            raise WorkflowInputError(
                f"inputs.parameters.{p.get('name')} was not supplied: entrypoint {entry!r} needs "
                f"it; add it to spec.arguments or pass -p {p.get('name')}=VALUE"
            )
    for i, tmpl in enumerate(templates_list):
        path = f"spec.templates[{i}] ({tmpl['name']})"
        _check_refs(tmpl, path, wf_params)
        steps = tmpl.get("steps")
        if steps is not None:
            if not isinstance(steps, list):
                raise WorkflowInputError(f"{path}.steps: expected a list of step groups")
            for g, group in enumerate(steps):
                if not isinstance(group, list):
                    raise WorkflowInputError(f"{path}.steps[{g}]: expected a list of steps (a step group)")
                for s, step in enumerate(group):
                    _check_call(step, f"{path}.steps[{g}][{s}]", templates)
        dag = tmpl.get("dag")
        if dag is not None:
            tasks = dag.get("tasks") or []
            by_name: dict[str, Mapping[str, Any]] = {}
            for t, task in enumerate(tasks):
                _check_call(task, f"{path}.dag.tasks[{t}]", templates)
                if task["name"] in by_name:
                    raise WorkflowInputError(
                        f"{path}.dag.tasks[{t}].name: task name {task['name']!r} is used twice"
                    )
                by_name[task["name"]] = task
            for t, task in enumerate(tasks):
                resolve_depends(task, by_name, f"{path}.dag.tasks[{t}]")
            target = dag.get("target")
            if target and "{{" not in str(target):
                for name in str(target).split():
                    if name not in by_name:
                        raise WorkflowInputError(f"{path}.dag.target: task {name!r} not found")
            _check_cycles(by_name, path)
    return templates


def _check_cycles(tasks: Mapping[str, Mapping[str, Any]], path: str) -> None:
    deps = {name: resolve_depends(task, tasks, path).dependencies for name, task in tasks.items()}
    state: dict[str, int] = {}

    def visit(name: str, chain: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise WorkflowInputError(f"{path}.dag: dependency cycle {' -> '.join([*chain, name])}")
        state[name] = 1
        for dep in deps[name]:
            visit(dep, [*chain, name])
        state[name] = 2

    for name in tasks:
        visit(name, [])
