"""DP-FedAvg: client-level differential privacy for FedAvg, free of Argo and I/O.

Each client's update ``Δ_i = w_i − w_global`` (float tensors, the whole model as one vector) is clipped
to L2 norm ``C`` and the server averages the clipped updates **unweighted** (McMahan et al. 2018,
"Learning Differentially Private Recurrent Language Models"). Gaussian noise of standard deviation
``z·C`` is added

* ``central``: once, by the server, to the sum of the clipped updates;
* ``local``: by each client to its own clipped update before it leaves the client
  (:func:`privatize`); the server then only averages.

The mean divides by the ``n`` updates received (noise std ``z·C/n`` on it), not by the expected count
``qW`` of McMahan et al.'s fixed-denominator estimator; the two agree when every sampled update counts.

Clipping is ``fixed`` (``C = dp_clip``) or ``adaptive`` (Andrew et al. 2021, "Differentially Private
Learning with Adaptive Clipping"): the server counts the updates with ``‖Δ_i‖ ≤ C``, adds
``N(0, σ_b²)`` with ``σ_b = n/20``, and moves ``C ← C·exp(−η_C·(b̄ − γ))`` towards the ``γ`` quantile of
the norms; the update noise is raised to ``z_Δ = (z⁻² − (2σ_b)⁻²)^(−½)`` so that the round as a whole
keeps noise multiplier ``z``. ``C`` is the strategy's state (``dp/clip``), kept across rounds and
resubmissions like a server optimizer's.

Noise comes from ``numpy.random.default_rng(noise_seed)``, with ``noise_seed`` derived from a per-run
secret (:func:`noise_seed`): a rerun draws the same noise, nobody without the secret can predict it.
Integer tensors (counters) keep the global value. The privacy spent is computed by Google's
``dp-accounting`` (RDP accountant): a Poisson-subsampled Gaussian mechanism per round with sampling rate
``q = sampled clients / clients`` and noise multiplier ``z`` for adding or removing one client
(sensitivity ``C``) in central mode; in local mode an unsampled one per round for replacing the
client's update by any other (sensitivity ``2C``: noise multiplier ``z/2``), as the server sees each.
The clients are sampled as a fixed number without replacement: the Poisson accounting of them is the
usual approximation, not a proof.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from argofl.steps.strategies import Aggregate, AggregationError, ClientUpdate, client_metrics

__all__ = ["OPTIONS", "DPFedAvg", "check_settings", "clip_factor", "epsilon", "noise_seed", "privatize"]

OPTIONS = ("dp_clip", "dp_noise", "dp_mode", "dp_clipping", "dp_quantile", "dp_clip_lr", "dp_delta")
MODES = ("central", "local")
CLIPPINGS = ("fixed", "adaptive")
STATE = "dp/clip"


def noise_seed(secret: bytes, *parts: str) -> int:
    """A 128-bit seed from the run's secret and a purpose (``"round", "3", "server"``)."""
    if not secret:
        raise AggregationError("dp-fedavg needs the run's noise secret, which is empty")
    digest = hashlib.sha256(secret + b"\0" + "/".join(parts).encode()).digest()
    return int.from_bytes(digest[:16], "little")


def _float_names(weights: Mapping[str, np.ndarray]) -> list[str]:
    return sorted(name for name, value in weights.items() if np.issubdtype(value.dtype, np.floating))


def _deltas(
    arrays: Mapping[str, np.ndarray], global_weights: Mapping[str, np.ndarray], source: str
) -> tuple[dict[str, np.ndarray], float]:
    """The float64 update ``arrays − global`` of the float tensors, and its L2 norm."""
    missing, extra = sorted(set(global_weights) - set(arrays)), sorted(set(arrays) - set(global_weights))
    if missing or extra:
        raise AggregationError(
            f"{source}: tensor names differ from the global model (missing {missing[:3]}, "
            f"unexpected {extra[:3]})"
        )
    deltas: dict[str, np.ndarray] = {}
    squared = 0.0
    for name in _float_names(global_weights):
        array, current = np.asarray(arrays[name]), global_weights[name]
        if array.shape != current.shape:
            raise AggregationError(
                f"{source}: {name} has shape {tuple(array.shape)}, expected {tuple(current.shape)}"
            )
        delta = array.astype(np.float64) - current.astype(np.float64)
        squared += float(np.dot(delta.reshape(-1), delta.reshape(-1)))
        deltas[name] = delta
    return deltas, math.sqrt(squared)


def clip_factor(norm: float, clip: float) -> float:
    """The factor that scales an update of L2 norm ``norm`` to at most ``clip``."""
    return 1.0 if norm <= clip else clip / norm


def privatize(
    trained: Mapping[str, np.ndarray],
    global_weights: Mapping[str, np.ndarray],
    *,
    clip: float,
    noise: float,
    seed: int,
) -> dict[str, np.ndarray]:
    """Local DP on a client: ``global + clip(trained − global) + N(0, (noise·clip)²)`` (float tensors)."""
    deltas, norm = _deltas(trained, global_weights, "client update")
    factor = clip_factor(norm, clip)
    rng = np.random.default_rng(seed)
    out = {name: np.array(value, copy=True) for name, value in global_weights.items()}
    for name, delta in deltas.items():
        delta *= factor
        delta += rng.standard_normal(delta.shape) * (noise * clip)
        out[name] = (global_weights[name].astype(np.float64) + delta).astype(global_weights[name].dtype)
    return out


class DPFedAvg:
    """DP-FedAvg with fixed or adaptive clipping and central or local Gaussian noise."""

    name = "dp-fedavg"
    stateful = True
    per_tensor = False

    def __init__(
        self,
        *,
        dp_clip: float = 1.0,
        dp_noise: float = 1.0,
        dp_mode: str = "central",
        dp_clipping: str = "fixed",
        dp_quantile: float = 0.5,
        dp_clip_lr: float = 0.2,
        dp_delta: float = 1e-5,
        noise_seed: int | None = None,
    ) -> None:
        problem = _check(dp_clip, dp_noise, dp_mode, dp_clipping, dp_quantile, dp_clip_lr, dp_delta)
        if problem:
            raise AggregationError(problem)
        self.clip = dp_clip
        self.noise = dp_noise
        self.mode = dp_mode
        self.adaptive = dp_clipping == "adaptive"
        self.quantile = dp_quantile
        self.clip_lr = dp_clip_lr
        self.delta = dp_delta
        self.noise_seed = noise_seed

    def count_noise(self, n: int) -> float:
        """σ_b, the noise on the count of unclipped updates (adaptive clipping; Andrew et al.: n/20)."""
        return n / 20 if self.adaptive else 0.0

    def update_noise(self, n: int) -> float:
        """The noise multiplier on the updates: ``z``, or ``z_Δ`` when part of it goes to the count."""
        if not self.adaptive:
            return self.noise
        sigma_b = self.count_noise(n)
        if 2 * sigma_b <= self.noise:
            raise AggregationError(
                f"adaptive clipping over {n} updates adds σ_b = {sigma_b:g} to the count, which needs "
                f"dp_noise < "
                f"2·σ_b = {2 * sigma_b:g}, got {self.noise!r}: sample more clients or use dp_clipping=fixed"
            )
        return float((self.noise**-2 - (2 * sigma_b) ** -2) ** -0.5)

    def aggregate(
        self,
        global_weights: Mapping[str, np.ndarray],
        updates: Iterable[ClientUpdate],
        state: Mapping[str, np.ndarray],
    ) -> Aggregate:
        clip = float(state[STATE].reshape(-1)[0]) if STATE in state else self.clip
        central = self.mode == "central"
        sums = {
            name: np.zeros(global_weights[name].shape, np.float64) for name in _float_names(global_weights)
        }
        seen: list[ClientUpdate] = []
        unclipped = 0
        for update in updates:
            deltas, norm = _deltas(update.arrays, global_weights, f"update from client {update.client}")
            factor = clip_factor(norm, clip) if central else 1.0
            unclipped += norm <= clip
            for name, delta in deltas.items():
                if factor != 1.0:
                    delta *= factor
                sums[name] += delta
            del deltas
            seen.append(ClientUpdate(update.client, {}, update.examples, update.metrics))
        n = len(seen)
        if n == 0:
            raise AggregationError("no updates to aggregate")
        rng = np.random.default_rng(self.noise_seed) if central else None
        if rng is not None:
            if self.noise_seed is None:
                raise AggregationError("dp-fedavg in central mode needs the run's noise secret")
            sigma = self.update_noise(n) * clip
            for name in sorted(sums):
                sums[name] += rng.standard_normal(sums[name].shape) * sigma
        weights = {name: np.array(value, copy=True) for name, value in global_weights.items()}
        for name, total in sums.items():
            total /= n
            total += global_weights[name].astype(np.float64)
            weights[name] = total.astype(global_weights[name].dtype)
        metrics = client_metrics(seen)
        metrics["dp_clip"] = clip
        new_clip = clip
        if self.adaptive and rng is not None:
            fraction = (unclipped + rng.normal(0.0, self.count_noise(n))) / n
            metrics["dp_unclipped_fraction"] = float(fraction)  # noised: safe to publish
            new_clip = clip * math.exp(-self.clip_lr * (fraction - self.quantile))
        return Aggregate(weights, metrics, {STATE: np.array([new_clip], dtype=np.float64)})

    def state_specs(self, global_weights: Mapping[str, np.ndarray]) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {STATE: ("float64", (1,))}

    def epsilon(self, *, rounds: int, sample_rate: float) -> float:
        """ε spent after ``rounds`` rounds at ``dp_delta``. Local mode protects each update from the
        server, which knows who took part: no amplification by sampling, and two updates a client may send
        are up to ``2C`` apart (noise multiplier ``z/2``), where adding or removing a client moves the
        central sum by ``C``."""
        if self.mode == "central":
            return epsilon(
                noise_multiplier=self.noise, sample_rate=sample_rate, rounds=rounds, delta=self.delta
            )
        return epsilon(noise_multiplier=self.noise / 2, sample_rate=1.0, rounds=rounds, delta=self.delta)


def epsilon(*, noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """ε of ``rounds`` Poisson-subsampled Gaussian mechanisms, by dp-accounting's RDP accountant."""
    try:
        import dp_accounting
        from dp_accounting.rdp import RdpAccountant
    except ImportError as exc:
        raise AggregationError(
            f"dp-fedavg's privacy accounting needs the dp-accounting package ({exc}): "
            "pip install dp-accounting"
        ) from None
    event: Any = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sample_rate < 1:
        event = dp_accounting.PoissonSampledDpEvent(sample_rate, event)
    accountant = RdpAccountant()
    accountant.compose(event, rounds)
    quiet = logging.getLogger("absl")  # warns for each small RDP order it skips (large q): not news
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return float(accountant.get_epsilon(delta))
    finally:
        quiet.setLevel(level)


def _check(
    clip: float, noise: float, mode: str, clipping: str, quantile: float, clip_lr: float, delta: float
) -> str | None:
    if mode not in MODES:
        return f"dp_mode: must be one of {', '.join(MODES)}, got {mode!r}"
    if clipping not in CLIPPINGS:
        return f"dp_clipping: must be one of {', '.join(CLIPPINGS)}, got {clipping!r}"
    for key, value, ok, expected in (
        ("dp_clip", clip, clip > 0, "> 0"),
        ("dp_noise", noise, noise > 0, "> 0"),
        ("dp_quantile", quantile, 0 < quantile < 1, "in (0, 1)"),
        ("dp_clip_lr", clip_lr, clip_lr > 0, "> 0"),
        ("dp_delta", delta, 0 < delta < 1, "in (0, 1)"),
    ):
        if not (ok and math.isfinite(value)):
            return f"{key}: must be {expected}, got {value!r}"
    if mode == "local" and clipping == "adaptive":
        return (
            "dp_clipping: adaptive clipping needs dp_mode=central (local clients clip at dp_clip), "
            "got 'adaptive'"
        )
    return None


def check_settings(s: Mapping[str, Any]) -> str | None:
    """Settings problem for dp-fedavg, as ``"key: problem, got value"``."""
    problem = _check(*(s[key] for key in OPTIONS))
    if problem or s["dp_clipping"] != "adaptive":
        return problem
    sampled = min(s["clients"], max(s["min_clients"], int(s["fraction"] * s["clients"])))
    if s["dp_noise"] >= sampled / 10:
        return (
            f"dp_noise: adaptive clipping over {sampled} sampled clients needs "
            f"dp_noise < clients per round / 10 "
            f"= {sampled / 10:g} (Andrew et al.: the count's noise is clients/20), got {s['dp_noise']!r}"
        )
    return None
