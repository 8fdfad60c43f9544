"""``aggregate``: validate the round's client updates and fold them into the new global checkpoint.

Updates are loaded one at a time (memory O(model)). An update that is missing (its train step
failed), corrupt, of the wrong shape or non-finite is rejected with a logged reason; the round
goes on with the rest as long as at least ``min_clients`` valid updates remain.

The step never talks to MLflow: it writes the round's report (:mod:`~argofl.steps.round_report`)
before the global checkpoint, and the evaluate step logs it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import numpy as np

from argofl.steps import combine_plan, labels, partials, round_report, update_checks
from argofl.steps.checkpoint import (
    CheckpointError,
    CheckpointManifest,
    CheckpointNotFound,
    TensorSpec,
    checkpoint_exists,
    checkpoint_keys,
    load_checkpoint,
    load_manifest,
    open_checkpoint,
    save_checkpoint,
)
from argofl.steps.checkpoint_stream import open_streamed
from argofl.steps.client_limits import example_limit
from argofl.steps.privacy import noise_seed
from argofl.steps.runinfo import RunError, RunLayout, RunRecord, load_secret, open_run
from argofl.steps.store import Store
from argofl.steps.strategies import (
    STRATEGIES,
    AggregationError,
    ClientUpdate,
    PartialSum,
    Strategy,
    get_strategy,
)

log = logging.getLogger(__name__)


class NotEnoughUpdates(AggregationError):
    """Fewer valid updates than ``min_clients``."""


def run(*, run_key: str, round: int) -> dict[str, float]:
    """Aggregate ``round``; returns the aggregated train metrics."""
    store, layout, record = open_run(run_key)
    global_key = layout.global_key(round)
    if checkpoint_exists(store, global_key):
        log.warning(
            "round %d is already aggregated at %s; leaving it untouched", round, store.key_uri(global_key)
        )
        return _ensure_report(store, layout, round)
    try:
        plan = json.loads(store.get_bytes(layout.plan_key(round)))
        clients = sorted((str(c) for c in plan["clients"]), key=int)
        levels = combine_plan.level_count(plan)  # a tree of aggregate tasks: read its last level's partials
        groups = (
            combine_plan.level_groups(plan, round, levels)
            if levels
            else [labels.parse_clients(str(g), round=round) for g in plan["groups"]]
            if partials.pre_aggregates(record.settings)
            else []
        )
    except Exception as exc:
        raise RunError(
            f"round {round} has no readable plan at {store.key_uri(layout.plan_key(round))}: {exc}"
        ) from None
    scratch = tempfile.TemporaryDirectory(prefix="argofl-updates-")
    try:
        _aggregate(store, layout, record, round, clients, groups, Path(scratch.name), levels=levels)
    finally:
        scratch.cleanup()
    return dict(load_manifest(store, global_key).metrics)


def _aggregate(
    store: Store,
    layout: RunLayout,
    record: RunRecord,
    round: int,
    clients: list[str],
    groups: list[list[str]],
    scratch: Path,
    *,
    levels: int = 0,
) -> None:
    """Fold the round's valid updates (or, with a linear strategy and groups of clients per pod, the
    groups' partial sums; with ``levels`` of combine tasks, the last level's) and commit the new global
    checkpoint (and server state)."""
    s = record.settings
    global_key = layout.global_key(round)
    # the previous global is verified in one streaming pass and read only by strategies that use it
    previous_manifest, previous = open_streamed(
        store, layout.global_key(round - 1), scratch=scratch, keep=True
    )
    like = previous_manifest.tensors
    limit = example_limit(s, record.data)
    rejected: dict[str, str] = {}
    accepted: list[ClientUpdate] = []  # metadata only; arrays are dropped after folding
    seed = None
    if STRATEGIES[s.strategy].secret:
        seed = noise_seed(load_secret(store, layout), "round", str(round), "server")
    strategy = get_strategy(s.strategy, noise_seed=seed, **s.server_options())

    def load(client: str) -> _Loaded:
        """Client ``client``'s update, verified: lazy arrays for a per-tensor strategy (memory
        O(clients × largest tensor)), streamed ones otherwise (folded chunk by chunk, memory O(model))."""
        key = layout.update_key(round, client)
        if strategy.per_tensor:
            return _Loaded(*open_checkpoint(store, key, scratch, like=like, blob_size=previous_manifest.size))
        manifest, arrays = open_streamed(
            store, key, like=like, blob_size=previous_manifest.size, scratch=scratch
        )
        return _Loaded(manifest, arrays, arrays.close)

    def updates() -> Iterator[ClientUpdate]:
        for client, ckpt in _read_ahead(clients, load):
            if isinstance(ckpt, CheckpointError):
                rejected[client] = update_checks.update_refused(ckpt)
            else:
                try:
                    problem = update_checks.update_problem(ckpt.manifest, client, round, limit)
                    if problem:
                        rejected[client] = problem
                    else:
                        update = ClientUpdate(
                            client, ckpt.arrays, ckpt.manifest.examples, ckpt.manifest.metrics
                        )
                        accepted.append(ClientUpdate(client, {}, update.examples, update.metrics))
                        yield update
                finally:
                    ckpt.close()  # a per-tensor strategy's lazy arrays stay readable: it reads them last
            if client in rejected:
                log.warning("round %d: rejected client %s: %s", round, client, rejected[client])

    def partial_sums() -> Iterator[PartialSum]:
        like64 = partials.partial_specs(like)
        dtypes = {name: np.dtype(spec.dtype) for name, spec in like.items()}
        by_first = {group[0]: group for group in groups if group}

        def load(first: str) -> _Loaded:
            key = _partial_key(layout, round, first, levels)
            partials.read_partial_manifest(store, key, previous_manifest)
            manifest, arrays = open_streamed(store, key, like=like64, scratch=scratch)
            return _Loaded(manifest, arrays, arrays.close)

        for first, loaded in _read_ahead(list(by_first), load):
            group = by_first[first]
            replies: list[ClientUpdate] = []
            if isinstance(loaded, CheckpointError):
                refusals = update_checks.group_refused(
                    group, loaded, "combine task" if levels else "train pod"
                )
            else:
                try:
                    replies, refusals = update_checks.partial_problem(
                        loaded.manifest, group, round, limit, first
                    )
                    if replies:
                        accepted.extend(replies)
                        yield PartialSum(loaded.arrays, tuple(replies), dtypes)
                finally:
                    loaded.close()
            for client, reason in update_checks.unsummed(group, replies, refusals).items():
                rejected[client] = reason
                log.warning("round %d: rejected client %s: %s", round, client, reason)

    hierarchical = bool(groups)
    state = _load_state(store, layout, round, strategy, previous)
    try:
        # only a linear strategy (FedAvg's fold) is given partial sums
        folded = cast(Iterator[ClientUpdate], partial_sums()) if hierarchical else updates()
        weights, metrics, new_state = strategy.aggregate(previous, folded, state)
    except AggregationError as exc:
        if not accepted:
            weights, metrics, new_state = {}, {}, {}
        else:
            raise AggregationError(f"round {round}: {exc}") from None
    finally:
        previous.close()
    if len(accepted) < s.min_clients:
        ids = sorted(rejected, key=int)
        why = f"; client {ids[0]}: {rejected[ids[0]]}" if ids else ""
        raise NotEnoughUpdates(
            f"round {round}: {len(accepted)} valid updates of {len(clients)} sampled clients, "
            f"need min_clients={s.min_clients}; global checkpoint not written (rejected: {ids}{why})"
        )
    metrics["rejected"] = float(len(rejected))
    account = getattr(strategy, "epsilon", None)
    if account is not None:  # dp-fedavg: the privacy spent after this round
        metrics["dp_epsilon"] = account(rounds=round, sample_rate=len(clients) / s.clients)
    # before the global checkpoint, which commits the round: a committed round has its report (a
    # retry that finds no global rewrites it with the same content)
    rows = [(u.client, u.examples, u.metrics) for u in accepted]
    round_report.save(store, layout, round_report.build(round, metrics, rows, rejected))
    if strategy.stateful and not checkpoint_exists(store, layout.server_state_key(round)):
        # before the global checkpoint: a committed global always has its state (a retried step
        # that finds the state already written recomputes the same bytes and keeps it)
        save_checkpoint(store, layout.server_state_key(round), new_state, round=round)
    uri = save_checkpoint(
        store,
        global_key,
        weights,
        round=round,
        examples=int(metrics["examples"]),
        metrics=metrics,
        extra={
            "clients": ",".join(u.client for u in accepted),
            "rejected": json.dumps(rejected, sort_keys=True),
            **({"partials": ",".join(g[0] for g in groups if g)} if hierarchical else {}),
            **({"combined": "true"} if levels else {}),
            **({"combine_levels": str(levels)} if levels > 1 else {}),
        },
    )
    log.info("round %d: aggregated %d updates (%d rejected) → %s", round, len(accepted), len(rejected), uri)


def _ensure_report(store: Store, layout: RunLayout, round: int) -> dict[str, float]:
    """The committed round's metrics; its report rebuilt from the committed manifests (the global's and
    its clients') if it has none (a round committed by an earlier release)."""
    manifest = load_manifest(store, layout.global_key(round))
    metrics = dict(manifest.metrics)
    if not store.exists(round_report.report_key(layout, round)):
        clients = [c for c in manifest.extra.get("clients", "").split(",") if c]
        rows = _client_rows(store, layout, round, manifest, clients)
        rejected = json.loads(manifest.extra.get("rejected", "{}"))
        round_report.save(store, layout, round_report.build(round, metrics, rows, rejected))
    return metrics


def _client_rows(
    store: Store, layout: RunLayout, round: int, manifest: CheckpointManifest, clients: list[str]
) -> list[tuple[str, int, Mapping[str, float]]]:
    """(client, examples, metrics) of each aggregated client: from its update's manifest, or (with
    hierarchical aggregation) from its group's partial sum."""
    if "partials" not in manifest.extra:
        rows: list[tuple[str, int, Mapping[str, float]]] = []
        for client in clients:
            client_manifest = load_manifest(store, layout.update_key(round, client))
            rows.append((client, client_manifest.examples, client_manifest.metrics))
        return rows
    replies: dict[str, ClientUpdate] = {}
    levels = int(manifest.extra.get("combine_levels", "1")) if manifest.extra.get("combined") == "true" else 0
    for first in filter(None, manifest.extra["partials"].split(",")):
        key = _partial_key(layout, round, first, levels)
        if checkpoint_exists(store, key):
            summed, _ = partials.replies_of(load_manifest(store, key), store.key_uri(key))
            replies.update((r.client, r) for r in summed)
    return [(c, replies[c].examples, replies[c].metrics) for c in clients]


def _partial_key(layout: RunLayout, round: int, first: str, levels: int) -> str:
    """The partial the aggregate reads for the group whose first client is ``first``: a pod's (no
    combine tasks), else the last of ``levels`` combine levels'."""
    return (
        partials.combined_key(layout, round, first, levels)
        if levels
        else partials.partial_key(layout, round, first)
    )


def _load_state(
    store: Store, layout: RunLayout, round: int, strategy: Strategy, global_weights: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The server optimizer's state after ``round - 1`` (empty before the first round)."""
    if not strategy.stateful or round == 1:
        return {}
    like = {
        name: TensorSpec(dtype, shape)
        for name, (dtype, shape) in strategy.state_specs(global_weights).items()
    }
    key = layout.server_state_key(round - 1)
    try:
        return dict(load_checkpoint(store, key, like=like).arrays)
    except CheckpointNotFound:
        raise RunError(
            f"round {round} ({strategy.name}) needs the server state of round {round - 1} at "
            f"{store.key_uri(key)}, which does not exist"
        ) from None


class _Loaded:
    """An update as the aggregate step reads it: its manifest, its lazy arrays and how to release them."""

    def __init__(
        self,
        manifest: CheckpointManifest,
        arrays: Mapping[str, np.ndarray],
        close: Callable[[], None] = lambda: None,
    ) -> None:
        self.manifest = manifest
        self.arrays = arrays
        self.close = close


READ_AHEAD = 2
"""Updates verified ahead of the fold, each in its own thread: hashing (the costliest part) then runs
on two cores while the fold runs on a third, or shares two; memory grows by a 4 MB buffer each."""


def _read_ahead(
    clients: list[str], load: Callable[[str], _Loaded], depth: int = READ_AHEAD
) -> Iterator[tuple[str, _Loaded | CheckpointError]]:
    """``(client, load(client))`` in order, loading (reading, hashing, validating) the next ``depth``
    clients' updates in threads while the caller folds the current one; a rejected update comes as
    its error. hashlib, file reads and numpy release the GIL, so verifying and folding overlap."""

    def attempt(client: str) -> _Loaded | CheckpointError:
        try:
            return load(client)
        except CheckpointError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=depth, thread_name_prefix="argofl-read-ahead") as pool:
        pending = deque(pool.submit(attempt, client) for client in clients[:depth])
        try:
            for i, client in enumerate(clients):
                result = pending.popleft().result()
                if i + depth < len(clients):
                    pending.append(pool.submit(attempt, clients[i + depth]))
                yield client, result
        finally:  # abandoned early (an error while folding): release what was read ahead
            for future in pending:
                with contextlib.suppress(Exception):
                    loaded = future.result()
                    if isinstance(loaded, _Loaded):
                        loaded.close()


def export_global(*, run_key: str, round: int, directory: Path) -> list[Path]:
    """Copy the committed global checkpoint of ``round`` (blob and manifest) into ``directory``."""
    store, layout, _ = open_run(run_key)
    blob_key, manifest_key = checkpoint_keys(layout.global_key(round))
    return [store.get_file(key, directory / key.rsplit("/", 1)[-1]) for key in (blob_key, manifest_key)]
