"""What a Workflow's node status weighs in Kubernetes, computed the way Argo stores it.

Argo keeps every node of a Workflow in ``status.nodes`` of the one Workflow object. When the object is
larger than :data:`ARGO_MAX_WORKFLOW_SIZE` (1 MiB), the controller replaces ``nodes`` with
``compressedNodes``: the nodes' JSON, gzip-compressed, base64-encoded
(``workflow/controller``, ``util/file.CompressEncodeString``); if that is still too large the workflow
fails unless node status offloading to a database is configured. :func:`measure` computes both sizes
from a status (the local executor's ``status.json`` has Argo's shape); :func:`per_round` splits them by
round and :func:`project` extrapolates a measured run to more clients and rounds.

With ``cluster.rounds_per_workflow`` every block of rounds is a child Workflow, a Kubernetes object of
its own: :func:`run_statuses` reads the parent's and its children's statuses (the local executor keeps
a child's run under ``<run_dir>/workflows/<child>/``) and :func:`project_blocks` projects each object
(the parent: init, finalize and a node per block; a child: one block of rounds); the largest is what
must stay under :data:`ARGO_MAX_WORKFLOW_SIZE`.
"""

from __future__ import annotations

import base64
import gzip
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ARGO_MAX_WORKFLOW_SIZE",
    "BlocksProjection",
    "NodeStatusSize",
    "Projection",
    "RoundNodes",
    "compress_nodes",
    "measure",
    "per_round",
    "project",
    "project_blocks",
    "run_statuses",
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


@dataclass(frozen=True)
class BlocksProjection:
    """The Workflow objects of an experiment in blocks of ``rounds_per_workflow`` rounds, projected."""

    rounds_per_workflow: int
    blocks: int
    parent: Projection  # init, finalize, one node per block
    child: Projection  # one full block of rounds

    @property
    def largest(self) -> Projection:
        return max(self.parent, self.child, key=lambda p: p.compressed_bytes)


def run_statuses(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The status of the local run in ``run_dir`` and those of the Workflows it created, in start order."""
    parent = json.loads((run_dir / "status.json").read_text())
    children = [json.loads(p.read_text()) for p in (run_dir / "workflows").glob("*/status.json")]
    return parent, sorted(children, key=lambda s: str(s.get("startedAt") or ""))


def project_blocks(
    parent: Mapping[str, Any],
    children: Sequence[Mapping[str, Any]],
    *,
    pods: int,
    rounds_count: int,
    rounds_per_workflow: int,
    block_template: str = "rounds",
) -> BlocksProjection:
    """Project a measured run in blocks to ``rounds_count`` rounds of ``pods`` client groups.

    The child is projected from the measured child with the most rounds (:func:`project` with
    ``rounds_per_workflow`` rounds); the parent keeps its other nodes and gets the measured nodes per
    block (``block_template`` nodes) for each of the ``ceil(rounds_count / rounds_per_workflow)`` blocks.
    Each object at its own measured compressed bytes per node.
    """
    if rounds_per_workflow < 1:
        raise ValueError(f"rounds_per_workflow must be at least 1, got {rounds_per_workflow}")
    measured = [(per_round(c), c) for c in children]
    measured = [(r, c) for r, c in measured if r]
    if not measured:
        raise ValueError("no child workflow with round nodes to project from")
    rounds, child = max(measured, key=lambda m: len(m[0]))
    child_projection = project(
        rounds, measure(child.get("nodes") or {}), pods=pods, rounds_count=rounds_per_workflow
    )
    nodes: Mapping[str, Any] = parent.get("nodes") or {}
    total = measure(nodes)
    block_nodes = [n for n in nodes.values() if n.get("templateName") == block_template]
    measured_blocks = sum(1 for n in block_nodes if n.get("type") != "Retry")
    if not measured_blocks:
        raise ValueError(f"the parent has no {block_template!r} nodes (one per block of rounds)")
    blocks = math.ceil(rounds_count / rounds_per_workflow)
    parent_nodes = math.ceil(total.nodes - len(block_nodes) + blocks * len(block_nodes) / measured_blocks)
    parent_projection = Projection(
        rounds_count, pods, parent_nodes, math.ceil(parent_nodes * total.compressed_per_node)
    )
    return BlocksProjection(rounds_per_workflow, blocks, parent_projection, child_projection)
