"""Hierarchical aggregation for linear strategies: a train pod's one pre-aggregated partial sum.

With a linear strategy (:attr:`StrategyInfo.linear`: FedAvg and its server optimizers) and
``clients_per_pod > 1``, a pod validates each of its clients' updates as the aggregator would (tensor
specs equal to the global's, finite floats, at least one example), folds the valid ones into float64
sums ``Σ examples·weights`` in the group's order and writes one checkpoint at
``round-NNNN/partials/group-<first client>``: those sums, ``examples`` their total, and in ``extra``
each client's examples and metrics (``clients``) and the reasons for the refused ones (``rejected``).
The aggregator then reads one object per group; per-client metrics and checks keep working from
``extra``.

Compared with flat aggregation only the float64 summation order changes (the groups' sums are added
to each other rather than every update to one running sum): the float64 sums differ by at most about
``clients × 2⁻⁵³ × Σ examples·|weights|``. Where that is far below a float32 ulp of the mean (2⁻²⁴
relative) — the clients' values do not nearly cancel — a float32 weight of the global checkpoint
differs from the flat one by at most one ulp, and only when its float64 mean lies that close to a
float32 rounding boundary (in practice the bytes are the same). A weight whose clients nearly cancel
(mean ≪ the example-weighted mean of ``|weights|``) can differ by more ulps of its own small value,
but by no more than that float64 rounding: still below one float32 ulp of the clients' ``|weights|``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import numpy as np

from argofl.steps.checkpoint import (
    FLOAT_DTYPES,
    CheckpointCorrupt,
    CheckpointManifest,
    CheckpointMismatch,
    TensorSpec,
    load_manifest,
    save_checkpoint,
    spec_difference,
)
from argofl.steps.runinfo import RunLayout
from argofl.steps.settings import Settings
from argofl.steps.store import Store, join_key
from argofl.steps.strategies import STRATEGIES, ClientUpdate

__all__ = [
    "combined_key",
    "partial_key",
    "partial_specs",
    "pre_aggregates",
    "read_partial_manifest",
    "replies_of",
    "save_partial",
    "update_problem",
]


def pre_aggregates(settings: Settings) -> bool:
    """Whether a round's train pods send partial sums instead of per-client updates."""
    return STRATEGIES[settings.strategy].linear and settings.clients_per_pod > 1


def partial_key(layout: RunLayout, round: int, first_client: str) -> str:
    """The checkpoint key of the partial sum of the group whose first client is ``first_client``."""
    return join_key(layout.round_prefix(round), "partials", f"group-{first_client}")


def combined_key(layout: RunLayout, round: int, first_client: str, level: int = 1) -> str:
    """The key of a combine task's partial sum at tree ``level`` (the sum of a batch of the level
    below's outputs, see :mod:`~argofl.steps.step_combine`) whose first client is ``first_client``:
    ``combined-<first client>`` at level 1, ``combined-l<level>-<first client>`` deeper."""
    name = f"combined-{first_client}" if level == 1 else f"combined-l{level}-{first_client}"
    return join_key(layout.round_prefix(round), "partials", name)


def partial_specs(like: Mapping[str, TensorSpec]) -> dict[str, TensorSpec]:
    """The tensors of a partial sum of updates shaped like ``like``: the same names and shapes, float64."""
    return {name: TensorSpec("float64", spec.shape) for name, spec in like.items()}


def update_problem(weights: Mapping[str, np.ndarray], like: Mapping[str, TensorSpec], client: str) -> str:
    """Why client ``client``'s trained ``weights`` cannot be summed ("" when they can): the checks
    the aggregator makes on an update (tensor names, dtypes and shapes as the global's, finite floats)."""
    found = {name: TensorSpec(np.asarray(a).dtype.name, np.shape(a)) for name, a in weights.items()}
    problem = spec_difference(found, like, f"update from client {client}")
    if problem:
        return problem
    for name in sorted(weights):
        array = np.asarray(weights[name])
        if array.dtype.name in FLOAT_DTYPES and not np.isfinite(array).all():
            bad = array.size - int(np.count_nonzero(np.isfinite(array)))
            return f"update from client {client} has {bad} non-finite (NaN/Inf) values in {name}"
    return ""


def save_partial(
    store: Store,
    key: str,
    sums: Mapping[str, np.ndarray],
    *,
    round: int,
    replies: list[ClientUpdate],
    rejected: Mapping[str, str],
) -> str:
    """Commit a group's partial sum (``replies``: the summed clients, without arrays, in order)."""
    return save_checkpoint(
        store,
        key,
        sums,
        round=round,
        examples=sum(r.examples for r in replies),
        extra={
            "clients": json.dumps([[r.client, r.examples, dict(r.metrics)] for r in replies]),
            "rejected": json.dumps(dict(rejected), sort_keys=True),
        },
    )


def read_partial_manifest(store: Store, key: str, global_manifest: CheckpointManifest) -> CheckpointManifest:
    """The manifest of the partial at ``key``, refused before its blob is read when it says more bytes
    than float64 copies of the global's tensors can take."""
    manifest = load_manifest(store, key)
    elements = sum(math.prod(spec.shape) for spec in global_manifest.tensors.values())
    data = sum(math.prod(s.shape) * np.dtype(s.dtype).itemsize for s in global_manifest.tensors.values())
    # the header differs from the global's only in dtype codes and offsets: 40 bytes a tensor at most
    most = 8 * elements + (global_manifest.size - data) + 40 * len(global_manifest.tensors) + 8
    if manifest.size > most:
        raise CheckpointMismatch(
            f"partial sum {store.key_uri(key)}: manifest says {manifest.size} bytes, float64 sums of the "
            f"global's tensors take at most {most}; not read"
        )
    return manifest


def replies_of(manifest: CheckpointManifest, where: str) -> tuple[list[ClientUpdate], dict[str, str]]:
    """The summed clients (without arrays) and the refused ones of a partial's manifest."""
    try:
        listed = json.loads(manifest.extra["clients"])
        rejected = json.loads(manifest.extra.get("rejected", "{}"))
        replies = [
            ClientUpdate(str(client), {}, int(examples), {str(k): float(v) for k, v in metrics.items()})
            for client, examples, metrics in listed
        ]
        if not isinstance(rejected, dict) or not all(isinstance(v, str) for v in rejected.values()):
            raise ValueError("rejected must map client to reason")
        if not all(math.isfinite(v) for r in replies for v in r.metrics.values()):
            raise ValueError("metrics must be finite")
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointCorrupt(
            f"partial sum {where}: extra.clients must be [[client, examples, {{metric: value}}], …] and "
            f"extra.rejected {{client: reason}}; found {manifest.extra!r:.200} ({exc})"
        ) from None
    return replies, {str(k): v for k, v in rejected.items()}
