"""TEST FEATURE — malicious clients, to measure what robust and private strategies buy.

Settings ``attack``, ``attack_clients`` and ``attack_scale`` make chosen clients misbehave on purpose.
Never set them outside experiments about robustness. Free of Argo and I/O; float tensors only
(integer counters are sent as trained).

* ``sign-flip``: send ``w_global − scale·(w − w_global)`` (the update reversed and scaled up);
* ``scale``: send ``w_global + scale·(w − w_global)`` (the update scaled up);
* ``gaussian``: send ``w_global + N(0, scale²)`` (noise instead of a trained update);
* ``label-flip``: train on labels ``classes − 1 − y`` (an honest-looking update from poisoned data).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["ATTACKS", "poison_labels", "poison_update"]

ATTACKS = ("none", "sign-flip", "gaussian", "label-flip", "scale")


def poison_labels(attack: str, y: np.ndarray, num_classes: int) -> np.ndarray:
    """The labels a malicious client trains on (``label-flip``: ``classes − 1 − y``; else ``y``)."""
    if attack != "label-flip":
        return y
    return (num_classes - 1 - np.asarray(y)).astype(y.dtype)


def poison_update(
    attack: str,
    trained: Mapping[str, np.ndarray],
    global_weights: Mapping[str, np.ndarray],
    *,
    scale: float,
    seed: int,
) -> dict[str, np.ndarray]:
    """The weights a malicious client sends instead of ``trained``."""
    out = dict(trained)
    if attack not in ("sign-flip", "scale", "gaussian"):
        return out
    rng = np.random.default_rng(seed)
    for name in sorted(trained):
        value = np.asarray(trained[name])
        if not np.issubdtype(value.dtype, np.floating):
            continue
        start = np.asarray(global_weights[name]).astype(np.float64)
        if attack == "gaussian":
            sent = start + rng.standard_normal(value.shape) * scale
        else:
            factor = -scale if attack == "sign-flip" else scale
            sent = start + factor * (value.astype(np.float64) - start)
        out[name] = sent.astype(value.dtype)
    return out
