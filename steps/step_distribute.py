"""``distribute``: sample this round's clients and group them into pods (the list Argo fans out over)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from argofl.steps import combine_plan
from argofl.steps.checkpoint import checkpoint_exists
from argofl.steps.labels import clients_label
from argofl.steps.runinfo import RunError, open_run, write_json
from argofl.steps.settings import Settings
from argofl.steps.step_combine import refuse_nonlinear

log = logging.getLogger(__name__)


def sample_clients(settings: Settings, round: int) -> list[int]:
    """Seeded sample of ``max(min_clients, floor(fraction × clients))`` distinct clients, sorted."""
    count = min(settings.clients, max(settings.min_clients, int(settings.fraction * settings.clients)))
    rng = np.random.default_rng([settings.seed, round])
    return sorted(int(c) for c in rng.choice(settings.clients, size=count, replace=False))


def group_clients(round: int, clients: list[int], per_pod: int) -> list[str]:
    """Groups of ``per_pod`` clients, one train pod each, labelled ``round R / clients A,B``."""
    return [clients_label(round, clients[i : i + per_pod]) for i in range(0, len(clients), per_pod)]


def place_groups(
    round: int, clients: list[int], per_pod: int, placement: Mapping[str, Sequence[int]]
) -> dict[str, list[str]]:
    """Placement group name → its pods' labels: each group's sampled clients, ``per_pod`` to a pod.

    A pod never mixes groups, so it only ever gets its own group's volume and Secret.
    """
    owner = {int(c): name for name, members in placement.items() for c in members}
    unplaced = [c for c in clients if c not in owner]
    if unplaced:
        raise RunError(
            f"round {round}: clients {unplaced} are in no placement group (groups: {sorted(placement)}); "
            "compile the config with every client placed"
        )
    return {
        name: group_clients(round, [c for c in clients if owner[c] == name], per_pod) for name in placement
    }


def parse_placement(value: str) -> dict[str, list[int]]:
    """``{"site-a": [0, 1], …}`` (the ``--placement`` argument) → group → clients."""
    try:
        doc = json.loads(value)
        return {str(k): [int(c) for c in v] for k, v in doc.items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise RunError(
            f"--placement {value!r}: expected a JSON object of group → client indices ({exc})"
        ) from None


def run(*, run_key: str, round: int) -> list[str]:
    """Write ``plan.json`` for ``round`` and return the labelled client groups (Argo fans out over them)."""
    return plan_round(run_key=run_key, round=round)["groups"]


def plan_round(
    *,
    run_key: str,
    round: int,
    placement: Mapping[str, Sequence[int]] | None = None,
    fanin: int = 0,
    levels: int = 1,
) -> dict[str, Any]:
    """Sample ``round``'s clients, write ``plan.json`` and return it.

    The plan has ``clients`` (sampled), ``groups`` (pod labels), with ``placement`` ``pods`` (each
    placement group's pod labels) and with a ``fanin`` ``combines``: the level-1 combine tasks' batches
    of at most ``fanin`` pods (:mod:`~argofl.steps.step_combine`), and ``combines-2`` … ``combines-L``
    those of each deeper level of ``levels`` (:mod:`~argofl.steps.combine_plan`).
    """
    store, layout, record = open_run(run_key)
    settings = record.settings
    if fanin < 0 or fanin == 1:
        raise RunError(f"--fanin {fanin}: expected 0 (flat aggregation) or at least 2")
    if levels < 1 or (levels > 1 and not fanin):
        raise RunError(f"--levels {levels}: expected 1, or more levels of combine tasks with a --fanin ≥ 2")
    refuse_nonlinear(settings, fanin, f"distribute round {round}")
    if not 1 <= round <= settings.rounds:
        raise RunError(f"round must be in 1..{settings.rounds}, got {round}")
    if not checkpoint_exists(store, layout.global_key(round - 1)):
        raise RunError(
            f"round {round} needs the global checkpoint of round {round - 1} at "
            f"{store.key_uri(layout.global_key(round - 1))}, which does not exist"
        )
    clients = sample_clients(settings, round)
    plan: dict[str, Any] = {"round": round, "clients": [str(c) for c in clients]}
    if placement is None:
        plan["groups"] = group_clients(round, clients, settings.clients_per_pod)
    else:
        pods = place_groups(round, clients, settings.clients_per_pod, placement)
        plan["groups"] = [label for labels in pods.values() for label in labels]
        plan["pods"] = pods
    if fanin:
        plan.update(combine_plan.plan_levels(round, len(plan["groups"]), fanin, levels))
    write_json(store, layout.plan_key(round), plan)
    log.info(
        "round %d: sampled %d of %d clients in %d pods",
        round,
        len(clients),
        settings.clients,
        len(plan["groups"]),
    )
    return plan
