"""Federated aggregation strategies: plain functions over named numpy arrays, free of Argo and I/O.

Aggregation streams: updates arrive one at a time (``Iterable``), each is folded into a float64
running sum and dropped, so memory is O(model), not O(clients × model). Summation order is the
iteration order; callers sort updates (e.g. by client id) for reproducible bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

__all__ = [
    "STRATEGIES",
    "AggregationError",
    "ClientUpdate",
    "FedAvg",
    "Strategy",
    "WeightedAverage",
    "fedavg",
    "get_strategy",
]


class AggregationError(ValueError):
    """Updates cannot be aggregated (none given, mismatched tensors, non-positive weights)."""


@dataclass(frozen=True)
class ClientUpdate:
    """One client's reply: its trained weights, how many examples it trained on, its metrics."""

    client: str
    arrays: Mapping[str, np.ndarray]
    examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)


class WeightedAverage:
    """A streaming weighted mean of named arrays (float64 accumulation, original dtypes out)."""

    def __init__(self) -> None:
        self._sums: dict[str, np.ndarray] = {}
        self._dtypes: dict[str, np.dtype] = {}
        self.total_weight = 0.0
        self.count = 0

    def add(self, arrays: Mapping[str, np.ndarray], weight: float, *, source: str = "update") -> None:
        """Fold ``arrays`` with ``weight`` into the running sum."""
        if not weight > 0:
            raise AggregationError(f"{source}: weight must be > 0, got {weight!r}")
        if self.count == 0:
            for name, array in arrays.items():
                self._dtypes[name] = array.dtype
                self._sums[name] = np.zeros(array.shape, dtype=np.float64)
        else:
            missing = sorted(set(self._sums) - set(arrays))
            extra = sorted(set(arrays) - set(self._sums))
            if missing or extra:
                raise AggregationError(
                    f"{source}: tensor names differ from the first update (missing {missing[:3]}, "
                    f"unexpected {extra[:3]})"
                )
        for name, array in arrays.items():
            acc = self._sums[name]
            if array.shape != acc.shape:
                raise AggregationError(
                    f"{source}: {name} has shape {tuple(array.shape)}, expected {tuple(acc.shape)}"
                )
            _accumulate(acc, array, float(weight))
        self.total_weight += float(weight)
        self.count += 1

    def result(self) -> dict[str, np.ndarray]:
        """The weighted mean, cast back to each tensor's dtype (integers rounded); call once."""
        if self.count == 0:
            raise AggregationError("no updates to aggregate")
        out: dict[str, np.ndarray] = {}
        for name in list(self._sums):
            mean = self._sums.pop(name)  # divided in place: the accumulator is consumed
            mean /= self.total_weight
            dtype = self._dtypes[name]
            if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
                np.rint(mean, out=mean)
            out[name] = mean.astype(dtype)
            del mean
        return out


_CHUNK = 1 << 18  # elements per step: bounds the float64 temporaries to 2 MiB


def _accumulate(acc: np.ndarray, array: np.ndarray, weight: float) -> None:
    """``acc += float64(array) * weight`` without a full-size float64 temporary."""
    flat_acc = acc.reshape(-1)
    flat = np.ascontiguousarray(array).reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        chunk = flat[start : start + _CHUNK].astype(np.float64)
        chunk *= weight
        flat_acc[start : start + _CHUNK] += chunk


class Strategy(Protocol):
    """An aggregation rule: previous global weights + client updates → new global weights."""

    name: str

    def aggregate(
        self, global_weights: Mapping[str, np.ndarray], updates: Iterable[ClientUpdate]
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Return the new global weights and the aggregated (example-weighted) client metrics."""
        ...


class FedAvg:
    """FedAvg (McMahan et al. 2017): the example-weighted mean of the clients' weights."""

    name = "fedavg"

    def aggregate(
        self, global_weights: Mapping[str, np.ndarray], updates: Iterable[ClientUpdate]
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        mean = WeightedAverage()
        metric_sums: dict[str, float] = {}
        for update in updates:
            mean.add(update.arrays, update.examples, source=f"update from client {update.client}")
            for key, value in update.metrics.items():
                if key != "examples":
                    metric_sums[key] = metric_sums.get(key, 0.0) + float(value) * update.examples
        weights = mean.result()
        metrics = {key: total / mean.total_weight for key, total in metric_sums.items()}
        metrics["examples"] = mean.total_weight
        metrics["clients"] = float(mean.count)
        return weights, metrics


STRATEGIES: dict[str, type[FedAvg]] = {"fedavg": FedAvg}


def get_strategy(name: str) -> Strategy:
    """The strategy called ``name``."""
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise AggregationError(f"unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)}") from None


def fedavg(updates: Iterable[tuple[Mapping[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    """FedAvg of ``(arrays, examples)`` pairs (streaming)."""
    mean = WeightedAverage()
    for i, (arrays, examples) in enumerate(updates):
        mean.add(arrays, examples, source=f"update {i}")
    return mean.result()
