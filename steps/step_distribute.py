"""``distribute``: sample this round's clients and group them into pods (the list Argo fans out over)."""

from __future__ import annotations

import logging

import numpy as np

from steps.checkpoint import checkpoint_exists
from steps.labels import clients_label
from steps.runinfo import RunError, open_run, write_json
from steps.settings import Settings

log = logging.getLogger(__name__)


def sample_clients(settings: Settings, round: int) -> list[int]:
    """Seeded sample of ``max(min_clients, floor(fraction × clients))`` distinct clients, sorted."""
    count = min(settings.clients, max(settings.min_clients, int(settings.fraction * settings.clients)))
    rng = np.random.default_rng([settings.seed, round])
    return sorted(int(c) for c in rng.choice(settings.clients, size=count, replace=False))


def group_clients(round: int, clients: list[int], per_pod: int) -> list[str]:
    """Groups of ``per_pod`` clients, one train pod each, labelled ``round R / clients A,B``."""
    return [clients_label(round, clients[i : i + per_pod]) for i in range(0, len(clients), per_pod)]


def run(*, run_key: str, round: int) -> list[str]:
    """Write ``plan.json`` for ``round`` and return the labelled client groups (Argo fans out over them)."""
    store, layout, record = open_run(run_key)
    settings = record.settings
    if not 1 <= round <= settings.rounds:
        raise RunError(f"round must be in 1..{settings.rounds}, got {round}")
    if not checkpoint_exists(store, layout.global_key(round - 1)):
        raise RunError(
            f"round {round} needs the global checkpoint of round {round - 1} at "
            f"{store.key_uri(layout.global_key(round - 1))}, which does not exist"
        )
    clients = sample_clients(settings, round)
    groups = group_clients(round, clients, settings.clients_per_pod)
    write_json(
        store,
        layout.plan_key(round),
        {"round": round, "clients": [str(c) for c in clients], "groups": groups},
    )
    log.info(
        "round %d: sampled %d of %d clients in %d pods", round, len(clients), settings.clients, len(groups)
    )
    return groups
