"""Workflow of workflows: blocks of rounds as child Workflows (``cluster.rounds_per_workflow: N``).

Argo keeps every node of a Workflow in one Kubernetes object (1 MiB, see :mod:`.node_status`), so one
Workflow cannot hold 100 rounds of 1,000 client pods. With ``rounds_per_workflow`` the experiment compiles
to two manifests:

```
parent Workflow (steps)                     init, finalize and the exit handler as in one workflow
├── init
├── rounds                                  steps, failFast: no block after one that failed
│   └── rounds(0:0) … rounds(B-1:B-1)       withSequence over the blocks, one after another
│       └── rounds (resource, create)       a child Workflow, owned by the parent, labelled
│                                           argofl.io/parent=<parent> and argofl.io/rounds=<first>-<last>;
│                                           Succeeded / Failed when the child does
└── finalize
onExit: finish

child Workflow (workflowTemplateRef <config>-rounds: round(0:round F) … round(L-F:round L))
```

The child references the WorkflowTemplate ``<config>-rounds`` (``argo/templates/<config>-rounds.yaml``,
install it with the parent's template) rather than inlining its templates: Argo validates a resource
template's manifest as part of the parent, and the round templates' ``{{inputs.…}}``, ``{{tasks.…}}``
and ``{{item}}`` would not resolve there. The child's steps use the parent's run key (its parameter
``run-name``), so the store layout, MLflow run and checkpoints are the single workflow's.
Block boundaries are computed from ``rounds``, ``start-round`` and ``rounds-per-workflow`` when the
parent runs, so ``-p rounds=…`` and resubmissions from round N (the block holding N starts at N) work.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import yaml

from argofl.steps.labels import ROUND_FORMAT

__all__ = [
    "BLOCK_PARAMETER",
    "PARENT_LABEL",
    "ROUNDS_IN_ORDER",
    "ROUNDS_LABEL",
    "ROUNDS_TEMPLATE_SUFFIX",
    "block_size_problem",
    "split_rounds",
]

PARENT_LABEL = "argofl.io/parent"
ROUNDS_LABEL = "argofl.io/rounds"
ROUNDS_TEMPLATE_SUFFIX = "-rounds"
BLOCK_PARAMETER = "rounds-per-workflow"
RUN_NAME = "run-name"
ROUNDS_IN_ORDER = "rounds-in-order"
"""The steps template that runs the rounds one after another (the entrypoint's step ``rounds``)."""
_ROUND_STEP = "round"
_BLOCK_TEMPLATE = "rounds"


def _wp(name: str) -> str:
    return f"{{{{workflow.parameters.{name}}}}}"


def _int(name: str) -> str:
    return f"asInt(inputs.parameters.{name})"


_FIRST = f"{_int('start')} + {_int('block')} * {_int('size')}"
_LAST = f"{_int('start')} + ({_int('block')} + 1) * {_int('size')} - 1"
FIRST_ROUND = f"{{{{={_FIRST}}}}}"
LAST_ROUND = f"{{{{={_LAST} > {_int('rounds')} ? {_int('rounds')} : {_LAST}}}}}"
_SPAN = "(asInt(workflow.parameters.rounds) - asInt(workflow.parameters['start-round']))"
_SIZE = f"asInt(workflow.parameters['{BLOCK_PARAMETER}'])"
LAST_BLOCK = f"{{{{=({_SPAN} - {_SPAN} % {_SIZE}) / {_SIZE}}}}}"
"""The index of the last block (blocks count from 0): ``(rounds - start) // size`` in Argo's expr."""


def block_size_problem(parameters: Mapping[str, str]) -> str | None:
    """Why ``parameters``' ``rounds-per-workflow`` cannot run (one line), or None (also when absent)."""
    value = parameters.get(BLOCK_PARAMETER)
    if value is None or (value.strip().isdigit() and int(value) >= 1):
        return None
    return (
        f"parameter {BLOCK_PARAMETER}: expected a whole number of rounds ≥ 1 per child workflow, got "
        f"{value!r}; nothing was run"
    )


def _reachable(name: str, templates: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``name`` and every template its steps or tasks call, depth first."""
    seen: list[str] = []
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen or current not in templates:
            continue
        seen.append(current)
        tmpl = templates[current]
        calls = [s for group in tmpl.get("steps") or [] for s in group]
        calls += (tmpl.get("dag") or {}).get("tasks") or []
        todo.extend(str(c["template"]) for c in calls if "template" in c)
    return seen


def split_rounds(
    manifest: Mapping[str, Any], *, name: str, size: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The single-workflow ``manifest`` as (parent Workflow, child WorkflowTemplate ``<name>-rounds``)."""
    spec = manifest["spec"]
    templates = {str(t["name"]): t for t in spec["templates"]}
    top = templates[str(spec["entrypoint"])]
    entry = templates.get(ROUNDS_IN_ORDER)  # the steps template that loops over the rounds
    if entry is None:
        raise ValueError(f"the workflow has no template {ROUNDS_IN_ORDER!r} (the rounds' loop)")
    positions = [
        (i, j) for i, g in enumerate(entry["steps"]) for j, s in enumerate(g) if s["name"] == _ROUND_STEP
    ]
    if len(positions) != 1:
        raise ValueError(
            f"the template {entry['name']!r} has {len(positions)} steps named 'round', expected 1"
        )
    gi, si = positions[0]
    round_step = entry["steps"][gi][si]
    in_rounds = _reachable(str(round_step["template"]), templates)
    elsewhere = {
        n
        for t in templates.values()
        if t is not entry and t is not top and t["name"] not in in_rounds
        for n in _reachable(t["name"], templates)
    } | {
        n
        for holder in (top, entry)
        for g in holder["steps"]
        for s in g
        if s is not round_step and s["template"] != entry["name"]
        for n in _reachable(str(s["template"]), templates)
    }
    parameters = list((spec.get("arguments") or {}).get("parameters") or [])
    child_name = f"{name}{ROUNDS_TEMPLATE_SUFFIX}"

    # the child: the round templates, with the parent's run key, looping over its block
    child_templates = [copy.deepcopy(t) for t in spec["templates"] if t["name"] in in_rounds]
    text = json.dumps(child_templates).replace("{{workflow.name}}", _wp(RUN_NAME))
    child_entry = {
        "name": _BLOCK_TEMPLATE,
        "parallelism": 1,
        "failFast": True,
        "metadata": {"annotations": {"workflows.argoproj.io/description": "this block's rounds in order"}},
        "steps": [
            [
                {
                    **copy.deepcopy(round_step),
                    "withSequence": {
                        "start": _wp("first-round"),
                        "end": _wp("last-round"),
                        "format": ROUND_FORMAT,
                    },
                }
            ]
        ],
    }
    child_spec = {
        k: copy.deepcopy(v)
        for k, v in spec.items()
        if k not in ("templates", "entrypoint", "onExit", "arguments")
    }
    child_spec = {
        "entrypoint": _BLOCK_TEMPLATE,
        "templates": [*json.loads(text), child_entry],
        "arguments": {
            "parameters": [
                *copy.deepcopy(parameters),
                {"name": RUN_NAME, "value": "", "description": "the parent workflow: the run key's <run>"},
                {"name": "first-round", "value": "1", "description": "first round of this block"},
                {"name": "last-round", "value": "1", "description": "last round of this block"},
            ]
        },
        **child_spec,
    }
    metadata = manifest.get("metadata") or {}
    labels = dict(metadata.get("labels") or {})
    child = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "WorkflowTemplate",
        "metadata": {
            "name": child_name,
            "annotations": {
                "workflows.argoproj.io/description": f"A block of rounds of {name}, created by its parent "
                f"workflow (label {PARENT_LABEL}); steps use the parent's run key"
            },
            "labels": labels,
        },
        "spec": child_spec,
    }

    # the parent: init, a child Workflow per block, finalize
    workflow = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {
            "generateName": f"{{{{workflow.name}}}}-r{FIRST_ROUND}-",
            "labels": {
                **labels,
                PARENT_LABEL: "{{workflow.name}}",
                ROUNDS_LABEL: f"{FIRST_ROUND}-{LAST_ROUND}",
            },
        },
        "spec": {
            "workflowTemplateRef": {"name": child_name},
            "arguments": {
                "parameters": [
                    *({"name": p["name"], "value": _wp(p["name"])} for p in parameters),
                    {"name": RUN_NAME, "value": "{{workflow.name}}"},
                    {"name": "first-round", "value": FIRST_ROUND},
                    {"name": "last-round", "value": LAST_ROUND},
                ]
            },
        },
    }
    block_template = {
        "name": _BLOCK_TEMPLATE,
        "inputs": {"parameters": [{"name": n} for n in ("block", "start", "size", "rounds")]},
        "metadata": {
            "annotations": {
                "workflows.argoproj.io/description": f"Create the child Workflow of one block of rounds "
                f"(WorkflowTemplate {child_name}) and wait for it"
            }
        },
        "resource": {
            "action": "create",
            "setOwnerReference": True,
            "successCondition": "status.phase == Succeeded",
            "failureCondition": "status.phase in (Failed, Error)",
            "manifest": yaml.safe_dump(workflow, sort_keys=False, width=1 << 16),
        },
    }
    block_step = {
        "name": _BLOCK_TEMPLATE,
        "template": _BLOCK_TEMPLATE,
        "arguments": {
            "parameters": [
                {"name": "block", "value": "{{item}}"},
                {"name": "start", "value": _wp("start-round")},
                {"name": "size", "value": _wp(BLOCK_PARAMETER)},
                {"name": "rounds", "value": _wp("rounds")},
            ]
        },
        "withSequence": {"start": "0", "end": LAST_BLOCK},
    }
    parent_entry = copy.deepcopy(entry)
    parent_entry["steps"][gi][si] = block_step
    parent_entry["metadata"] = {
        "annotations": {
            "workflows.argoproj.io/description": "the blocks of rounds in order, a child Workflow each; none "
            "after one that failed"
        }
    }
    parent_templates = [
        parent_entry if t is entry else copy.deepcopy(t)
        for t in spec["templates"]
        if t is entry or t["name"] not in in_rounds or t["name"] in elsewhere
    ]
    parent_templates.insert(len(parent_templates) - 1, block_template)
    parent = copy.deepcopy(dict(manifest))
    parent["spec"]["templates"] = parent_templates
    parent["spec"]["arguments"] = {
        "parameters": [
            *copy.deepcopy(parameters),
            {
                "name": BLOCK_PARAMETER,
                "value": str(size),
                "description": "rounds per child Workflow (each block of rounds is one)",
            },
        ]
    }
    return parent, child
