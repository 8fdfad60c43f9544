"""Robust aggregation: coordinate-wise median, trimmed mean and (Multi-)Krum, free of Argo and I/O.

They need every update at once for each coordinate, so they read the updates **tensor by tensor**:
for each tensor name, the clients' copies are stacked into one float64 ``(clients, …)`` array, combined
and dropped before the next tensor is read. Given lazy mappings (the aggregate step passes arrays that
read one tensor from each client's safetensors file on access), peak memory is O(clients × largest
tensor), not O(clients × model). The updates are unweighted: a client cannot buy influence by claiming
more examples. Integer tensors (counters) are rounded back to their dtype.

* ``median`` — the coordinate-wise median (the mean of the two middle values for an even count).
* ``trimmed-mean`` — Yin et al. 2018: per coordinate, drop the ``⌊β·n⌋`` largest and smallest values
  and average the rest.
* ``krum`` — Blanchard et al. 2017: each update's score is the sum of squared distances to its
  ``n − f − 2`` nearest neighbours (float tensors, whole model); Krum keeps the lowest score, Multi-Krum
  averages the ``m`` lowest (ties: the earlier client). Needs ``n ≥ 2f + 3``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from argofl.steps.strategies import Aggregate, AggregationError, ClientUpdate, client_metrics

__all__ = ["Krum", "Median", "TrimmedMean", "check_krum", "stack_tensor", "tensor_names"]


def tensor_names(updates: Sequence[ClientUpdate]) -> list[str]:
    """The tensor names every update has (sorted); AggregationError when an update differs."""
    if not updates:
        raise AggregationError("no updates to aggregate")
    first = set(updates[0].arrays)
    for update in updates[1:]:
        names = set(update.arrays)
        if names != first:
            missing, extra = sorted(first - names), sorted(names - first)
            raise AggregationError(
                f"update from client {update.client}: tensor names differ from the first update "
                f"(missing {missing[:3]}, unexpected {extra[:3]})"
            )
    return sorted(first)


def stack_tensor(updates: Sequence[ClientUpdate], name: str) -> tuple[np.ndarray, np.dtype[Any]]:
    """``name`` of every update as one float64 ``(clients, …)`` array (reading one tensor per update),
    and the tensor's dtype; AggregationError on a shape or dtype that differs from the first update's."""
    first = np.asarray(updates[0].arrays[name])
    out = np.empty((len(updates), *first.shape), dtype=np.float64)
    out[0] = first
    dtype = first.dtype
    del first
    for i, update in enumerate(updates[1:], start=1):
        array = np.asarray(update.arrays[name])
        if array.shape != out.shape[1:]:
            raise AggregationError(
                f"update from client {update.client}: {name} has shape {tuple(array.shape)}, "
                f"expected {tuple(out.shape[1:])}"
            )
        if array.dtype != dtype:
            raise AggregationError(
                f"update from client {update.client}: {name} has dtype {array.dtype}, expected {dtype}"
            )
        out[i] = array
    return out, dtype


def _cast(values: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        values = np.rint(values)
    return values.astype(dtype)


class _PerTensor:
    """A rule applied to each tensor's stacked updates independently."""

    name = ""
    stateful = False
    per_tensor = True

    def aggregate(
        self,
        global_weights: Mapping[str, np.ndarray],
        updates: Iterable[ClientUpdate],
        state: Mapping[str, np.ndarray] | None = None,
    ) -> Aggregate:
        chosen = list(updates)
        names = tensor_names(chosen)
        self._check_count(len(chosen))
        weights: dict[str, np.ndarray] = {}
        for name in names:
            stack, dtype = stack_tensor(chosen, name)
            weights[name] = _cast(self.combine(stack), dtype)
            del stack
        return Aggregate(weights, client_metrics(chosen), {})

    def state_specs(self, global_weights: Mapping[str, np.ndarray]) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {}

    def _check_count(self, n: int) -> None:
        pass

    def combine(self, stack: np.ndarray) -> np.ndarray:
        """One tensor of the new model from its ``(clients, …)`` float64 stack."""
        raise NotImplementedError


class Median(_PerTensor):
    """The coordinate-wise median of the updates."""

    name = "median"

    def combine(self, stack: np.ndarray) -> np.ndarray:
        return np.median(stack, axis=0)


class TrimmedMean(_PerTensor):
    """The coordinate-wise mean after dropping the ``⌊β·n⌋`` largest and smallest values."""

    name = "trimmed-mean"

    def __init__(self, *, trim_beta: float = 0.1) -> None:
        if not (0 <= trim_beta < 0.5):
            raise AggregationError(f"trim_beta must be in [0, 0.5), got {trim_beta!r}")
        self.beta = trim_beta

    def trimmed(self, n: int) -> int:
        """How many values are cut at each end for ``n`` updates."""
        return math.floor(self.beta * n + 1e-9)

    def combine(self, stack: np.ndarray) -> np.ndarray:
        n = stack.shape[0]
        k = self.trimmed(n)
        stack.sort(axis=0)  # in place: the stack is ours
        return stack[k : n - k].mean(axis=0)


class Krum:
    """(Multi-)Krum: the mean of the ``m`` updates with the lowest Krum scores (Krum: ``m = 1``)."""

    name = "krum"
    stateful = False
    per_tensor = True

    def __init__(self, *, krum_f: int = 1, krum_m: int = 1) -> None:
        if krum_f < 0 or krum_m < 1:
            bad = "krum_f must be ≥ 0" if krum_f < 0 else "krum_m must be ≥ 1"
            raise AggregationError(f"{bad}, got f={krum_f}, m={krum_m}")
        self.f = krum_f
        self.m = krum_m

    def scores(self, updates: Sequence[ClientUpdate], names: Sequence[str]) -> np.ndarray:
        """Each update's Krum score, reading the float tensors one at a time."""
        n = len(updates)
        distances = np.zeros((n, n), dtype=np.float64)
        for name in names:
            stack, dtype = stack_tensor(updates, name)
            if not np.issubdtype(dtype, np.floating):
                continue
            flat = stack.reshape(n, -1)
            for i in range(n):
                diff = flat - flat[i]
                distances[i] += np.einsum("ij,ij->i", diff, diff)
            del stack, flat
        neighbours = n - self.f - 2
        out = np.empty(n, dtype=np.float64)
        for i in range(n):
            others = np.delete(distances[i], i)
            out[i] = np.sort(others)[:neighbours].sum()
        return out

    def select(self, updates: Sequence[ClientUpdate], names: Sequence[str]) -> list[int]:
        """Indices of the ``m`` updates with the lowest scores (stable: ties keep client order)."""
        order = np.argsort(self.scores(updates, names), kind="stable")
        return sorted(int(i) for i in order[: self.m])

    def aggregate(
        self,
        global_weights: Mapping[str, np.ndarray],
        updates: Iterable[ClientUpdate],
        state: Mapping[str, np.ndarray] | None = None,
    ) -> Aggregate:
        chosen = list(updates)
        names = tensor_names(chosen)
        n = len(chosen)
        if n < 2 * self.f + 3 or self.m > n - self.f:
            raise AggregationError(
                f"krum with krum_f={self.f}, krum_m={self.m} needs at least "
                f"{max(2 * self.f + 3, self.m + self.f)} "
                f"valid updates, got {n}"
            )
        selected = [chosen[i] for i in self.select(chosen, names)]
        weights: dict[str, np.ndarray] = {}
        for name in names:
            stack, dtype = stack_tensor(selected, name)
            weights[name] = _cast(stack.mean(axis=0), dtype)
            del stack
        metrics = client_metrics(chosen)
        metrics["selected"] = float(len(selected))
        return Aggregate(weights, metrics, {})

    def state_specs(self, global_weights: Mapping[str, np.ndarray]) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {}


def check_krum(s: Mapping[str, Any]) -> str | None:
    """Settings problem for krum: ``min_clients`` must allow ``n ≥ 2f + 3`` and ``m ≤ n − f``."""
    f, m, least = s["krum_f"], s["krum_m"], s["min_clients"]
    if least < 2 * f + 3:
        return (
            f"min_clients: krum with krum_f={f} needs at least 2·krum_f + 3 = {2 * f + 3} updates, "
            f"got {least}"
        )
    if m > least - f:
        return f"krum_m: Multi-Krum averages at most min_clients − krum_f = {least - f} updates, got {m}"
    return None
