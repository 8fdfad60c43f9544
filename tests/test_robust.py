"""Robust aggregation: exact results on hand-made arrays, streaming equals in-memory, memory per tensor."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from argofl.steps.checkpoint import open_checkpoint, save_checkpoint
from argofl.steps.robust import Krum, Median, TrimmedMean
from argofl.steps.settings import Settings, SettingsError
from argofl.steps.store import FileStore
from argofl.steps.strategies import STRATEGIES, AggregationError, ClientUpdate, get_strategy


def updates(*values: list[float], examples: list[int] | None = None) -> list[ClientUpdate]:
    """One update per argument: tensor ``w`` (float32) with those values, counter ``n`` = index."""
    return [
        ClientUpdate(
            str(i),
            {"w": np.array(v, dtype=np.float32), "n": np.array([i], dtype=np.int64)},
            (examples or [1] * len(values))[i],
            {"loss": float(i)},
        )
        for i, v in enumerate(values)
    ]


def test_median_of_an_even_count_is_the_mean_of_the_middle_two():
    out = Median().aggregate({}, updates([1, 10], [3, -2], [8, 0], [100, 4]))
    np.testing.assert_array_equal(out.weights["w"], np.array([5.5, 2.0], np.float32))
    assert out.weights["w"].dtype == np.float32
    assert out.weights["n"].tolist() == [2]  # median of 0..3 is 1.5, rounded half to even
    assert out.metrics["clients"] == 4.0


def test_median_ignores_claimed_example_counts():
    out = Median().aggregate({}, updates([0.0], [1.0], [50.0], examples=[1, 1, 10**6]))
    assert out.weights["w"].tolist() == [1.0]
    assert out.metrics["examples"] == 10**6 + 2  # the metrics still report what clients claimed


def test_trimmed_mean_cuts_floor_beta_n_at_each_end_with_ties():
    # n = 5, β = 0.2 → one value cut at each end; ties at both ends of column 0, at the top of column 1
    values: list[list[float]] = [[1, 0], [1, 7], [2, 7], [9, 7], [9, -30]]
    out = TrimmedMean(trim_beta=0.2).aggregate({}, updates(*values))
    np.testing.assert_array_equal(out.weights["w"], np.array([(1 + 2 + 9) / 3, (0 + 7 + 7) / 3], np.float32))
    # β below 1/n cuts nothing: the plain (unweighted) mean
    plain = TrimmedMean(trim_beta=0.1).aggregate({}, updates(*values))
    np.testing.assert_allclose(plain.weights["w"], np.mean(values, axis=0).astype(np.float32))
    assert TrimmedMean(trim_beta=0.3).trimmed(10) == 3  # 0.3·10 is 3.0000000000000004 in floats


def test_krum_chooses_the_update_closest_to_its_neighbours():
    # f = 1, n = 5: each score sums the n − f − 2 = 2 nearest squared distances
    values = [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [100.0, -100.0]]
    # scores: 0 → 1 + 4, 1 → 1 + 5, 2 → 4 + 5, 3 → 10 + 13, 4 → 19801 + 20000 (integer tensors do not count)
    np.testing.assert_array_equal(Krum(krum_f=1).scores(updates(*values), ["n", "w"]), [5, 6, 9, 23, 39801])
    out = Krum(krum_f=1).aggregate({}, updates(*values))
    np.testing.assert_array_equal(out.weights["w"], np.array([0.0, 0.0], np.float32))
    assert out.weights["n"].tolist() == [0]  # the chosen client's counter
    multi = Krum(krum_f=1, krum_m=3).aggregate({}, updates(*values))
    np.testing.assert_allclose(multi.weights["w"], np.array([1 / 3, 2 / 3], np.float32))
    assert multi.metrics["selected"] == 3.0


def random_updates(clients: int, seed: int) -> list[ClientUpdate]:
    """Two float tensors (one float64) and an integer counter per client, example counts 1…clients."""
    rng = np.random.default_rng(seed)
    return [
        ClientUpdate(
            str(c),
            {
                "a": rng.standard_normal((3, 4)).astype(np.float32) * np.float32(1 + c % 3),
                "b": rng.standard_normal(5),
                "n": np.array([rng.integers(0, 100)], np.int64),
            },
            c + 1,
        )
        for c in range(clients)
    ]


@pytest.mark.parametrize(("f", "m"), [(0, 1), (1, 1), (2, 1), (2, 3), (2, 7)])
def test_krum_matches_blanchard_et_al_by_brute_force(f: int, m: int) -> None:
    ups = random_updates(9, seed=f * 10 + m)
    n = len(ups)
    vectors = [np.concatenate([u.arrays["a"].ravel().astype(np.float64), u.arrays["b"]]) for u in ups]
    scores = []
    for i in range(n):  # the n − f − 2 smallest ‖V_i − V_j‖², j ≠ i (the integer counter does not count)
        others = sorted(float(np.sum((vectors[i] - vectors[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(others[: n - f - 2]))
    np.testing.assert_allclose(Krum(krum_f=f).scores(ups, ["a", "b", "n"]), scores, rtol=1e-12)
    chosen = sorted(sorted(range(n), key=lambda i: (scores[i], i))[:m])
    out = Krum(krum_f=f, krum_m=m).aggregate({}, ups)
    for name in ("a", "b"):  # the unweighted mean of the chosen updates, whatever their example counts
        want = np.mean([ups[i].arrays[name].astype(np.float64) for i in chosen], axis=0)
        np.testing.assert_array_equal(out.weights[name], want.astype(ups[0].arrays[name].dtype))
    assert out.weights["n"].tolist() == [int(np.rint(np.mean([ups[i].arrays["n"][0] for i in chosen])))]


def test_krum_refuses_f_or_m_too_large_for_the_updates_it_got():
    ups = random_updates(6, seed=0)
    with pytest.raises(AggregationError, match=r"krum_f=2, krum_m=1 needs at least 7 valid updates, got 6"):
        Krum(krum_f=2).aggregate({}, ups)
    with pytest.raises(AggregationError, match=r"krum_f=1, krum_m=6 needs at least 7 valid updates, got 6"):
        Krum(krum_f=1, krum_m=6).aggregate({}, ups)
    assert Krum(krum_f=1, krum_m=5).aggregate({}, ups).metrics["selected"] == 5.0


@pytest.mark.parametrize(("beta", "clients"), [(0.1, 9), (0.2, 10), (0.25, 7), (0.4, 5), (0.49, 2)])
def test_trimmed_mean_matches_scipy_trim_mean(beta: float, clients: int) -> None:
    # Yin et al. 2018, and scipy.stats.trim_mean: cut ⌊β·n⌋ values at each end of each coordinate
    stats = pytest.importorskip("scipy.stats")
    ups = random_updates(clients, seed=clients)
    out = TrimmedMean(trim_beta=beta).aggregate({}, ups)
    for name in ("a", "b"):
        stack = np.stack([u.arrays[name].astype(np.float64) for u in ups])
        want = stats.trim_mean(stack, beta, axis=0).astype(ups[0].arrays[name].dtype)
        np.testing.assert_allclose(out.weights[name], want, rtol=1e-6 if name == "a" else 1e-12, atol=1e-15)


def test_median_matches_numpy_per_coordinate_and_is_unweighted() -> None:
    ups = random_updates(6, seed=4)
    out = Median().aggregate({}, ups)
    for name in ("a", "b"):
        want = np.median(np.stack([u.arrays[name].astype(np.float64) for u in ups]), axis=0)
        np.testing.assert_array_equal(out.weights[name], want.astype(ups[0].arrays[name].dtype))


def test_robust_strategies_refuse_mismatched_updates():
    bad = updates([1.0, 2.0], [1.0, 2.0], [1.0])
    with pytest.raises(AggregationError, match=r"client 2: w has shape \(1,\), expected \(2,\)"):
        Median().aggregate({}, bad)
    missing = updates([1.0], [2.0])
    missing[1] = ClientUpdate("1", {"w": np.ones(1, np.float32)}, 1)
    with pytest.raises(AggregationError, match=r"client 1: tensor names differ .*missing \['n'\]"):
        Median().aggregate({}, missing)
    # a counter sent as floats (or weights as integers) is refused, not cast to the first update's dtype
    retyped = updates([1.0], [2.0], [3.0])
    retyped[2] = ClientUpdate("2", {"w": np.array([3.0], np.float64), "n": np.array([2])}, 1)
    for strategy in (Median(), TrimmedMean(), Krum(krum_f=0)):
        with pytest.raises(AggregationError, match=r"client 2: w has dtype float64, expected float32"):
            strategy.aggregate({}, retyped)


def model_updates(clients: int, tensors: int, size: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        {f"t{j}": rng.standard_normal(size).astype(np.float32) for j in range(tensors)} | {"n": np.array([c])}
        for c in range(clients)
    ]


def lazy_updates(tmp_path: Path, arrays: list[dict[str, np.ndarray]]) -> list[ClientUpdate]:
    store = FileStore(tmp_path / "store")
    out = []
    for c, a in enumerate(arrays):
        save_checkpoint(store, f"u/{c}", a, round=1, client=str(c), examples=10)
        manifest, lazy = open_checkpoint(store, f"u/{c}", tmp_path / "scratch")
        out.append(ClientUpdate(str(c), lazy, manifest.examples))
    return out


@pytest.mark.parametrize(
    "strategy", [Median(), TrimmedMean(trim_beta=0.25), Krum(krum_f=1), Krum(krum_f=1, krum_m=2)]
)
def test_streaming_tensor_by_tensor_equals_all_in_memory(tmp_path, strategy):
    arrays = model_updates(clients=6, tensors=3, size=50)
    in_memory = strategy.aggregate({}, [ClientUpdate(str(c), a, 10) for c, a in enumerate(arrays)])
    streamed = strategy.aggregate({}, lazy_updates(tmp_path, arrays))
    assert sorted(streamed.weights) == sorted(in_memory.weights)
    for name, value in in_memory.weights.items():
        assert streamed.weights[name].tobytes() == value.tobytes(), name


@pytest.mark.parametrize("strategy", [Median(), TrimmedMean(trim_beta=0.2), Krum(krum_f=1)])
def test_peak_memory_is_clients_times_largest_tensor_not_clients_times_model(tmp_path, strategy):
    """10 clients × 16 tensors of 1 MB (float32): the model is 16 MB, one tensor's stack 20 MB in float64."""
    clients, tensors, size = 10, 16, 1 << 18
    updates_ = lazy_updates(tmp_path, model_updates(clients, tensors, size))
    stack_bytes = clients * size * 8  # one tensor of every client, in float64
    all_bytes = clients * tensors * size * 4  # every update in memory, float32
    gc.collect()
    tracemalloc.start()
    try:
        out = strategy.aggregate({}, updates_)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(out.weights) == tensors + 1
    # the stack, numpy's sort/partition copy, one tensor being read, the results (4 MB float32 each)
    assert peak < 3 * stack_bytes + tensors * size * 4, f"peak {peak / stack_bytes:.1f} stacks"
    assert peak < all_bytes / 2, f"peak {peak / all_bytes:.2f} of all updates"


def test_registry_is_the_one_list_of_strategies():
    field = next(f for f in Settings.__dataclass_fields__.values() if f.name == "strategy")
    for name, info in STRATEGIES.items():
        assert name in field.metadata["help"]
        assert info.summary
        for option in info.options:
            assert option.name in Settings.__dataclass_fields__, (name, option.name)
    with pytest.raises(
        SettingsError, match="strategy: must be one of fedavg, fedavgm, fedadam, fedprox, median"
    ):
        Settings(experiment="x", strategy="fedsgd")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"trim_beta": 0.5}, r"^trim_beta: must be in \[0, 0\.5\), got 0\.5$"),
        (
            {"strategy": "krum", "min_clients": 4},
            r"^min_clients: krum with krum_f=1 needs at least .* = 5 .*got 4$",
        ),
        (
            {"strategy": "krum", "min_clients": 5, "krum_m": 5},
            r"^krum_m: Multi-Krum averages at most .* = 4 .*got 5$",
        ),
        ({"krum_f": -1}, r"^krum_f: must be ≥ 0, got -1$"),
        ({"prox_mu": -0.1}, r"^prox_mu: must be ≥ 0, got -0\.1$"),
        ({"attack": "sign-flip"}, r"^attack_clients: attack 'sign-flip' needs some attack_clients, got ''$"),
        ({"attack_clients": "1"}, r"^attack_clients: attack 'none' needs no attack_clients, got '1'$"),
        (
            {"attack": "scale", "attack_clients": "0,10"},
            r"^attack_clients: expected indices 0\.\.9, got '0,10'$",
        ),
        ({"attack_clients": "0;1"}, r"^attack_clients: must be client indices separated by commas"),
    ],
)
def test_strategy_and_attack_settings_are_one_line_naming_the_key(overrides, message):
    with pytest.raises(SettingsError, match=message):
        Settings(experiment="x", clients=10, **overrides)


def test_get_strategy_builds_each_registered_strategy_with_its_options():
    s = Settings.from_mapping(
        {"experiment": "x", "strategy": "krum", "clients": 10, "min_clients": 7, "krum_f": 2, "krum_m": 3}
    )
    krum = get_strategy(s.strategy, **s.server_options())
    assert isinstance(krum, Krum)
    assert (krum.f, krum.m) == (2, 3)
    for name in STRATEGIES:
        strategy = get_strategy(name, noise_seed=1)
        assert strategy.name == name
        assert isinstance(strategy.per_tensor, bool)
        assert isinstance(strategy.stateful, bool)


def test_lazy_checkpoints_are_verified_like_eager_ones(tmp_path):
    from argofl.steps.checkpoint import CheckpointCorrupt, CheckpointMismatch, TensorSpec, checkpoint_keys

    store = FileStore(tmp_path / "store")
    save_checkpoint(store, "u/0", {"w": np.array([1.0, 2.0], np.float32)}, round=1, client="0", examples=3)
    manifest, arrays = open_checkpoint(store, "u/0", tmp_path / "scratch")
    assert manifest.examples == 3
    assert list(arrays) == ["w"]
    assert arrays["w"].tolist() == [1.0, 2.0]
    with pytest.raises(CheckpointMismatch, match=r"w"):
        open_checkpoint(store, "u/0", tmp_path / "scratch", like={"w": TensorSpec("float32", (3,))})
    blob_key, _ = checkpoint_keys("u/0")
    store.put_bytes(blob_key, store.get_bytes(blob_key)[:-1] + b"\1")
    with pytest.raises(CheckpointCorrupt, match="sha256 mismatch"):
        open_checkpoint(store, "u/0", tmp_path / "scratch")
    # a NaN is refused before any strategy sees the update
    save_checkpoint(
        store, "u/nan", {"w": np.array([1.0, np.nan], np.float32)}, round=1, client="1", examples=3
    )
    with pytest.raises(CheckpointCorrupt, match=r"1 non-finite \(NaN/Inf\) values in w"):
        open_checkpoint(store, "u/nan", tmp_path / "scratch")
