"""The plan of a tree of aggregate tasks (``cluster.aggregate_fanin`` / ``aggregate_levels``): which
outputs each combine task of each level reads.

Level 1 cuts the round's pods (``plan.groups``) into batches of at most ``fanin`` consecutive pods
(``round 3 / pods 0-31``); each level ``k ≥ 2`` cuts level ``k - 1``'s batches the same way
(``round 3 / level 2 / batches 0-31``). The plan lists level 1's labels under ``combines`` and level
``k``'s under ``combines-k`` (:func:`output_name`), the distribute outputs the round's ``combine`` and
``combine-k`` tasks fan out over. The DAG is static, so every level runs, even over a single output (one
batch of one); with ``fanin ** levels ≥ pods`` every combine task and the aggregate read at most
``fanin`` objects. Pure: no I/O, no Argo.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from argofl.steps import labels

__all__ = ["combine_batches", "level_count", "level_groups", "output_name", "plan_levels"]


def output_name(level: int) -> str:
    """The plan key and distribute output of ``level``'s batches: ``combines``, ``combines-2``, …"""
    return "combines" if level == 1 else f"combines-{level}"


def combine_batches(round: int, count: int, fanin: int, level: int = 1) -> list[str]:
    """Labels of ``level``'s batches: the ``count`` outputs of the level below (pods at level 1) cut into
    runs of at most ``fanin``."""
    return [labels.batch_label(round, level, i, min(i + fanin, count) - 1) for i in range(0, count, fanin)]


def plan_levels(round: int, pods: int, fanin: int, levels: int) -> dict[str, list[str]]:
    """Every level's batch labels, by :func:`output_name`."""
    out: dict[str, list[str]] = {}
    count = pods
    for level in range(1, levels + 1):
        out[output_name(level)] = combine_batches(round, count, fanin, level)
        count = len(out[output_name(level)])
    return out


def level_count(plan: Mapping[str, Any]) -> int:
    """How many levels of combine tasks ``plan`` has (0: flat aggregation)."""
    level = 0
    while output_name(level + 1) in plan:
        level += 1
    return level


def level_groups(plan: Mapping[str, Any], round: int, level: int) -> list[list[str]]:
    """The clients of each output of ``level`` in order (level 0: the pods), from ``plan``'s labels; the
    first client of each names its partial (:func:`~argofl.steps.partials.combined_key`)."""
    groups = [labels.parse_clients(str(g), round=round) for g in plan["groups"]]
    for k in range(1, level + 1):
        below, groups = groups, []
        for label in plan[output_name(k)]:
            found, first, last = labels.parse_batch(str(label), round=round)
            if found != k or last >= len(below):
                raise labels.LabelError(
                    f"plan {output_name(k)} has {label!r}: expected a level-{k} batch of the "
                    f"{len(below)} outputs 0-{len(below) - 1} of the level below"
                )
            groups.append([c for group in below[first : last + 1] for c in group])
    return groups
