"""Nodes and workflow status in the shape Argo's ``status`` has (``argo get -o json``)."""

from __future__ import annotations

import datetime as dt
import secrets
import string
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "COMPLETED",
    "FAILED_OR_ERROR",
    "FULFILLED",
    "Node",
    "Phase",
    "fnv32a",
    "generate_name",
    "new_uid",
    "node_id",
    "rfc3339",
]


class Phase(StrEnum):
    """A node's or the workflow's phase; the values are Argo's strings, written as-is to ``status.json``."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    ERROR = "Error"
    SKIPPED = "Skipped"
    OMITTED = "Omitted"


FULFILLED = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.ERROR, Phase.SKIPPED, Phase.OMITTED})
COMPLETED = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.ERROR})
FAILED_OR_ERROR = frozenset({Phase.FAILED, Phase.ERROR})


def fnv32a(text: str) -> int:
    """The 32-bit FNV-1a hash Argo uses for node ids."""
    h = 0x811C9DC5
    for byte in text.encode():
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def node_id(workflow_name: str, node_name: str) -> str:
    """Argo's ``Workflow.NodeID``: the workflow name for the root node, else ``<wf>-<fnv32a(name)>``."""
    if node_name == workflow_name:
        return workflow_name
    return f"{workflow_name}-{fnv32a(node_name)}"


def rfc3339(timestamp: float | None) -> str | None:
    """An epoch timestamp as RFC 3339 UTC with microseconds (``None`` stays ``None``)."""
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Node:
    """One node of the workflow graph; :meth:`to_dict` gives Argo's ``NodeStatus`` JSON."""

    id: str
    name: str
    display_name: str
    type: str
    template_name: str | None
    phase: Phase
    boundary_id: str | None = None
    message: str = ""
    children: list[str] = field(default_factory=list)
    outbound_nodes: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    inputs: dict[str, Any] | None = None
    outputs: dict[str, Any] | None = None
    daemoned: bool = False
    pod_ip: str | None = None
    hooked: bool = False
    retried: bool = False
    # local-executor bookkeeping (not part of Argo's status)
    attempt: int = 0
    log_key: str | None = None
    process_started_at: float | None = None
    process_finished_at: float | None = None

    @property
    def fulfilled(self) -> bool:
        """Argo's ``Fulfilled()``: finished, or a daemon that has started."""
        return self.phase in FULFILLED or (self.daemoned and self.phase != Phase.PENDING)

    @property
    def completed(self) -> bool:
        return self.phase in COMPLETED

    @property
    def failed_or_error(self) -> bool:
        return self.phase in FAILED_OR_ERROR

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "displayName": self.display_name,
            "type": self.type,
            "phase": str(self.phase),
            "startedAt": rfc3339(self.started_at),
            "finishedAt": rfc3339(self.finished_at),
        }
        if self.template_name:
            out["templateName"] = self.template_name
        if self.boundary_id:
            out["boundaryID"] = self.boundary_id
        if self.message:
            out["message"] = self.message
        if self.children:
            out["children"] = list(self.children)
        if self.outbound_nodes:
            out["outboundNodes"] = list(self.outbound_nodes)
        if self.inputs:
            out["inputs"] = self.inputs
        if self.outputs:
            out["outputs"] = self.outputs
        if self.daemoned:
            out["daemoned"] = True
        if self.pod_ip:
            out["podIP"] = self.pod_ip
        if self.hooked or self.retried:
            out["nodeFlag"] = {k: True for k, v in (("hooked", self.hooked), ("retried", self.retried)) if v}
        if self.type == "Pod":
            out["hostNodeName"] = "localhost"
        return out


def generate_name(prefix: str) -> str:
    """``prefix`` + 5 random ``[a-z0-9]``, like Kubernetes' generateName. Drawn from the OS, not the
    global ``random`` generator, which a seeded model or library (Keras' ``set_random_seed``) makes
    repeat its names: a second run of the same process named its Docker network like the first's."""
    alphabet = string.ascii_lowercase + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(5))


def new_uid() -> str:
    return str(uuid.uuid4())
