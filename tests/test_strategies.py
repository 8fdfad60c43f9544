"""FedAvg math: exact weighted averages, streaming equals in-memory, memory stays O(model)."""

from __future__ import annotations

import dataclasses
import gc
import itertools
import re
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from argofl.steps.settings import Settings
from argofl.steps.strategies import (
    STRATEGIES,
    AggregationError,
    ClientUpdate,
    FedAdam,
    FedAvg,
    FedAvgM,
    WeightedAverage,
    fedavg,
    get_strategy,
)

ROOT = Path(__file__).resolve().parents[1]


def test_weighted_average_exact_on_hand_made_arrays():
    a = {"w": np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32), "b": np.array([0.0], dtype=np.float32)}
    b = {"w": np.array([[5.0, 6.0], [7.0, 8.0]], dtype=np.float32), "b": np.array([4.0], dtype=np.float32)}
    out = fedavg([(a, 1), (b, 3)])
    np.testing.assert_array_equal(out["w"], np.array([[4.0, 5.0], [6.0, 7.0]], dtype=np.float32))
    np.testing.assert_array_equal(out["b"], np.array([3.0], dtype=np.float32))
    assert out["w"].dtype == np.float32


def test_single_update_is_returned_bit_exact():
    rng = np.random.default_rng(0)
    arrays = {"x": rng.standard_normal((64, 33)).astype(np.float32)}
    out = fedavg([(arrays, 6000)])
    assert out["x"].tobytes() == arrays["x"].tobytes()


def test_integer_buffers_are_rounded_and_keep_dtype():
    out = fedavg([({"n": np.array([10], dtype=np.int64)}, 1), ({"n": np.array([13], dtype=np.int64)}, 1)])
    assert out["n"].dtype == np.int64
    assert out["n"].tolist() == [12]  # 11.5 rounds half to even


def test_every_dtype_gets_the_example_weighted_mean_in_its_own_dtype():
    # McMahan et al. 2017: Σ n_k·w_k / Σ n_k, computed in float64 whatever the tensor's dtype
    a = {
        "h": np.array([0.1, -2.0], np.float16),
        "d": np.array([1e-300, 1.0]),
        "u": np.array([0, 255], np.uint8),
        "flag": np.array([True, False]),
    }
    b = {"h": np.array([0.3, 6.0], np.float16), "d": np.array([3e-300, 2.0]), "u": np.array([3, 1], np.uint8)}
    b["flag"] = np.array([False, True])
    out = fedavg([(a, 3), (b, 1)])
    for name, dtype in (("h", np.float16), ("d", np.float64), ("u", np.uint8), ("flag", np.bool_)):
        assert out[name].dtype == dtype, name
        want = (a[name].astype(np.float64) * 3 + b[name].astype(np.float64)) / 4
        if not np.issubdtype(dtype, np.floating):
            want = np.rint(want)  # counters and flags: rounded (half to even), so the majority for a flag
        np.testing.assert_array_equal(out[name], want.astype(dtype), err_msg=name)
    assert out["u"].tolist() == [1, 192]  # 0.75 → 1, 191.5 → 192
    assert out["flag"].tolist() == [True, False]


def test_fedavg_strategy_weights_metrics_by_examples():
    updates = [
        ClientUpdate("0", {"w": np.zeros(3, np.float32)}, 100, {"loss": 1.0, "accuracy": 0.5}),
        ClientUpdate("1", {"w": np.ones(3, np.float32)}, 300, {"loss": 2.0, "accuracy": 0.9}),
    ]
    weights, metrics, state = FedAvg().aggregate({"w": np.zeros(3, np.float32)}, iter(updates))
    assert state == {}
    np.testing.assert_allclose(weights["w"], 0.75)
    assert metrics["loss"] == pytest.approx(1.75)
    assert metrics["accuracy"] == pytest.approx(0.8)
    assert metrics["examples"] == 400
    assert metrics["clients"] == 2


@pytest.mark.parametrize("strategy", ["fedavg", "median", "dp-fedavg"])
def test_a_metric_some_clients_lack_is_averaged_over_the_clients_that_report_it(strategy):
    updates = [
        ClientUpdate("0", {"w": np.zeros(3, np.float32)}, 100, {"loss": 1.0, "accuracy": 0.5}),
        ClientUpdate("1", {"w": np.ones(3, np.float32)}, 300, {"loss": 2.0}),
        ClientUpdate("2", {"w": np.ones(3, np.float32)}, 100, {"loss": 3.0, "accuracy": 0.9}),
    ]
    metrics = get_strategy(strategy, noise_seed=1).aggregate({"w": np.zeros(3, np.float32)}, updates, {})[1]
    assert metrics["loss"] == pytest.approx((100 * 1.0 + 300 * 2.0 + 100 * 3.0) / 500)
    assert metrics["accuracy"] == pytest.approx((100 * 0.5 + 100 * 0.9) / 200)  # not / 500
    assert metrics["examples"] == 500
    assert metrics["clients"] == 3


def test_streaming_equals_in_memory_average():
    rng = np.random.default_rng(1)
    updates: list[tuple[dict[str, np.ndarray], int]] = [
        ({"a": rng.standard_normal((20, 7)).astype(np.float32), "b": rng.standard_normal(5)}, int(n))
        for n in rng.integers(1, 1000, size=25)
    ]
    streamed = fedavg(iter(updates))
    total = sum(n for _, n in updates)
    for name in ("a", "b"):
        in_memory = np.sum([u[name].astype(np.float64) * n for u, n in updates], axis=0) / total
        np.testing.assert_array_equal(streamed[name], in_memory.astype(updates[0][0][name].dtype))


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ({"w": np.zeros(4, np.float32)}, "shape"),
        ({"v": np.zeros(3, np.float32)}, "names differ"),
    ],
)
def test_mismatched_updates_are_refused(second, message):
    mean = WeightedAverage()
    mean.add({"w": np.zeros(3, np.float32)}, 1)
    with pytest.raises(AggregationError, match=message):
        mean.add(second, 1, source="update from client 7")


def test_non_positive_weight_and_empty_input_are_refused():
    with pytest.raises(AggregationError, match="weight must be > 0"):
        WeightedAverage().add({"w": np.zeros(1)}, 0)
    with pytest.raises(AggregationError, match="no updates"):
        fedavg([])
    with pytest.raises(AggregationError, match="unknown strategy 'fedsgd'"):
        get_strategy("fedsgd")


def test_peak_memory_of_streaming_many_updates_stays_near_one_model():
    """50 updates of a 4M-parameter (16 MB) model: peak traced memory must stay a few models, not 50."""
    shape = (1000, 4000)
    model_bytes = shape[0] * shape[1] * 4

    def updates() -> Iterator[tuple[dict[str, np.ndarray], int]]:
        for i in range(50):
            yield {"w": np.full(shape, float(i), dtype=np.float32)}, 1

    gc.collect()
    tracemalloc.start()
    try:
        out = fedavg(updates())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert float(out["w"][0, 0]) == pytest.approx(24.5)
    # float64 accumulator (2 models) + the update being folded (1) + the float32 result (1).
    assert peak < 4.5 * model_bytes, f"peak {peak / model_bytes:.1f} models"


# ------------------------------------------------------------------------------------ server optimizers


def _round(rng: np.random.Generator, global_w: dict[str, np.ndarray], clients: int = 3) -> list[ClientUpdate]:
    """Client updates near ``global_w`` (a float tensor and an integer counter), random example counts."""
    return [
        ClientUpdate(
            str(c),
            {
                "w": (global_w["w"] + rng.standard_normal(global_w["w"].shape)).astype(np.float32),
                "n": global_w["n"] + int(rng.integers(1, 5)),
            },
            int(rng.integers(10, 100)),
            {"loss": float(rng.random())},
        )
        for c in range(clients)
    ]


def _mean(updates: list[ClientUpdate], name: str) -> np.ndarray:
    total = sum(u.examples for u in updates)
    acc = np.zeros(updates[0].arrays[name].shape, np.float64)
    for u in updates:
        acc += u.arrays[name].astype(np.float64) * u.examples
    return acc / total


def test_fedavgm_is_server_momentum_over_the_pseudo_gradient():
    rng = np.random.default_rng(5)
    w: dict[str, np.ndarray] = {
        "w": rng.standard_normal((4, 3)).astype(np.float32),
        "n": np.array([7], np.int64),
    }
    strategy = get_strategy("fedavgm", server_lr=0.7, server_momentum=0.5, server_beta2=0.3)
    assert isinstance(strategy, FedAvgM)
    assert strategy.stateful
    assert strategy.state_names(w) == ["m/w"]  # no state for the integer counter
    state: dict[str, np.ndarray] = {}
    m = None
    for _ in range(3):
        updates = _round(rng, w)
        delta = _mean(updates, "w") - w["w"].astype(np.float64)
        m = delta if m is None else 0.5 * m + delta
        expected = (w["w"].astype(np.float64) + 0.7 * m).astype(np.float32)
        new, metrics, state = strategy.aggregate(w, iter(updates), state)
        np.testing.assert_allclose(new["w"], expected, rtol=1e-6)
        np.testing.assert_allclose(state["m/w"], m, rtol=1e-5)
        m = state["m/w"].astype(np.float64)  # the state is kept in the tensor's dtype (float32)
        assert new["n"].tolist() == [int(np.rint(_mean(updates, "n")[0]))]  # counters: plain mean
        assert metrics["clients"] == 3
        w = new


def test_fedavgm_with_lr_1_and_no_momentum_is_fedavg():
    rng = np.random.default_rng(6)
    w: dict[str, np.ndarray] = {
        "w": rng.standard_normal((50,)).astype(np.float32),
        "n": np.array([1], np.int64),
    }
    updates = _round(rng, w, clients=4)
    plain, _, _ = FedAvg().aggregate(w, iter(updates))
    momentum, _, _ = FedAvgM(server_lr=1.0, server_momentum=0.0).aggregate(w, iter(updates), {})
    np.testing.assert_allclose(momentum["w"], plain["w"], rtol=0, atol=1e-6)
    assert momentum["n"].tolist() == plain["n"].tolist()


def test_fedadam_follows_reddi_et_al():
    rng = np.random.default_rng(7)
    w: dict[str, np.ndarray] = {
        "w": rng.standard_normal((6,)).astype(np.float32),
        "n": np.array([0], np.int64),
    }
    strategy = FedAdam(server_lr=0.01, server_momentum=0.9, server_beta2=0.99, server_tau=1e-3)
    assert strategy.state_names(w) == ["m/w", "v/w"]
    state: dict[str, np.ndarray] = {}
    m = v = np.zeros(6)
    for _ in range(3):
        updates = _round(rng, w)
        delta = _mean(updates, "w") - w["w"].astype(np.float64)
        m = 0.9 * m + 0.1 * delta
        v = 0.99 * v + 0.01 * delta**2
        expected = w["w"].astype(np.float64) + 0.01 * m / (np.sqrt(v) + 1e-3)
        new, _, state = strategy.aggregate(w, iter(updates), state)
        np.testing.assert_allclose(new["w"], expected.astype(np.float32), rtol=1e-6)
        np.testing.assert_allclose(state["v/w"], v, rtol=1e-5)
        m, v = state["m/w"].astype(np.float64), state["v/w"].astype(np.float64)
        # an Adam step moves each weight by at most about server_lr
        assert np.abs(new["w"].astype(np.float64) - w["w"]).max() <= 0.01 / np.sqrt(0.1) + 1e-6
        w = new


def test_server_options_are_checked_and_state_of_the_wrong_shape_refused():
    with pytest.raises(AggregationError, match="server_momentum must be in"):
        FedAvgM(server_momentum=1.0)
    with pytest.raises(AggregationError, match="server_lr must be > 0, got -1"):
        FedAdam(server_lr=-1)
    with pytest.raises(AggregationError, match="server_tau must be > 0, got nan"):
        FedAdam(server_tau=float("nan"))
    w: dict[str, np.ndarray] = {"w": np.zeros(3, np.float32), "n": np.array([0], np.int64)}
    updates = _round(np.random.default_rng(0), w)
    with pytest.raises(AggregationError, match=r"global weights: w is missing, but the updates have it"):
        FedAvgM().aggregate({"n": w["n"]}, iter(updates), {})
    with pytest.raises(AggregationError, match=r"server state m/w has shape \(4,\), expected \(3,\)"):
        FedAvgM().aggregate(w, iter(updates), {"m/w": np.zeros(4, np.float32)})


def readme_strategy_rows() -> dict[str, str]:
    """README's strategy table (the one whose header starts ``| `strategy` |``): name → options cell."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| `strategy` |"))
    rows = itertools.takewhile(lambda line: line.startswith("|"), lines[start + 2 :])
    table = {}
    for row in rows:
        cells = [cell.strip() for cell in row.split("|")[1:-1]]
        match = re.fullmatch(r"`([^`]+)`( \(default\))?", cells[0])
        assert match, f"README strategy table: expected `name` in the first column, got {cells[0]!r}"
        table[match[1]] = cells[-1]
    return table


def readme_strategy_table() -> list[str]:
    """The first column of README's strategy table."""
    return list(readme_strategy_rows())


def test_readme_strategy_table_lists_each_strategys_registered_options():
    for name, cell in readme_strategy_rows().items():
        named = set(re.findall(r"`([a-z][a-z0-9_]*)`", cell))
        assert named == {option.name for option in STRATEGIES[name].options}, name


def test_readme_strategy_table_lists_exactly_the_registered_strategies():
    assert readme_strategy_table() == list(STRATEGIES)
    default = next(f.default for f in dataclasses.fields(Settings) if f.name == "strategy")
    assert f"| `{default}` (default) |" in (ROOT / "README.md").read_text()
