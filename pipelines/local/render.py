"""A text view of a run's status like ``argo get`` prints it (STEP, TEMPLATE, PODNAME, DURATION, MESSAGE)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from argofl.pipelines.local.model import Phase

__all__ = ["SYMBOLS", "render_status"]

SYMBOLS: dict[str, str] = {
    Phase.SUCCEEDED: "✔",
    Phase.FAILED: "✖",
    Phase.ERROR: "⚠",
    Phase.SKIPPED: "○",
    Phase.OMITTED: "○",
    Phase.RUNNING: "●",
    Phase.PENDING: "◷",
}


def _time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _duration(start: str | None, end: str | None) -> str:
    begin, finish = _time(start), _time(end) or dt.datetime.now(dt.UTC)
    if begin is None:
        return ""
    seconds = max(0.0, (finish - begin).total_seconds())
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 1 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m"


def _tree(nodes: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], dict[str, list[str]]]:
    listed_by: dict[str, list[str]] = {}
    for node in nodes.values():
        for child in node.get("children") or []:
            listed_by.setdefault(child, []).append(str(node["id"]))
    children: dict[str, list[str]] = {}
    roots: list[str] = []
    for nid, node in nodes.items():
        if node.get("type") == "StepGroup":
            continue
        parent: str | None = None
        owners = listed_by.get(nid, [])
        hooked = (node.get("nodeFlag") or {}).get("hooked")
        special = [o for o in owners if nodes[o].get("type") in ("Retry", "TaskGroup")]
        if hooked and owners:
            parent = owners[0]
        elif special:
            parent = special[0]
        elif node.get("boundaryID") in nodes:
            parent = str(node["boundaryID"])
        if parent is None:
            roots.append(nid)
        else:
            children.setdefault(parent, []).append(nid)
    for kids in children.values():
        kids.sort(key=lambda c: str(nodes[c].get("startedAt") or ""))
    return roots, children


def render_status(name: str, status: Mapping[str, Any]) -> str:
    """The status of run ``name`` as ``argo get`` would print it."""
    nodes: Mapping[str, Mapping[str, Any]] = status.get("nodes") or {}
    pods = [n for n in nodes.values() if n.get("type") == "Pod"]
    done = [n for n in pods if n.get("phase") in (Phase.SUCCEEDED, Phase.FAILED, Phase.ERROR)]
    lines = [
        f"Name:                {name}",
        f"Status:              {status.get('phase', '')}",
    ]
    if status.get("message"):
        lines.append(f"Message:             {status['message']}")
    lines += [
        f"Started:             {status.get('startedAt') or ''}",
        f"Finished:            {status.get('finishedAt') or ''}",
        f"Duration:            {_duration(status.get('startedAt'), status.get('finishedAt'))}",
        f"Progress:            {len(done)}/{len(pods)}",
    ]
    outputs = status.get("outputs") or {}
    if outputs.get("parameters") or outputs.get("artifacts"):
        lines.append("Outputs:")
        for p in outputs.get("parameters") or []:
            lines.append(f"  {p.get('name')}: {p.get('value')}")
        for a in outputs.get("artifacts") or []:
            lines.append(f"  {a.get('name')}: {(a.get('s3') or {}).get('key', '')}")
    roots, children = _tree(nodes)
    rows: list[tuple[str, str, str, str, str]] = []

    def walk(nid: str, prefix: str, last: bool, top: bool) -> None:
        node = nodes[nid]
        symbol = SYMBOLS.get(str(node.get("phase")), "?")
        branch = "" if top else ("└─" if last else "├─")
        label = f"{prefix}{branch}{symbol} {node.get('displayName')}"
        pod = str(nid) if node.get("type") == "Pod" else ""
        rows.append(
            (
                label,
                str(node.get("templateName") or ""),
                pod,
                _duration(node.get("startedAt"), node.get("finishedAt")),
                str(node.get("message") or ""),
            )
        )
        kids = children.get(nid, [])
        for i, kid in enumerate(kids):
            walk(kid, prefix + ("" if top else ("  " if last else "│ ")), i == len(kids) - 1, False)

    roots.sort(
        key=lambda r: (str(nodes[r].get("name", "")).endswith(".onExit"), str(nodes[r].get("startedAt")))
    )
    for root in roots:
        walk(root, " ", True, True)
    header = ("STEP", "TEMPLATE", "PODNAME", "DURATION", "MESSAGE")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines.append("")
    for row in [header, *rows]:
        lines.append("  ".join(c.ljust(widths[i]) if i < 4 else c for i, c in enumerate(row)).rstrip())
    return "\n".join(lines) + "\n"
