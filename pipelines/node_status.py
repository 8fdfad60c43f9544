"""What a Workflow's node status weighs in Kubernetes, computed the way Argo stores it.

Argo keeps every node of a Workflow in ``status.nodes`` of the one Workflow object. When the object is
larger than :data:`ARGO_MAX_WORKFLOW_SIZE` (1 MiB), the controller replaces ``nodes`` with
``compressedNodes``: the nodes' JSON, gzip-compressed, base64-encoded
(``workflow/controller``, ``util/file.CompressEncodeString``); if that is still too large the workflow
fails unless node status offloading to a database is configured. :func:`measure` computes both sizes
from a status (the local executor's ``status.json`` has Argo's shape); :func:`per_round` splits them by
round and :func:`project` extrapolates a measured run to more clients and rounds.
"""

from __future__ import annotations

import base64
import gzip
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ARGO_MAX_WORKFLOW_SIZE",
    "NodeStatusSize",
    "Projection",
    "RoundNodes",
    "compress_nodes",
    "measure",
    "per_round",
    "project",
]

ARGO_MAX_WORKFLOW_SIZE = 1024 * 1024
"""Bytes of a Workflow object beyond which Argo compresses (then refuses or offloads) its nodes."""


@dataclass(frozen=True)
class NodeStatusSize:
    """Node count, bytes of the nodes' compact JSON, bytes of Argo's ``compressedNodes`` string."""

    nodes: int
    json_bytes: int
    compressed_bytes: int

    @property
    def compressed_per_node(self) -> float:
        return self.compressed_bytes / self.nodes if self.nodes else 0.0


@dataclass(frozen=True)
class RoundNodes:
    """The nodes of one round: its size, and how many of its nodes are client-group (train) nodes."""

    round: str
    size: NodeStatusSize
    pods: int  # client-group tasks (train loop items)
    pod_nodes: int  # nodes those tasks made (a Retry node and its attempts' Pod nodes)


@dataclass(frozen=True)
class Projection:
    """Nodes and ``compressedNodes`` bytes projected for ``rounds`` rounds of ``pods`` client groups."""

    rounds: int
    pods: int
    nodes: int
    compressed_bytes: int

    @property
    def share_of_limit(self) -> float:
        return self.compressed_bytes / ARGO_MAX_WORKFLOW_SIZE


def compress_nodes(nodes: Mapping[str, Any]) -> str:
    """Argo's ``compressedNodes``: base64 of gzip of the nodes' compact JSON."""
    raw = json.dumps(nodes, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.b64encode(gzip.compress(raw, compresslevel=6, mtime=0)).decode("ascii")


def measure(nodes: Mapping[str, Any]) -> NodeStatusSize:
    """Sizes of ``nodes`` (``status.nodes``) as JSON and as Argo's ``compressedNodes``."""
    raw = json.dumps(nodes, separators=(",", ":"), ensure_ascii=False).encode()
    return NodeStatusSize(len(nodes), len(raw), len(compress_nodes(nodes)))


def per_round(
    status: Mapping[str, Any], *, round_template: str = "round", pod_template: str = "train"
) -> list[RoundNodes]:
    """The nodes under each ``round_template`` node (a DAG, in start order), measured on their own."""
    nodes: Mapping[str, Any] = status.get("nodes") or {}
    rounds = sorted(
        (n for n in nodes.values() if n.get("templateName") == round_template and n.get("type") != "Retry"),
        key=lambda n: str(n.get("startedAt") or ""),
    )
    owner: dict[str, str] = {}

    def round_of(node_id: str) -> str | None:
        seen: list[str] = []
        current: str | None = node_id
        found: str | None = None
        while current is not None and current in nodes:
            if current in owner:
                found = owner[current]
                break
            node = nodes[current]
            if node.get("templateName") == round_template and node.get("type") != "Retry":
                found = current
                break
            seen.append(current)
            current = node.get("boundaryID")
        for visited in seen:
            if found is not None:
                owner[visited] = found
        return found

    out = []
    for rnode in rounds:
        members = {k: v for k, v in nodes.items() if round_of(k) == rnode["id"]}
        pod_nodes = [n for n in members.values() if n.get("templateName") == pod_template]
        attempts = {c for n in pod_nodes if n.get("type") == "Retry" for c in n.get("children") or []}
        pods = sum(1 for n in pod_nodes if n.get("id") not in attempts)
        out.append(RoundNodes(str(rnode.get("displayName")), measure(members), pods, len(pod_nodes)))
    return out


def project(rounds: list[RoundNodes], total: NodeStatusSize, *, pods: int, rounds_count: int) -> Projection:
    """Extrapolate a measured run to ``rounds_count`` rounds of ``pods`` client groups each.

    Per round: the nodes that do not depend on the number of groups, plus the measured nodes per
    group times ``pods``; the run's other nodes (init, finalize, …) once; each node at the measured
    compressed bytes per node of the whole run.
    """
    if not rounds:
        raise ValueError("no round nodes to project from")
    fixed = sum(r.size.nodes - r.pod_nodes for r in rounds) / len(rounds)
    per_pod = sum(r.pod_nodes for r in rounds) / max(1, sum(r.pods for r in rounds))
    outside = total.nodes - sum(r.size.nodes for r in rounds)
    nodes = math.ceil(outside + rounds_count * (fixed + per_pod * pods))
    return Projection(rounds_count, pods, nodes, math.ceil(nodes * total.compressed_per_node))
