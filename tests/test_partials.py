"""Hierarchical aggregation: with a linear strategy and several clients per pod, each pod writes one
partial sum and the aggregator reads groups, giving the flat global checkpoint to within one float32
ulp where clients' values do not nearly cancel (see steps/partials.py for the bound), with per-client
metrics and checks kept."""

from __future__ import annotations

import json
from fractions import Fraction

import mlflow
import numpy as np
import pytest

from argofl.steps import partials, step_aggregate, step_distribute, step_evaluate, step_init, step_train
from argofl.steps.checkpoint import TensorSpec, checkpoint_exists, checkpoint_keys, load_checkpoint
from argofl.steps.runinfo import RunLayout, open_run
from argofl.steps.settings import Settings
from argofl.steps.store import FileStore
from argofl.steps.strategies import STRATEGIES, WeightedAverage
from tests.stores import assert_within_one_ulp, step_store  # noqa: F401  (fixture: store)


def test_only_weighted_sum_strategies_are_linear() -> None:
    assert {name for name, info in STRATEGIES.items() if info.linear} == {
        "fedavg",
        "fedavgm",
        "fedadam",
        "fedprox",
    }


def _updates(count: int) -> list[tuple[dict[str, np.ndarray], int]]:
    rng = np.random.default_rng(7)
    return [
        (
            {
                "w": rng.standard_normal(20_000).astype(np.float32) * np.float32(10.0 ** rng.integers(-3, 3)),
                "d": rng.standard_normal(50),
                "n": np.array(rng.integers(0, 1000), dtype=np.int64),
            },
            int(rng.integers(1, 500)),
        )
        for _ in range(count)
    ]


def _grouped(updates: list[tuple[dict[str, np.ndarray], int]], size: int) -> dict[str, np.ndarray]:
    total = WeightedAverage()
    for start in range(0, len(updates), size):
        group = WeightedAverage()
        for arrays, weight in updates[start : start + size]:
            group.add(arrays, weight)
        sums, group_weight, count = group.take_sums()
        total.add_sum(sums, group_weight, count=count, dtypes={k: a.dtype for k, a in updates[0][0].items()})
    return total.result()


def test_group_sums_give_the_flat_mean_to_one_float32_ulp() -> None:
    updates = _updates(24)
    flat = WeightedAverage()
    for arrays, weight in updates:
        flat.add(arrays, weight)
    want = flat.result()
    for size in (2, 5, 8):
        got = _grouped(updates, size)
        assert got["w"].dtype == np.float32
        np.testing.assert_array_max_ulp(got["w"], want["w"], maxulp=1)
        np.testing.assert_allclose(got["d"], want["d"], rtol=24 * 2.0**-52, atol=0)
        assert got["n"] == want["n"]
    one_group = _grouped(updates, len(updates))  # 0 + s = s: one group is the flat fold exactly
    assert all(one_group[k].tobytes() == want[k].tobytes() for k in want)


def test_where_clients_cancel_the_group_sums_differ_by_float64_rounding_of_the_magnitudes() -> None:
    # a weight whose clients nearly cancel: its mean (~4e-13) is far below the clients' |w| (~10), so
    # float64 rounding of Σ examples·w (~2⁻⁵³·Σ examples·|w|) is many float32 ulps of the mean itself
    values = np.array([1.7589882458576844e-12, 1.08821439743042, -3.3824453353881836, 5.516496181488037])
    values = values.astype(np.float32)
    examples = [51, 2, 30, 18]
    updates = [({"w": np.array([v], np.float32)}, e) for v, e in zip(values, examples, strict=True)]
    flat = WeightedAverage()
    for arrays, weight in updates:
        flat.add(arrays, weight)
    want = flat.result()["w"]
    got = _grouped(updates, 2)["w"]  # (s0 + s1) + (s2 + s3) against ((s0 + s1) + s2) + s3
    products = values.astype(np.float64) * examples
    exact = float(sum(Fraction(float(p)) for p in products) / sum(examples))
    magnitude = float(np.abs(products).sum() / sum(examples))
    ulps = abs(int(got.view(np.int32)[0]) - int(want.view(np.int32)[0]))
    assert ulps > 1  # so "within one ulp" holds only relative to the magnitude, as documented
    for result in (got, want):  # each is the exact mean to within float64 rounding of the magnitudes
        assert abs(float(result[0]) - exact) <= 3 * 2.0**-53 * magnitude + np.spacing(result[0])
    assert abs(float(got[0]) - float(want[0])) <= np.spacing(np.float32(magnitude))  # a float32 ulp of |w|


# ------------------------------------------------------------------------ the steps, end to end


BASE = {"experiment": "partials", "data_limit": 600, "clients": 8, "min_clients": 2, "rounds": 1}


def _init(run_key: str, **overrides: object) -> None:
    """Start a run of :data:`BASE` with ``overrides``."""
    settings = Settings.from_mapping({**BASE, **overrides})
    step_init.run(settings, run_key=run_key, workflow_name="w", workflow_uid="u")


def _distributed(run_key: str, **overrides: object) -> list[str]:
    """Start a one-round run in pods of four clients; the groups its round 1 is distributed in."""
    _init(run_key, clients_per_pod=4, **overrides)
    return step_distribute.run(run_key=run_key, round=1)


def _run(run_key: str, rounds: int, **overrides: object) -> list[dict[str, float]]:
    _init(run_key, rounds=rounds, **overrides)
    out = []
    for round in range(1, rounds + 1):
        for group in step_distribute.run(run_key=run_key, round=round):
            step_train.run(run_key=run_key, round=round, clients=group)
        out.append(step_aggregate.run(run_key=run_key, round=round))
    return out


def _metrics(run_key: str) -> dict[str, float]:
    """The run's latest MLflow metrics."""
    _, _, record = open_run(run_key)
    return dict(mlflow.MlflowClient().get_run(record.mlflow_run_id).data.metrics)


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam"])
def test_pods_of_four_give_the_flat_checkpoints(store: FileStore, strategy: str) -> None:
    options = {"strategy": strategy, **({"server_lr": 0.01} if strategy == "fedadam" else {})}
    flat = _run(f"partials/flat-{strategy}", 2, clients_per_pod=1, **options)
    grouped = _run(f"partials/grouped-{strategy}", 2, clients_per_pod=4, **options)
    flat_layout, grouped_layout = (
        RunLayout(f"partials/flat-{strategy}"),
        RunLayout(f"partials/grouped-{strategy}"),
    )
    for round in (1, 2):
        got, want = assert_within_one_ulp(
            store, grouped_layout.global_key(round), flat_layout.global_key(round)
        )
        assert got.manifest.extra["clients"] == want.manifest.extra["clients"]
        assert "partials" in got.manifest.extra
        assert "partials" not in want.manifest.extra
        # the pods wrote one partial each, no per-client update
        assert not any(
            store.exists(checkpoint_keys(grouped_layout.update_key(round, str(c)))[1]) for c in range(8)
        )
        for key in ("loss", "accuracy", "examples", "clients"):
            assert grouped[round - 1][key] == pytest.approx(flat[round - 1][key], rel=1e-12)
    assert grouped[0]["clients"] == 8
    for run_key in (f"partials/flat-{strategy}", f"partials/grouped-{strategy}"):
        step_evaluate.run(run_key=run_key, round=2)  # logs the aggregate step's report to MLflow
    flat_mlflow = _metrics(f"partials/flat-{strategy}")
    grouped_mlflow = _metrics(f"partials/grouped-{strategy}")
    for key in ("clients_aggregated", "client_train_loss_count", "client_train_loss_median"):
        assert grouped_mlflow[key] == pytest.approx(flat_mlflow[key], rel=1e-9), key


def _rewrite_partial(store: FileStore, layout: RunLayout, first: str, change: dict[str, object]) -> None:
    _, manifest_key = checkpoint_keys(partials.partial_key(layout, 1, first))
    doc = json.loads(store.get_bytes(manifest_key))
    clients = json.loads(doc["extra"]["clients"])
    for row in clients:
        if row[0] in change:
            row[1] = change[row[0]]
    doc["extra"]["clients"] = json.dumps(clients)
    doc["examples"] = sum(row[1] for row in clients)
    store.put_bytes(manifest_key, json.dumps(doc).encode())


def test_a_group_claiming_too_many_examples_is_refused_whole(store: FileStore, caplog) -> None:
    run_key = "partials/claims"
    groups = _distributed(run_key, min_clients=4)
    layout = RunLayout(run_key)
    for group in groups:
        step_train.run(run_key=run_key, round=1, clients=group)
    assert step_train.run(run_key=run_key, round=1, clients=groups[0])["seconds"] == 0.0  # a retry
    _rewrite_partial(store, layout, "4", {"5": 10**12})
    metrics = step_aggregate.run(run_key=run_key, round=1)
    assert metrics["clients"] == 4
    assert metrics["rejected"] == 4
    rejected = json.loads(load_checkpoint(store, layout.global_key(1)).manifest.extra["rejected"])
    assert sorted(rejected, key=int) == ["4", "5", "6", "7"]
    assert (
        "partial sum of the group of client 4 is refused: client 5 claims 1000000000000 examples"
        in rejected["4"]
    )


def test_min_clients_counts_clients_not_pods(store: FileStore) -> None:
    run_key = "partials/min"
    groups = _distributed(run_key, min_clients=5)
    layout = RunLayout(run_key)
    step_train.run(run_key=run_key, round=1, clients=groups[0])  # the second pod never ran
    with pytest.raises(step_aggregate.NotEnoughUpdates, match="4 valid updates of 8 sampled clients"):
        step_aggregate.run(run_key=run_key, round=1)
    assert not checkpoint_exists(store, layout.global_key(1))


def test_a_pod_refuses_a_non_finite_update_and_sums_the_others(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Client 1 sends NaN (through the test-only attack hook): its pod leaves it out of the sum with
    the reason, which the aggregator reports; the group's other clients count."""

    def nan_update(attack: str, trained: dict, global_weights: dict, *, scale: float, seed: int) -> dict:
        out = {name: np.array(value, copy=True) for name, value in trained.items()}
        first = sorted(out)[0]
        out[first].flat[:3] = np.nan
        return out

    monkeypatch.setattr(step_train.attacks, "poison_update", nan_update)
    run_key = "partials/nan"
    for group in _distributed(run_key, attack="sign-flip", attack_clients="1"):
        step_train.run(run_key=run_key, round=1, clients=group)
    layout = RunLayout(run_key)
    summed, refused = partials.replies_of(
        load_checkpoint(store, partials.partial_key(layout, 1, "0")).manifest, "group 0"
    )
    assert [r.client for r in summed] == ["0", "2", "3"]
    assert list(refused) == ["1"]
    assert "update from client 1 has 3 non-finite (NaN/Inf) values in" in refused["1"]
    metrics = step_aggregate.run(run_key=run_key, round=1)
    assert (metrics["clients"], metrics["rejected"]) == (7, 1)
    rejected = json.loads(load_checkpoint(store, layout.global_key(1)).manifest.extra["rejected"])
    assert rejected == refused


def test_update_problem_names_what_the_aggregator_would_refuse() -> None:
    like = {"w": TensorSpec("float32", (2, 2)), "n": TensorSpec("int64", ())}
    good = {"w": np.ones((2, 2), np.float32), "n": np.array(3)}
    assert partials.update_problem(good, like, "5") == ""
    assert "w of shape (4,), expected (2, 2)" in partials.update_problem(
        {**good, "w": np.ones(4, np.float32)}, like, "5"
    )
    assert "missing n" in partials.update_problem({"w": good["w"]}, like, "5")
    inf = {**good, "w": np.array([[1, np.inf], [2, 3]], np.float32)}
    assert partials.update_problem(inf, like, "5") == (
        "update from client 5 has 1 non-finite (NaN/Inf) values in w"
    )
