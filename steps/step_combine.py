"""``combine``: one task of a tree of aggregate tasks (``cluster.aggregate_fanin``, linear strategies).

With very many train pods the aggregator would read one object per pod. With a fan-in ``F`` the round's
distribute step also cuts its pods (``plan.groups``) into batches of at most ``F`` consecutive pods,
labelled by index range (``round 3 / pods 0-31``), and one ``combine`` task per batch reads the batch's
outputs — each pod's partial sum (``clients_per_pod > 1``) or its client's update (one client a pod) —
checks them exactly as the aggregator does, and writes one float64 partial sum at
``round-NNNN/partials/combined-<first client>`` (:func:`~argofl.steps.partials.save_partial`): the sum,
the clients it holds with their examples and metrics, and every refused client with its reason (a pod's
own refusals and the combine's). With ``cluster.aggregate_levels: L`` each level ``k`` of ``2..L`` does
the same over batches of at most ``F`` of level ``k - 1``'s partials (``round 3 / level 2 / batches
0-31``, :mod:`~argofl.steps.combine_plan`), checked as a group's partial, and writes
``combined-l<k>-<first client>``. The aggregate step then reads the last level's partials, checked the
same way, so per-client metrics, ``min_clients``, rejection reasons and the example-count checks work as
before.

Only the float64 summation order differs from flat aggregation (see :mod:`~argofl.steps.partials` for
the bound: a float32 weight of the global differs by at most one ulp, unless its clients' values nearly
cancel). A combine task that finds its
partial already committed (a retry) leaves it; recomputing it gives the same bytes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import numpy as np

from argofl.steps import combine_plan, labels, partials, update_checks
from argofl.steps.checkpoint import (
    CheckpointError,
    CheckpointManifest,
    checkpoint_exists,
    load_checkpoint,
    load_manifest,
)
from argofl.steps.client_limits import example_limit
from argofl.steps.runinfo import RunError, RunLayout, RunRecord, open_run
from argofl.steps.settings import Settings
from argofl.steps.store import Store
from argofl.steps.strategies import STRATEGIES, AggregationError, ClientUpdate, WeightedAverage

__all__ = ["refuse_nonlinear", "run"]

log = logging.getLogger(__name__)


def refuse_nonlinear(settings: Settings, fanin: int, where: str) -> None:
    """One error line when ``fanin`` is set for a strategy whose rule is not a weighted sum."""
    if fanin and not STRATEGIES[settings.strategy].linear:
        linear = sorted(name for name, info in STRATEGIES.items() if info.linear)
        raise RunError(
            f"{where}: aggregate_fanin {fanin} needs a linear strategy ({', '.join(linear)}); strategy "
            f"{settings.strategy!r} aggregates all updates at once: set aggregate_fanin: 0"
        )


def run(*, run_key: str, round: int, pods: str) -> dict[str, float]:
    """Sum the outputs of the batch ``pods`` (a batch label: pods at level 1, the level below's batches
    deeper) into one partial; returns its ``clients`` (summed) and ``rejected`` counts."""
    store, layout, record = open_run(run_key)
    s = record.settings
    refuse_nonlinear(s, 1, f"combine round {round}")
    level, first, last = labels.parse_batch(pods, round=round)
    plan_key = layout.plan_key(round)
    try:
        plan = json.loads(store.get_bytes(plan_key))
        planned = combine_plan.level_count(plan)
        below = combine_plan.level_groups(plan, round, min(level, planned) - 1)
    except Exception as exc:
        raise RunError(f"round {round} has no readable plan at {store.key_uri(plan_key)}: {exc}") from None
    if level > planned:
        raise RunError(
            f"combine {pods!r}: round {round} is planned with {planned} levels of combine tasks, not "
            f"{level}; nothing written"
        )
    if last >= len(below):
        what = "pods" if level == 1 else f"level-{level - 1} batches"
        raise RunError(
            f"combine {pods!r}: round {round} has {len(below)} {what} (0-{len(below) - 1}); nothing written"
        )
    batch = below[first : last + 1]
    key = partials.combined_key(layout, round, batch[0][0], level)
    if checkpoint_exists(store, key):
        log.info("batch %s: round %d combined partial already committed; leaving it", pods, round)
        manifest = load_manifest(store, key)
    else:
        manifest = load_manifest(store, _combine(store, layout, s, record, round, batch, key, level))
    replies, rejected = partials.replies_of(manifest, store.key_uri(key))
    return {"clients": float(len(replies)), "rejected": float(len(rejected))}


def _combine(
    store: Store,
    layout: RunLayout,
    s: Settings,
    record: RunRecord,
    round: int,
    batch: list[list[str]],
    key: str,
    level: int,
) -> str:
    """Fold the batch's valid outputs of the level below (pods' at level 1) and commit the combined
    partial at ``key``; returns ``key``."""
    previous = load_manifest(store, layout.global_key(round - 1))
    like = previous.tensors
    dtypes = {name: np.dtype(spec.dtype) for name, spec in like.items()}
    limit = example_limit(s, record.data)
    total = WeightedAverage()
    replies: list[ClientUpdate] = []
    rejected: dict[str, str] = {}
    for group in batch:
        if level > 1:  # a combined partial of the level below, checked as a pod's partial sum
            below = partials.combined_key(layout, round, group[0], level - 1)
            summed, refusals = _group_partial(
                store, below, round, group, previous, limit, total, dtypes, writer="combine task"
            )
        elif partials.pre_aggregates(s):
            pod = partials.partial_key(layout, round, group[0])
            summed, refusals = _group_partial(store, pod, round, group, previous, limit, total, dtypes)
        else:
            summed, refusals = _updates(store, layout, round, group, previous, limit, total)
        replies.extend(summed)
        rejected.update(refusals)
        for client, reason in refusals.items():
            log.warning("round %d: rejected client %s: %s", round, client, reason)
    try:
        sums, _, _ = total.take_sums()
    except AggregationError:  # nothing valid: an empty partial still carries the batch's refusals
        sums = {name: np.zeros(spec.shape, dtype=np.float64) for name, spec in like.items()}
    uri = partials.save_partial(store, key, sums, round=round, replies=replies, rejected=rejected)
    log.info(
        "round %d: combined %d updates of %d %s (%d rejected) → %s",
        round,
        len(replies),
        len(batch),
        "pods" if level == 1 else f"level-{level - 1} batches",
        len(rejected),
        uri,
    )
    return key


def _group_partial(
    store: Store,
    key: str,
    round: int,
    group: list[str],
    previous: CheckpointManifest,
    limit: update_checks.ExampleLimit,
    total: WeightedAverage,
    dtypes: Mapping[str, np.dtype[np.generic]],
    writer: str = "train pod",
) -> tuple[list[ClientUpdate], dict[str, str]]:
    """The partial sum at ``key`` (written by a ``writer``: a pod, or a combine task of the level below)
    folded into ``total`` after the aggregator's checks; its clients and refusals."""
    summed: list[ClientUpdate] = []
    try:
        partials.read_partial_manifest(store, key, previous)
        ckpt = load_checkpoint(store, key, like=partials.partial_specs(previous.tensors))
    except CheckpointError as exc:
        refusals = update_checks.group_refused(group, exc, writer)
    else:
        summed, refusals = update_checks.partial_problem(ckpt.manifest, group, round, limit, group[0])
        if summed:
            total.add_sum(
                ckpt.arrays,
                sum(r.examples for r in summed),
                count=len(summed),
                dtypes=dtypes,
                source=f"partial sum of the group of client {group[0]}",
            )
    return summed, update_checks.unsummed(group, summed, refusals)


def _updates(
    store: Store,
    layout: RunLayout,
    round: int,
    group: list[str],
    previous: CheckpointManifest,
    limit: update_checks.ExampleLimit,
    total: WeightedAverage,
) -> tuple[list[ClientUpdate], dict[str, str]]:
    """A pod's clients' updates folded into ``total`` after the aggregator's checks."""
    summed: list[ClientUpdate] = []
    refusals: dict[str, str] = {}
    for client in group:
        try:
            ckpt = load_checkpoint(
                store, layout.update_key(round, client), like=previous.tensors, blob_size=previous.size
            )
        except CheckpointError as exc:
            refusals[client] = update_checks.update_refused(exc)
            continue
        m = ckpt.manifest
        problem = update_checks.update_problem(m, client, round, limit)
        if problem:
            refusals[client] = problem
            continue
        total.add(ckpt.arrays, m.examples, source=f"update from client {client}")
        summed.append(ClientUpdate(client, {}, m.examples, dict(m.metrics)))
    return summed, refusals
