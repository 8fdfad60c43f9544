"""Round progress of a workflow from its Argo-shaped ``status``: finished steps and one view per round,
shared by ``argofl run`` (live node events of the local executor), ``argofl watch``/``status`` (an Argo
server) and ``argofl resume``/``resubmit`` (the last completed round).

The status is the shape Argo stores and the local executor writes to ``runs/workflows/<run>/status.json``:
``status.nodes`` maps node ids to nodes with ``type`` (Pod, Retry, DAG, StepGroup, TaskGroup, Steps),
``templateName``, ``phase``, ``boundaryID``, ``children``, ``inputs``/``outputs.parameters``. Which step a
template stands for is the experiment kind's :class:`NodeDisplay` (``pipelines.kinds``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from argofl.steps.errors import one_line
from argofl.steps.labels import LabelError, parse_round

__all__ = [
    "DONE_PHASES",
    "NodeDisplay",
    "RoundView",
    "Step",
    "evaluation_text",
    "federated_clients",
    "finished_steps",
    "format_number",
    "last_completed_round",
    "round_views",
    "step_line",
    "step_of",
]

DONE_PHASES = ("Succeeded", "Failed", "Error")


@dataclass(frozen=True)
class NodeDisplay:
    """How a kind's nodes read in progress lines: template name → the step it stands for.

    The steps lines know are ``train`` (a client: a line per client, counted in its round's trained
    clients), ``server`` (a split round's server), ``distribute``, ``aggregate`` and ``evaluate`` (the
    round's test metrics; also what makes a round completed); any other template is shown by its own
    name. A key ending in ``-`` maps every
    template it prefixes (FedAvg's placement groups ``train-<group>``)."""

    steps: Mapping[str, str] = field(default_factory=dict)

    def step(self, template: str) -> str:
        """The step ``template`` stands for (its own name unless mapped)."""
        if template in self.steps:
            return self.steps[template]
        for key, step in self.steps.items():
            if key.endswith("-") and template.startswith(key):
                return step
        return template


AS_NAMED = NodeDisplay()
"""Every template shown as its own name."""


def _params(node: Mapping[str, Any], direction: str) -> dict[str, str]:
    return {
        str(p.get("name")): "" if p.get("value") is None else str(p.get("value"))
        for p in (node.get(direction) or {}).get("parameters") or []
    }


def _parents(nodes: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    parent: dict[str, str] = {}
    for nid, node in nodes.items():
        for child in node.get("children") or []:
            parent.setdefault(str(child), str(nid))
    return parent


def _round_nodes(nodes: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Round DAG node id → round number."""
    out: dict[str, int] = {}
    for nid, node in nodes.items():
        if node.get("type") != "DAG" or node.get("templateName") != "round":
            continue
        number = _round_number(_params(node, "inputs").get("round"))
        if number is None:  # the loop child's name, round(2:round 3)
            match = re.search(r"\(\d+:(round \d+|\d+)\)$", str(node.get("displayName", "")))
            number = _round_number(match.group(1)) if match else None
        if number is not None:
            out[str(nid)] = number
    return out


def _round_number(value: Any) -> int | None:
    """A round input (``round 3`` or ``3``) as a number; None when it is neither."""
    try:
        return parse_round(str(value))
    except LabelError:
        return None


def _round_of(node: Mapping[str, Any], rounds: Mapping[str, int]) -> int | None:
    number = _round_number(_params(node, "inputs").get("round"))
    if number is None:
        number = rounds.get(str(node.get("boundaryID", "")))
    return number


@dataclass(frozen=True)
class Step:
    """One finished (or running) step of a workflow: a Retry node, or a Pod that is not a retry attempt."""

    node: Mapping[str, Any]
    template: str  # the step its template stands for (NodeDisplay.step): train for train-<group>
    round: int | None
    inputs: Mapping[str, str]
    outputs: Mapping[str, str]

    @property
    def phase(self) -> str:
        return str(self.node.get("phase", ""))

    @property
    def key(self) -> tuple[str, str]:
        return (str(self.node.get("id", "")), self.phase)


def _steps(nodes: Mapping[str, Mapping[str, Any]], display: NodeDisplay) -> list[Step]:
    parents = _parents(nodes)
    rounds = _round_nodes(nodes)
    out: list[Step] = []
    for nid, node in nodes.items():
        node_type = node.get("type")
        if node_type == "Pod" and nodes.get(parents.get(str(nid), ""), {}).get("type") == "Retry":
            continue  # an attempt; its Retry node stands for the step
        if node_type not in ("Pod", "Retry"):
            continue
        inputs = _params(node, "inputs")
        if not inputs and node_type == "Retry":  # take them from the attempts
            for child in node.get("children") or []:
                inputs = inputs or _params(nodes.get(str(child), {}), "inputs")
        merged = {**node, "inputs": {"parameters": [{"name": k, "value": v} for k, v in inputs.items()]}}
        if node_type == "Retry":
            node = _with_attempt_message(node, nodes)
        out.append(
            Step(
                node=node,
                template=display.step(str(node.get("templateName", ""))),
                round=_round_of(merged, rounds),
                inputs=inputs,
                outputs=_params(node, "outputs"),
            )
        )
    return out


def _with_attempt_message(
    node: Mapping[str, Any], nodes: Mapping[str, Mapping[str, Any]]
) -> Mapping[str, Any]:
    """A failed Retry node says why retrying stopped ("No more retries left"); show its last
    attempt's own message (the step's error line) instead."""
    children = node.get("children") or []
    if node.get("phase") not in ("Failed", "Error") or not children:
        return node
    last = nodes.get(str(children[-1]), {})
    return {**node, "message": last["message"]} if last.get("message") else node


def step_of(node: Mapping[str, Any], display: NodeDisplay = AS_NAMED) -> Step:
    """A step from one node alone (its round from its own ``round`` input), e.g. a live executor event."""
    inputs = _params(node, "inputs")
    return Step(
        node=node,
        template=display.step(str(node.get("templateName", ""))),
        round=_round_number(inputs.get("round")),
        inputs=inputs,
        outputs=_params(node, "outputs"),
    )


def finished_steps(status: Mapping[str, Any], display: NodeDisplay = AS_NAMED) -> list[Step]:
    """The finished steps of a workflow status, in the order they finished."""
    done = [s for s in _steps(status.get("nodes") or {}, display) if s.phase in DONE_PHASES]
    done.sort(key=lambda s: (str(s.node.get("finishedAt") or ""), str(s.node.get("id", ""))))
    return done


def format_number(value: Any, fmt: str = ".4f") -> str:
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return "?"


def step_line(step: Step) -> str:
    """One line describing a finished step (round, client, metrics), as ``watch`` prints it."""
    mark = "✔" if step.phase == "Succeeded" else "✖"
    where = f"round {step.round}" if step.round is not None else ""
    out = step.outputs
    if step.phase != "Succeeded" and step.template in ("distribute", "aggregate", "evaluate"):
        text = f"{where} {mark} {step.template}"
    elif step.template == "train":
        clients = str(step.inputs.get("clients", "?"))
        text = f"{clients if clients.startswith('round') else f'{where} · client {clients}'} {mark}"
        if "accuracy" in out or "loss" in out:
            text += f" train loss {format_number(out.get('loss'))} acc {format_number(out.get('accuracy'))}"
    elif step.template == "aggregate":
        text = f"{where} {mark} aggregated {format_number(out.get('clients'), '.0f')} updates"
    elif step.template == "evaluate":
        text = f"{where} {mark} {evaluation_text(out)}"
    elif step.template == "distribute":
        text = f"{where} {mark} clients sampled"
    elif step.template == "server":  # a split round's server daemon
        text = f"{where} / server {mark}" if where else f"server {mark}"
    else:
        text = f"{step.template or step.node.get('displayName', '?')} {mark}"
    if step.phase != "Succeeded" and step.node.get("message"):
        text += f" ({_short(str(step.node['message']), 200)})"
    return text.strip()


def evaluation_text(outputs: Mapping[str, Any]) -> str:
    """An ``evaluate`` step's loss and accuracy, named for what they measure: the central test set's, or,
    without one, the clients' federated evaluation of the model that entered the round."""
    acc, loss = format_number(outputs.get("accuracy")), format_number(outputs.get("loss"))
    clients = federated_clients(outputs)
    if clients is not None:
        return f"fed accuracy of the incoming model {acc} loss {loss} ({clients} clients)"
    return f"test accuracy {acc} loss {loss}"


def federated_clients(outputs: Mapping[str, Any]) -> str | None:
    """How many clients' federated evaluation an ``evaluate`` step's ``loss``/``accuracy`` are: without a
    central test set they are its ``fed-*`` ones. None when they are the central test set's."""
    clients = format_number(outputs.get("fed-clients"), ".0f")
    federated = (
        clients not in ("?", "0")
        and outputs.get("accuracy") == outputs.get("fed-accuracy")
        and outputs.get("loss") == outputs.get("fed-loss")
    )
    return clients if federated else None


@dataclass(frozen=True)
class RoundView:
    """Progress of one round."""

    round: int
    phase: str
    trained: int = 0
    train_failed: int = 0
    train_total: int = 0
    aggregated: str | None = None
    loss: str | None = None
    accuracy: str | None = None
    message: str = ""
    evaluation: Mapping[str, str] = field(default_factory=dict)  # the evaluate step's outputs

    @property
    def evaluated(self) -> bool:
        return self.accuracy is not None or self.loss is not None

    def evaluation_text(self) -> str:
        """The round's loss and accuracy, named for what they measure (:func:`evaluation_text`)."""
        return evaluation_text({**self.evaluation, "accuracy": self.accuracy, "loss": self.loss})

    def line(self) -> str:
        text = f"round {self.round:>3}  {self.phase:<9}"
        if self.train_total:
            text += f"  clients {self.trained}/{self.train_total} trained"
            if self.train_failed:
                text += f" ({self.train_failed} failed)"
        if self.aggregated is not None:
            text += f"  aggregated {format_number(self.aggregated, '.0f')}"
        if self.evaluated:
            text += f"  {self.evaluation_text()}"
        if self.message and self.phase != "Succeeded":
            text += f"  ({_short(self.message, 160)})"
        return text


def round_views(status: Mapping[str, Any], display: NodeDisplay = AS_NAMED) -> list[RoundView]:
    """Per-round progress from a workflow status, by round number."""
    nodes: Mapping[str, Mapping[str, Any]] = status.get("nodes") or {}
    rounds = _round_nodes(nodes)
    steps = _steps(nodes, display)
    views: list[RoundView] = []
    for nid, number in sorted(rounds.items(), key=lambda kv: kv[1]):
        mine = [s for s in steps if s.round == number]
        train = [s for s in mine if s.template == "train"]
        aggregate = [s for s in mine if s.template == "aggregate" and s.phase == "Succeeded"]
        evaluate = [s for s in mine if s.template == "evaluate" and s.phase == "Succeeded"]
        node = nodes[nid]
        failed = [s for s in mine if s.phase in ("Failed", "Error") and s.node.get("message")]
        failed.sort(key=lambda s: s.template == "train")  # the step that sank the round first
        message = str(failed[0].node["message"] if failed else node.get("message") or "")
        views.append(
            RoundView(
                round=number,
                phase=str(node.get("phase", "")),
                trained=sum(s.phase == "Succeeded" for s in train),
                train_failed=sum(s.phase in ("Failed", "Error") for s in train),
                train_total=len(train),
                aggregated=aggregate[-1].outputs.get("clients") if aggregate else None,
                loss=evaluate[-1].outputs.get("loss") if evaluate else None,
                accuracy=evaluate[-1].outputs.get("accuracy") if evaluate else None,
                message=message,
                evaluation=evaluate[-1].outputs if evaluate else {},
            )
        )
    return views


def last_completed_round(status: Mapping[str, Any], display: NodeDisplay = AS_NAMED) -> int | None:
    """The largest round whose ``evaluate`` step succeeded (None when no round completed)."""
    done = [
        s.round
        for s in _steps(status.get("nodes") or {}, display)
        if s.template == "evaluate" and s.phase == "Succeeded" and s.round is not None
    ]
    return max(done) if done else None


def _short(text: str, limit: int) -> str:
    flat = one_line(text)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
