"""DP-FedAvg math: exact clipping and noise, seeded determinism, adaptive clipping, accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest

from argofl.steps.privacy import DPFedAvg, epsilon, noise_seed, privatize
from argofl.steps.settings import Settings, SettingsError
from argofl.steps.strategies import AggregationError, ClientUpdate

pytest.importorskip("dp_accounting")

GLOBAL = {"a": np.array([1.0, 1.0], np.float32), "b": np.array([[0.0]], np.float32), "n": np.array([5])}


def update(client: int, a: list[float], b: float) -> ClientUpdate:
    arrays = {"a": np.array(a, np.float32), "b": np.array([[b]], np.float32), "n": np.array([9])}
    return ClientUpdate(str(client), arrays, 10 * (client + 1), {"loss": 1.0})


def test_central_dp_clips_each_update_and_adds_seeded_noise_to_the_sum():
    # deltas: (3, 4, 0) of norm 5 → clipped to norm 2; (0, 0, 1) of norm 1 → kept
    ups = [update(0, [4.0, 5.0], 0.0), update(1, [1.0, 1.0], 1.0)]
    out = DPFedAvg(dp_clip=2.0, dp_noise=0.5, noise_seed=42).aggregate(GLOBAL, ups, {})
    rng = np.random.default_rng(42)
    noise_a, noise_b = rng.standard_normal(2) * 0.5 * 2.0, rng.standard_normal((1, 1)) * 0.5 * 2.0
    expected_a = 1.0 + (np.array([3.0, 4.0]) * 2 / 5 + noise_a) / 2  # unweighted mean over 2 clients
    expected_b = 0.0 + (np.array([[1.0]]) + noise_b) / 2
    np.testing.assert_array_equal(out.weights["a"], expected_a.astype(np.float32))
    np.testing.assert_array_equal(out.weights["b"], expected_b.astype(np.float32))
    assert out.weights["n"].tolist() == [5]  # counters keep the global value
    assert out.state["dp/clip"].tolist() == [2.0]  # fixed clipping
    assert out.metrics["dp_clip"] == 2.0
    assert out.metrics["examples"] == 30.0


def test_noise_is_the_same_for_the_same_seed_and_differs_across_seeds():
    ups = [update(0, [4.0, 5.0], 0.0), update(1, [1.0, 1.0], 1.0)]
    runs = [DPFedAvg(noise_seed=seed).aggregate(GLOBAL, ups, {}).weights for seed in (7, 7, 8)]
    assert all(runs[0][k].tobytes() == runs[1][k].tobytes() for k in GLOBAL)
    assert runs[0]["a"].tobytes() != runs[2]["a"].tobytes()
    with pytest.raises(AggregationError, match="central mode needs the run's noise secret"):
        DPFedAvg().aggregate(GLOBAL, ups, {})


def test_noise_seed_depends_on_secret_and_purpose():
    assert noise_seed(b"s", "round", "1", "server") == noise_seed(b"s", "round", "1", "server")
    assert noise_seed(b"s", "round", "1", "server") != noise_seed(b"t", "round", "1", "server")
    assert noise_seed(b"s", "round", "1", "server") != noise_seed(b"s", "round", "2", "server")
    with pytest.raises(AggregationError, match="secret, which is empty"):
        noise_seed(b"", "round", "1")


def test_adaptive_clipping_moves_the_clip_towards_the_target_quantile():
    """Andrew et al. 2021: C ← C·exp(−η(b̄ − γ)), b̄ the noised fraction of unclipped updates."""
    ups = [update(c, [1.0 + 0.1 * c, 1.0], 0.0) for c in range(10)]  # norms ≤ 0.9, all below C = 1
    dp = DPFedAvg(dp_clip=1.0, dp_noise=0.5, dp_clipping="adaptive", dp_clip_lr=0.2, noise_seed=3)
    out = dp.aggregate(GLOBAL, ups, {})
    rng = np.random.default_rng(3)
    rng.standard_normal(2), rng.standard_normal((1, 1))  # the update noise comes first
    fraction = (10 + rng.normal(0.0, 10 / 20)) / 10
    assert out.metrics["dp_unclipped_fraction"] == pytest.approx(fraction)
    assert out.state["dp/clip"][0] == pytest.approx(math.exp(-0.2 * (fraction - 0.5)))
    assert out.state["dp/clip"][0] < 1.0  # every norm was below C: the clip shrinks
    # the next round starts from the state's clip
    again = dp.aggregate(GLOBAL, ups, out.state)
    assert again.metrics["dp_clip"] == out.state["dp/clip"][0]
    # z_Δ = (z⁻² − (2σ_b)⁻²)^(−½) with σ_b = n/20
    assert dp.update_noise(10) == pytest.approx((0.5**-2 - 1.0**-2) ** -0.5)
    with pytest.raises(AggregationError, match=r"needs dp_noise < 2·σ_b = 0\.4, got 0\.5"):
        dp.update_noise(4)


def test_local_dp_clients_clip_and_noise_and_the_server_only_averages():
    start = {"a": GLOBAL["a"], "n": GLOBAL["n"]}
    trained = {"a": np.array([4.0, 5.0], np.float32), "n": np.array([9])}
    sent = privatize(trained, start, clip=2.0, noise=0.5, seed=11)
    noise = np.random.default_rng(11).standard_normal(2) * 0.5 * 2.0
    np.testing.assert_array_equal(sent["a"], (1.0 + np.array([3.0, 4.0]) * 2 / 5 + noise).astype(np.float32))
    assert sent["n"].tolist() == [5]
    ups = [update(0, [4.0, 5.0], 0.0), update(1, [1.0, 1.0], 1.0)]
    out = DPFedAvg(dp_mode="local").aggregate(GLOBAL, ups, {})
    np.testing.assert_array_equal(out.weights["a"], np.array([2.5, 3.0], np.float32))  # no clip, no noise


def test_epsilon_comes_from_the_rdp_accountant_and_behaves():
    base = epsilon(noise_multiplier=1.0, sample_rate=0.5, rounds=5, delta=1e-5)
    assert 0 < base < math.inf
    assert epsilon(noise_multiplier=2.0, sample_rate=0.5, rounds=5, delta=1e-5) < base
    assert epsilon(noise_multiplier=1.0, sample_rate=0.5, rounds=10, delta=1e-5) > base
    assert epsilon(noise_multiplier=1.0, sample_rate=1.0, rounds=5, delta=1e-5) > base


@pytest.mark.parametrize(("clipping", "clients"), [("fixed", 4), ("adaptive", 40)])
def test_the_noise_on_the_mean_has_std_z_c_over_n_whatever_the_draw_order(clipping, clients):
    # McMahan et al. 2018 with uniform weights: sum of clipped updates + N(0, (z·C)²), divided by n; with
    # adaptive clipping the update part of the noise is z_Δ = (z⁻² − (2σ_b)⁻²)^(−½), σ_b = n/20
    size, clip, z = 200_000, 2.0, 0.5
    start = {"w": np.zeros(size, np.float32)}
    ups = [ClientUpdate(str(c), {"w": np.zeros(size, np.float32)}, 1) for c in range(clients)]
    dp = DPFedAvg(dp_clip=clip, dp_noise=z, dp_clipping=clipping, noise_seed=5)
    noise = dp.aggregate(start, ups, {}).weights["w"].astype(np.float64)
    z_update = z if clipping == "fixed" else (z**-2 - (2 * clients / 20) ** -2) ** -0.5
    assert noise.mean() == pytest.approx(0.0, abs=5 * z_update * clip / clients / math.sqrt(size))
    assert noise.std() == pytest.approx(z_update * clip / clients, rel=0.01)


def _gaussian_delta(eps: float, z: float) -> float:
    """δ(ε) of one Gaussian mechanism of noise multiplier z (Balle & Wang 2018, Theorem 8)."""
    phi = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731
    return phi(-eps * z + 1 / (2 * z)) - math.exp(eps) * phi(-eps * z - 1 / (2 * z))


def test_epsilon_of_one_unsampled_round_lies_between_the_exact_gaussian_and_the_classic_rdp_bound():
    z, delta = 1.0, 1e-5
    got = epsilon(noise_multiplier=z, sample_rate=1.0, rounds=1, delta=delta)
    low, high = 0.0, 50.0  # the exact ε: δ(ε) = delta, by bisection
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if _gaussian_delta(mid, z) > delta else (low, mid)
    # RDP of the Gaussian at order α is α/(2z²); classic conversion ε = RDP + log(1/δ)/(α − 1)
    classic = min(a / (2 * z**2) + math.log(1 / delta) / (a - 1) for a in np.linspace(1.01, 200, 20_000))
    assert high <= got <= classic + 1e-6, (high, got, classic)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dp_noise": 0.0}, r"^dp_noise: must be > 0, got 0\.0$"),
        ({"dp_mode": "both"}, r"^dp_mode: must be one of central, local, got 'both'$"),
        ({"dp_delta": 1.0}, r"^dp_delta: must be in \(0, 1\), got 1\.0$"),
        (
            {"dp_mode": "local", "dp_clipping": "adaptive"},
            r"^dp_clipping: adaptive clipping needs dp_mode=central",
        ),
        (
            {"dp_clipping": "adaptive", "dp_noise": 1.0},
            r"^dp_noise: adaptive clipping over 10 sampled clients needs",
        ),
    ],
)
def test_dp_settings_are_one_line_naming_the_key(overrides, message):
    with pytest.raises(SettingsError, match=message):
        Settings(experiment="x", strategy="dp-fedavg", clients=10, **overrides)
    Settings.from_mapping(
        {
            "experiment": "x",
            "strategy": "dp-fedavg",
            "clients": 10,
            "dp_clipping": "adaptive",
            "dp_noise": 0.9,
        }
    )


def test_a_local_round_s_epsilon_holds_for_the_two_farthest_updates_a_client_can_send():
    """Local DP protects a client's update against the server, which knows it took part: the adjacent
    inputs are any two clipped updates, 2C apart (not adding or removing one, C), with noise std z·C on
    each, and no amplification by sampling."""
    z, delta = 2.0, 1e-5
    dp = DPFedAvg(dp_mode="local", dp_noise=z, dp_clip=3.0, dp_delta=delta)
    got = dp.epsilon(rounds=1, sample_rate=0.5)
    assert _gaussian_delta(got, z / 2) <= delta  # std z·C over sensitivity 2C
    assert got == epsilon(noise_multiplier=z / 2, sample_rate=1.0, rounds=1, delta=delta)
    central = DPFedAvg(dp_mode="central", dp_noise=z, dp_clip=3.0, dp_delta=delta)
    assert central.epsilon(rounds=1, sample_rate=1.0) < got  # the sum's sensitivity is C
