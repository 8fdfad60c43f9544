"""Client partitioning: coverage, determinism, Dirichlet skew and argument errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from argofl.steps.partition import PartitionError, client_seed, partition


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return np.random.default_rng(42).integers(0, 10, size=5000)


def check_exact_cover(parts: list[np.ndarray], n: int) -> None:
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0)  # sorted, no duplicates within a client
    everything = np.concatenate(parts)
    assert len(everything) == n
    np.testing.assert_array_equal(np.sort(everything), np.arange(n))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
@pytest.mark.parametrize("num_clients", [1, 3, 10])
def test_every_sample_once_and_sorted(labels: np.ndarray, scheme: str, num_clients: int) -> None:
    parts = partition(labels, num_clients, scheme, seed=1)
    assert len(parts) == num_clients
    check_exact_cover(parts, len(labels))


def test_iid_sizes_are_near_equal(labels: np.ndarray) -> None:
    sizes = [len(p) for p in partition(labels, 7, "iid")]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_same_seed_same_partition_different_seed_differs(labels: np.ndarray, scheme: str) -> None:
    a = partition(labels, 5, scheme, seed=3)
    b = partition(labels, 5, scheme, seed=3)
    c = partition(labels, 5, scheme, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def label_skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each client's label distribution and the global one."""
    overall = np.bincount(labels, minlength=10) / len(labels)
    return float(
        np.mean([0.5 * np.abs(np.bincount(labels[p], minlength=10) / len(p) - overall).sum() for p in parts])
    )


def test_dirichlet_skew_grows_as_alpha_shrinks(labels: np.ndarray) -> None:
    skews = [
        np.mean([label_skew(labels, partition(labels, 10, "dirichlet", alpha=a, seed=s)) for s in range(3)])
        for a in (100.0, 1.0, 0.1)
    ]
    assert skews[0] < skews[1] < skews[2]
    assert label_skew(labels, partition(labels, 10, "iid")) < skews[1]


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_dirichlet_shares_each_class_over_the_clients_by_dirichlet_alpha(alpha: float) -> None:
    # per class, the clients' shares are one draw of Dir(α, …, α): with 3 clients the first client's
    # share of a class is Beta(α, 2α), of mean 1/3 and variance 2α² / (9α²(3α + 1)) = 2 / (9(3α + 1))
    classes, per_class = 600, 400
    labels = np.repeat(np.arange(classes), per_class)
    first = partition(labels, 3, "dirichlet", alpha=alpha, seed=9)[0]
    shares = np.bincount(labels[first], minlength=classes) / per_class
    assert shares.mean() == pytest.approx(1 / 3, abs=0.03)
    assert shares.var() == pytest.approx(2 / (9 * (3 * alpha + 1)), rel=0.15)


def test_dirichlet_min_size(labels: np.ndarray) -> None:
    parts = partition(labels, 10, "dirichlet", alpha=0.3, seed=0, min_size=50)
    assert min(len(p) for p in parts) >= 50


def test_dirichlet_gives_up_with_a_clear_error() -> None:
    few = np.arange(40) % 2
    with pytest.raises(PartitionError, match=r"min_size=3.*draws"):
        partition(few, 12, "dirichlet", alpha=0.01, min_size=3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_clients": 0}, "num_clients=0"),
        ({"num_clients": 11}, "num_clients=11"),
        ({"num_clients": 2, "scheme": "shards"}, "'shards'"),
        ({"num_clients": 2, "scheme": "dirichlet", "alpha": 0.0}, "alpha=0.0"),
        ({"num_clients": 2, "scheme": "dirichlet", "alpha": -1}, "alpha=-1"),
        ({"num_clients": 5, "min_size": 3}, "min_size=3"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(PartitionError, match=match) as info:
        partition(np.arange(10) % 3, **kwargs)
    assert isinstance(info.value, ValueError)


def test_client_seed_is_stable_32_bit_and_distinct() -> None:
    seeds = {client_seed(0, r, f"client-{c}") for r in range(5) for c in range(10)}
    assert len(seeds) == 50
    assert all(0 <= s < 2**32 for s in seeds)
    assert client_seed(7, 2, "client-3") == client_seed(7, 2, "client-3")
    assert client_seed(7, 2, "client-3") != client_seed(8, 2, "client-3")


def test_client_seed_is_the_same_in_another_process() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = "from argofl.steps.partition import client_seed; print(client_seed(5, 3, 'client-1'))"
    env = {**os.environ, "PYTHONHASHSEED": "123", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert int(out.stdout) == client_seed(5, 3, "client-1")
