"""Variables a steps/DAG template sees: node references, aggregated loop outputs and loop items.

Mirrors Argo's ``buildLocalScope``, ``processAggregateNodeOutputs``, ``processItem`` and
``expandSequence``: ``steps.X.status``/``.id``/``.ip``/``.startedAt``/``.finishedAt``/``.exitCode``,
``steps.X.outputs.result|parameters.P|artifacts.A``; for a loop, ``outputs.result`` is a JSON list of each
succeeded child's result (parsed as JSON when it parses), ``outputs.parameters`` a JSON list of maps and
``outputs.parameters.P`` a JSON list of values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from argofl.pipelines.local.errors import WorkflowInputError
from argofl.pipelines.local.expressions import format_value, go_json
from argofl.pipelines.local.model import Node, Phase, rfc3339

__all__ = [
    "Scope",
    "aggregate_outputs",
    "expand_loop",
    "item_name",
    "item_scope",
    "loop_item",
    "node_scope",
]


@dataclass
class Scope:
    """Flat parameter values (``steps.a.outputs.result`` -> text) and artifacts (name -> artifact)."""

    params: dict[str, str | None] = field(default_factory=dict)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def copy(self) -> Scope:
        return Scope(dict(self.params), dict(self.artifacts))

    def update(self, other: Scope) -> None:
        self.params.update(other.params)
        self.artifacts.update(other.artifacts)


def node_scope(prefix: str, node: Node, outputs_from: Node | None = None) -> Scope:
    """What ``{{<prefix>.*}}`` resolves to for ``node`` (outputs taken from ``outputs_from`` if given)."""
    src = outputs_from or node
    scope = Scope()
    p = scope.params
    p[f"{prefix}.id"] = src.id
    p[f"{prefix}.startedAt"] = (rfc3339(src.started_at) or "")[:19] + "Z"
    if src.finished_at is not None:
        p[f"{prefix}.finishedAt"] = (rfc3339(src.finished_at) or "")[:19] + "Z"
    if src.pod_ip:
        p[f"{prefix}.ip"] = src.pod_ip
    p[f"{prefix}.status"] = node.phase
    outputs = src.outputs or {}
    if "result" in outputs:
        p[f"{prefix}.outputs.result"] = outputs["result"]
    if "exitCode" in outputs:
        p[f"{prefix}.exitCode"] = outputs["exitCode"]
        p[f"{prefix}.outputs.exitCode"] = outputs["exitCode"]
    for param in outputs.get("parameters") or []:
        if param.get("value") is not None:
            p[f"{prefix}.outputs.parameters.{param['name']}"] = str(param["value"])
    for art in outputs.get("artifacts") or []:
        scope.artifacts[f"{prefix}.outputs.artifacts.{art['name']}"] = art
    return scope


_LOOP_CHILD = re.compile(r"\((\d+):([^()]*)\)$")
"""The ``(i:item)`` that ends a loop child's name (:func:`item_name`; the item has no parentheses)."""


def _loop_index(name: str) -> int:
    match = _LOOP_CHILD.search(name) or re.search(r"\((\d+):", name)
    return int(match.group(1)) if match else 0


def aggregate_outputs(prefix: str, children: Iterable[Node]) -> dict[str, str]:
    """Aggregated ``<prefix>.outputs.result`` / ``.outputs.parameters[.P]`` of a loop's children."""
    nodes = sorted((n for n in children if not n.hooked and not n.retried), key=lambda n: _loop_index(n.name))
    results: list[Any] = []
    param_maps: list[dict[str, str]] = []
    values: dict[str, list[str]] = {}
    any_outputs = False
    for node in nodes:
        if node.outputs is None or node.phase != Phase.SUCCEEDED:
            continue
        any_outputs = True
        params = node.outputs.get("parameters") or []
        if params:
            entry: dict[str, str] = {}
            for param in params:
                value = str(param.get("value", ""))
                entry[param["name"]] = value
                values.setdefault(param["name"], []).append(value)
            param_maps.append(entry)
        if "result" in node.outputs:
            text = node.outputs["result"]
            try:
                results.append(json.loads(text))
            except (json.JSONDecodeError, TypeError):
                results.append(text)
    out: dict[str, str] = {}
    if not nodes:
        return out
    out[f"{prefix}.outputs.result"] = go_json(results)
    out[f"{prefix}.outputs.parameters"] = go_json(param_maps)
    for name, vals in values.items():
        out[f"{prefix}.outputs.parameters.{name}"] = _aggregated_values(vals)
    del any_outputs
    return out


def _aggregated_values(values: list[str]) -> str:
    parsed: list[Any] = []
    for value in values:
        try:
            item = json.loads(value)
        except json.JSONDecodeError:
            return go_json(values)
        if not isinstance(item, list | dict):
            return go_json(values)
        parsed.append(item)
    return go_json(parsed)


MAX_SEQUENCE_ITEMS = 100_000
"""Most items one ``withSequence`` expands to: every item becomes a node held in memory (and in the
status), so ``count: 100000000`` would fill the machine's memory before anything ran."""


def _expand_sequence(seq: Mapping[str, Any], where: str) -> list[Any]:
    def number(key: str) -> int:
        raw = seq.get(key)
        try:
            return int(str(raw).strip())
        except ValueError:
            raise WorkflowInputError(f"{where}.withSequence.{key}: {raw!r} is not an integer") from None

    start = number("start") if seq.get("start") not in (None, "") else 0
    if seq.get("end") not in (None, ""):
        end = number("end")
    elif seq.get("count") not in (None, ""):
        count = number("count")
        if count == 0:
            return []
        end = start + count - 1
    else:
        raise WorkflowInputError(f"{where}.withSequence: neither end nor count was specified")
    if abs(end - start) + 1 > MAX_SEQUENCE_ITEMS:
        raise WorkflowInputError(
            f"{where}.withSequence: {abs(end - start) + 1} items ({start}..{end}), more than the "
            f"{MAX_SEQUENCE_ITEMS} one loop may have (each item is a node); nothing was run for it"
        )
    fmt = str(seq.get("format") or "%d")
    step = 1 if start <= end else -1
    items: list[Any] = []
    for i in range(start, end + step, step):
        try:
            items.append(fmt % i)
        except (TypeError, ValueError):
            raise WorkflowInputError(
                f"{where}.withSequence.format: {fmt!r} is not a printf format for an integer"
            ) from None
    return items


def expand_loop(step: Mapping[str, Any], where: str) -> list[Any] | None:
    """The items of a loop (``None`` when the step has no withItems, withParam or withSequence)."""
    if step.get("withItems") is not None and step.get("withItems") != []:
        items = step["withItems"]
        if not isinstance(items, list):
            raise WorkflowInputError(f"{where}.withItems: expected a list, got {items!r}")
        return list(items)
    if step.get("withParam") not in (None, ""):
        raw = step["withParam"]
        if isinstance(raw, list):
            return raw
        try:
            items = json.loads(str(raw))
        except json.JSONDecodeError as exc:
            raise WorkflowInputError(
                f"withParam value could not be parsed as a JSON list: {str(raw).strip()}: {exc.msg}"
            ) from None
        if not isinstance(items, list):
            raise WorkflowInputError(
                f"withParam value could not be parsed as a JSON list: {str(raw).strip()}"
            )
        return items
    if step.get("withSequence") is not None:
        return _expand_sequence(step["withSequence"], where)
    if "withItems" in step:
        return []
    return None


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return "map[" + " ".join(f"{k}:{_describe(v)}" for k, v in sorted(value.items())) + "]"
    if isinstance(value, list):
        return "[" + " ".join(_describe(v) for v in value) + "]"
    return format_value(value)


def item_name(name: str, index: int, item: Any) -> str:
    """Argo's loop child name ``name(i:item)``; a map item is ``key:value,key:value`` with keys sorted."""
    if isinstance(item, Mapping):
        desc = ",".join(sorted(f"{k}:{_describe(v)}" for k, v in item.items()))
    elif isinstance(item, list):
        desc = _describe(item)
    else:
        desc = format_value(item)
    return f"{name}({index}:{desc.replace('(', '').replace(')', '')})"


def loop_item(name: str) -> str | None:
    """A loop child's item (``round 1 / client 0`` of ``train(0:round 1 / client 0)``), else None."""
    match = _LOOP_CHILD.search(name)
    return match.group(2) if match else None


def item_scope(item: Any) -> dict[str, str]:
    """``{{item}}`` and ``{{item.key}}`` for one loop item."""
    if isinstance(item, Mapping):
        out = {
            f"item.{k}": (
                v
                if isinstance(v, str)
                else _describe(v)
                if isinstance(v, Mapping | list)
                else format_value(v)
            )
            for k, v in item.items()
        }
        out["item"] = go_json(item)
        return out
    if isinstance(item, list):
        return {"item": go_json(item)}
    if item is None:
        raise WorkflowInputError("loop item is null: expected string, number, list, or map")
    return {"item": format_value(item)}
