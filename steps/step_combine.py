"""``combine``: one level of a tree of aggregate tasks (``cluster.aggregate_fanin``, linear strategies).

With very many train pods the aggregator would read one object per pod. With a fan-in ``F`` the round's
distribute step also cuts its pods (``plan.groups``) into batches of at most ``F`` consecutive pods,
labelled by index range (``round 3 / pods 0-31``), and one ``combine`` task per batch reads the batch's
outputs — each pod's partial sum (``clients_per_pod > 1``) or its client's update (one client a pod) —
checks them exactly as the aggregator does, and writes one float64 partial sum at
``round-NNNN/partials/combined-<first client>`` (:func:`~argofl.steps.partials.save_partial`): the sum,
the clients it holds with their examples and metrics, and every refused client with its reason (a pod's
own refusals and the combine's). The aggregate step then reads ``⌈pods / F⌉`` combined partials, checked
as a group's partial, so per-client metrics, ``min_clients``, rejection reasons and the example-count
checks work as before.

Only the float64 summation order differs from flat aggregation (see :mod:`~argofl.steps.partials` for
the bound: a float32 weight of the global differs by at most one ulp). A combine task that finds its
partial already committed (a retry) leaves it; recomputing it gives the same bytes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import numpy as np

from argofl.steps import labels, partials, update_checks
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

__all__ = ["combine_batches", "refuse_nonlinear", "run"]

log = logging.getLogger(__name__)


def refuse_nonlinear(settings: Settings, fanin: int, where: str) -> None:
    """One error line when ``fanin`` is set for a strategy whose rule is not a weighted sum."""
    if fanin and not STRATEGIES[settings.strategy].linear:
        linear = sorted(name for name, info in STRATEGIES.items() if info.linear)
        raise RunError(
            f"{where}: aggregate_fanin {fanin} needs a linear strategy ({', '.join(linear)}); strategy "
            f"{settings.strategy!r} aggregates all updates at once: set aggregate_fanin: 0"
        )


def combine_batches(round: int, pods: int, fanin: int) -> list[str]:
    """Labels of the combine tasks' batches: ``pods`` pods cut into runs of at most ``fanin``."""
    return [labels.pods_label(round, i, min(i + fanin, pods) - 1) for i in range(0, pods, fanin)]


def run(*, run_key: str, round: int, pods: str) -> dict[str, float]:
    """Sum the outputs of the round's pods ``pods`` (a batch label) into one partial; returns its
    ``clients`` (summed) and ``rejected`` counts."""
    store, layout, record = open_run(run_key)
    s = record.settings
    refuse_nonlinear(s, 1, f"combine round {round}")
    plan_key = layout.plan_key(round)
    try:
        plan = json.loads(store.get_bytes(plan_key))
        groups = [labels.parse_clients(str(g), round=round) for g in plan["groups"]]
    except Exception as exc:
        raise RunError(f"round {round} has no readable plan at {store.key_uri(plan_key)}: {exc}") from None
    first, last = labels.parse_pods(pods, round=round)
    if last >= len(groups):
        raise RunError(
            f"combine {pods!r}: round {round} has {len(groups)} pods (0-{len(groups) - 1}); nothing written"
        )
    batch = groups[first : last + 1]
    key = partials.combined_key(layout, round, batch[0][0])
    if checkpoint_exists(store, key):
        log.info("pods %s: round %d combined partial already committed; leaving it", pods, round)
        manifest = load_manifest(store, key)
    else:
        manifest = load_manifest(store, _combine(store, layout, s, record, round, batch, key))
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
) -> str:
    """Fold the batch's valid pod outputs and commit the combined partial at ``key``; returns ``key``."""
    previous = load_manifest(store, layout.global_key(round - 1))
    like = previous.tensors
    dtypes = {name: np.dtype(spec.dtype) for name, spec in like.items()}
    limit = example_limit(s, record.data)
    total = WeightedAverage()
    replies: list[ClientUpdate] = []
    rejected: dict[str, str] = {}
    for group in batch:
        if partials.pre_aggregates(s):
            summed, refusals = _group_partial(store, layout, round, group, previous, limit, total, dtypes)
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
        "round %d: combined %d updates of %d pods (%d rejected) → %s",
        round,
        len(replies),
        len(batch),
        len(rejected),
        uri,
    )
    return key


def _group_partial(
    store: Store,
    layout: RunLayout,
    round: int,
    group: list[str],
    previous: CheckpointManifest,
    limit: update_checks.ExampleLimit,
    total: WeightedAverage,
    dtypes: Mapping[str, np.dtype[np.generic]],
) -> tuple[list[ClientUpdate], dict[str, str]]:
    """A pod's partial sum folded into ``total`` after the aggregator's checks; its clients and refusals."""
    key = partials.partial_key(layout, round, group[0])
    summed: list[ClientUpdate] = []
    try:
        partials.read_partial_manifest(store, key, previous)
        ckpt = load_checkpoint(store, key, like=partials.partial_specs(previous.tensors))
    except CheckpointError as exc:
        refusals = update_checks.group_refused(group, exc)
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
