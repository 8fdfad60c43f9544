"""Where a node's logs are: ``<run_dir>/logs/<node-id>/attempt-<n>.log`` (and ``.stdout``).

A pod that is not retried logs under its own id as attempt 0; the attempts of a ``Retry`` node log under
the retry node's id, attempt ``n`` being the child ``name(n)``. A node that is not a pod has the logs of
the pods under it (:func:`pods_under`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argofl.pipelines.local.scopes import loop_item

__all__ = ["LogFile", "find_nodes", "log_files", "node_refs", "pods_under", "suggest_refs"]


@dataclass(frozen=True)
class LogFile:
    """One attempt of one pod: its combined log and its stdout."""

    node_id: str
    attempt: int
    log: Path
    stdout: Path


def _retry_parent(nodes: Mapping[str, Mapping[str, Any]], node_id: str) -> tuple[str, int] | None:
    for parent in nodes.values():
        if parent.get("type") == "Retry":
            attempts = [
                c
                for c in parent.get("children") or []
                if not (nodes.get(c, {}).get("nodeFlag") or {}).get("hooked")
            ]
            if node_id in attempts:
                return str(parent["id"]), attempts.index(node_id)
    return None


def log_files(run_dir: Path, status: Mapping[str, Any], node_id: str) -> list[LogFile]:
    """The log files of ``node_id``: one for a pod, one per attempt for a retry node, none otherwise."""
    nodes: Mapping[str, Mapping[str, Any]] = status.get("nodes") or {}
    node = nodes.get(node_id)
    if node is None:
        return []
    if node.get("type") == "Retry":
        out = []
        for child in node.get("children") or []:
            out.extend(log_files(run_dir, status, child))
        return out
    if node.get("type") != "Pod":
        return []
    parent = _retry_parent(nodes, node_id)
    key, attempt = parent if parent else (node_id, 0)
    base = run_dir / "logs" / key / f"attempt-{attempt}"
    return [LogFile(node_id, attempt, base.with_suffix(".log"), base.with_suffix(".stdout"))]


def find_nodes(status: Mapping[str, Any], ref: str) -> list[Mapping[str, Any]]:
    """Nodes whose id, full name or display name is ``ref``; else the loop children whose item is ``ref``,
    as the Argo UI labels them (``round 1 / client 0`` for ``train(0:round 1 / client 0)``); else, for
    ``SCOPE / NAME``, the nodes named NAME inside the nodes SCOPE finds (``round 1 / server``, as
    ``argofl run`` prints a split round's server); else the nodes of the template ``ref`` (``finish``, the
    exit handler, whose node Argo names ``<workflow>.onExit``)."""
    nodes: Mapping[str, Mapping[str, Any]] = status.get("nodes") or {}
    if ref in nodes:
        return [nodes[ref]]
    named = [n for n in nodes.values() if ref in (n.get("name"), n.get("displayName"))]
    if named:
        return named
    item = " ".join(ref.split())
    items = [n for n in nodes.values() if loop_item(str(n.get("displayName", ""))) == item]
    scope, _, name = item.rpartition(" / ")
    if items:
        return items
    if not scope:
        return [n for n in nodes.values() if n.get("templateName") == ref]
    scopes = [str(n["id"]) for n in find_nodes(status, scope)]
    return [
        n
        for i, n in nodes.items()
        if n.get("displayName") == name and any(_within(nodes, i, s) for s in scopes)
    ]


def node_refs(status: Mapping[str, Any]) -> list[str]:
    """What a NODE may be, in tree order (loop items by index): each node's loop item or else display
    name, leaving out step groups and a retried pod's attempts (its retry node is named instead)."""
    nodes: Mapping[str, Mapping[str, Any]] = status.get("nodes") or {}
    attempts = {c for n in nodes.values() if n.get("type") == "Retry" for c in n.get("children") or []}
    shown = [
        n
        for i, n in nodes.items()
        if n.get("type") != "StepGroup" and i not in attempts and n.get("displayName")
    ]
    shown.sort(key=lambda n: _natural(str(n.get("name"))))
    names = (loop_item(str(n["displayName"])) or str(n["displayName"]) for n in shown)
    return list(dict.fromkeys(names))


def _natural(text: str) -> list[tuple[int, str]]:
    """A sort key that orders the numbers in ``text`` by value (``fan(2:…)`` before ``fan(10:…)``)."""
    return [(int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"(\d+)", text)]


def suggest_refs(ref: str, refs: Iterable[str], n: int = 4) -> list[str]:
    """Up to ``n`` of ``refs`` for a ``ref`` that matched nothing: those like it, else the first ones."""
    known = list(dict.fromkeys(refs))
    close = set(difflib.get_close_matches(ref, known, n=n, cutoff=0.5))
    return [r for r in known if r in close] or known[:n]


def _within(nodes: Mapping[str, Mapping[str, Any]], node_id: str, scope: str) -> bool:
    """Whether ``scope`` (a DAG or Steps node) is on ``node_id``'s chain of boundaries."""
    seen: set[str] = set()
    boundary = nodes.get(node_id, {}).get("boundaryID")
    while boundary and boundary not in seen:
        if boundary == scope:
            return True
        seen.add(boundary)
        boundary = nodes.get(boundary, {}).get("boundaryID")
    return False


def pods_under(status: Mapping[str, Any], node_id: str) -> list[str]:
    """The pods of ``node_id``, in start order: itself for a pod; a retry node's attempts; a task or step
    group's (``withItems``/``withParam``) items' pods; every pod inside a DAG or Steps node.

    A node's ``children`` also lead to the tasks that depend on it, so only groups are followed by
    ``children``; a DAG's or Steps' pods are those whose boundary chain reaches it, as in Argo.
    """
    nodes: Mapping[str, Mapping[str, Any]] = status.get("nodes") or {}
    node = nodes.get(node_id)
    if node is None:
        return []
    kind = node.get("type")
    if kind == "Pod":
        found = [node_id]
    elif kind in ("Retry", "TaskGroup", "StepGroup"):
        found = [pod for child in node.get("children") or [] for pod in pods_under(status, child)]
    elif kind in ("DAG", "Steps"):
        found = [i for i, n in nodes.items() if n.get("type") == "Pod" and _within(nodes, i, node_id)]
    else:
        found = []
    return sorted(dict.fromkeys(found), key=lambda i: str(nodes[i].get("startedAt")))
