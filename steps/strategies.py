"""Federated aggregation strategies: plain functions over named numpy arrays, free of Argo and I/O.

Aggregation streams: updates arrive one at a time (``Iterable``), each is folded into a float64
running sum and dropped, so memory is O(model), not O(clients × model). Summation order is the
iteration order; callers sort updates (e.g. by client id) for reproducible bytes.

* ``fedavg`` — McMahan et al. 2017: the example-weighted mean of the clients' weights.
* ``fedavgm``, ``fedadam`` — server optimizers (Hsu et al. 2019; Reddi et al. 2021, "Adaptive
  Federated Optimization"): the FedAvg mean minus the global weights is a pseudo-gradient Δ, and the
  server steps the global model along it with momentum or Adam. Their optimizer state (named arrays
  ``m/<tensor>``, ``v/<tensor>``) goes in and out of :meth:`Strategy.aggregate`, so the caller decides
  where it lives between rounds. Every float tensor is stepped, float buffers (BatchNorm statistics)
  too; non-float tensors (counters) take the FedAvg mean, without a server step. The state is kept in
  each tensor's dtype.
* ``fedprox`` — Li et al. 2020: FedAvg on the server; the clients add ``μ/2·‖w − w_global‖²``.
* ``median``, ``trimmed-mean``, ``krum`` — robust aggregation (:mod:`steps.robust`): they need every
  update at once per coordinate, so they read the updates tensor by tensor (``per_tensor``).
* ``dp-fedavg`` — client-level differential privacy (:mod:`steps.privacy`).

:data:`STRATEGIES` is the one list of strategies: settings, the CLI help and the steps read it. Each
strategy's options (:class:`Option`: name, type, default, help, check) are declared here too, once
(strategies that share one refer to the same :class:`Option`); :class:`steps.settings.Settings` makes
each a setting: a config key, a workflow parameter (``-p``), checked like the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, Protocol, TypeVar, runtime_checkable

import numpy as np

from argofl.steps import checks
from argofl.steps.errors import BadInputError

__all__ = [
    "STRATEGIES",
    "Aggregate",
    "AggregationError",
    "ChunkedArrays",
    "ClientUpdate",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "MetricMean",
    "Option",
    "PartialSum",
    "Strategy",
    "StrategyInfo",
    "WeightedAverage",
    "client_metrics",
    "fedavg",
    "get_strategy",
    "strategy_options",
]


class AggregationError(BadInputError, ValueError):
    """Updates cannot be aggregated (none given, mismatched tensors, non-positive weights)."""


@dataclass(frozen=True)
class ClientUpdate:
    """One client's reply: its trained weights, how many examples it trained on, its metrics."""

    client: str
    arrays: Mapping[str, np.ndarray]
    examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)


@runtime_checkable
class ChunkedArrays(Protocol):
    """Named arrays read in pieces (e.g. from a verified file) rather than held whole.

    ``layout()``: each tensor's dtype and shape; ``chunks(name, elements)``: ``(start, values)`` pairs
    covering the tensor's flattened values in order, ``elements`` at most each; a chunk may reuse the
    previous one's memory, so use it before asking for the next."""

    def layout(self) -> Mapping[str, tuple[np.dtype[Any], tuple[int, ...]]]: ...

    def chunks(self, name: str, elements: int) -> Iterator[tuple[int, np.ndarray]]: ...


class WeightedAverage:
    """A streaming weighted mean of named arrays (float64 accumulation, original dtypes out).

    Updates may be plain mappings of arrays or :class:`ChunkedArrays`; either way each is folded in
    ``_CHUNK``-element pieces, so the only full-size memory is the float64 sums (2× a float32 model),
    which :meth:`result` reuses for its output."""

    def __init__(self) -> None:
        self._sums: dict[str, np.ndarray] = {}
        self._dtypes: dict[str, np.dtype[Any]] = {}
        self._scratch = np.empty(0, dtype=np.float64)
        self.total_weight = 0.0
        self.count = 0

    def add(
        self, arrays: Mapping[str, np.ndarray] | ChunkedArrays, weight: float, *, source: str = "update"
    ) -> None:
        """Fold ``arrays`` with ``weight`` into the running sum."""
        if not weight > 0:
            raise AggregationError(f"{source}: weight must be > 0, got {weight!r}")
        layout = _layout(arrays)
        if self.count == 0:
            for name, (dtype, shape) in layout.items():
                self._dtypes[name] = dtype
                self._sums[name] = np.zeros(shape, dtype=np.float64)
        self._check_layout(layout, source)
        for name in layout:
            self._accumulate(self._sums[name], _read(arrays, name, _CHUNK), float(weight))
        self.total_weight += float(weight)
        self.count += 1

    def add_sum(
        self,
        sums: Mapping[str, np.ndarray] | ChunkedArrays,
        weight: float,
        *,
        count: int,
        dtypes: Mapping[str, np.dtype[Any]],
        source: str = "partial sum",
    ) -> None:
        """Fold a pre-aggregated partial: float64 ``sums`` of ``count`` updates times their weights,
        ``weight`` their total (:meth:`take_sums` of another average); ``dtypes``: the tensors' own."""
        if not weight > 0 or count < 1:
            raise AggregationError(f"{source}: weight must be > 0 and count ≥ 1, got {weight!r}, {count!r}")
        layout = _layout(sums)
        if self.count == 0:
            for name, (_, shape) in layout.items():
                self._dtypes[name] = np.dtype(dtypes[name])
                self._sums[name] = np.zeros(shape, dtype=np.float64)
        self._check_layout(layout, source)
        for name in layout:
            acc = self._sums[name].reshape(-1)
            for start, values in _read(sums, name, _CHUNK):
                part = acc[start : start + values.size]
                np.add(part, values, out=part)
        self.total_weight += float(weight)
        self.count += count

    def take_sums(self) -> tuple[dict[str, np.ndarray], float, int]:
        """The float64 weighted sums (not divided), total weight and count, for :meth:`add_sum`; call once."""
        if self.count == 0:
            raise AggregationError("no updates to sum")
        sums, self._sums = self._sums, {}
        return sums, self.total_weight, self.count

    def _check_layout(self, layout: Layout, source: str) -> None:
        missing = sorted(set(self._sums) - set(layout))
        extra = sorted(set(layout) - set(self._sums))
        if missing or extra:
            raise AggregationError(
                f"{source}: tensor names differ from the first update (missing {missing[:3]}, "
                f"unexpected {extra[:3]})"
            )
        for name, (_, shape) in layout.items():
            if shape != self._sums[name].shape:
                raise AggregationError(
                    f"{source}: {name} has shape {shape}, expected {tuple(self._sums[name].shape)}"
                )

    def _accumulate(self, acc: np.ndarray, chunks: Iterator[tuple[int, np.ndarray]], weight: float) -> None:
        """``acc += float64(values) * weight``, chunk by chunk, without full-size temporaries."""
        flat_acc = acc.reshape(-1)
        tmp = self._buffer()
        for start, values in chunks:
            n = values.size
            np.multiply(values, weight, out=tmp[:n], dtype=np.float64)
            part = flat_acc[start : start + n]
            np.add(part, tmp[:n], out=part)

    def _buffer(self) -> np.ndarray:
        if self._scratch.size < _CHUNK:
            self._scratch = np.empty(_CHUNK, dtype=np.float64)
        return self._scratch

    def result(self) -> dict[str, np.ndarray]:
        """The weighted mean, cast back to each tensor's dtype (integers rounded); call once.

        Each result is written over its own float64 sum (every dtype is at most 8 bytes), so no
        second full-size buffer is needed; a result's memory is that of its sum."""
        if self.count == 0:
            raise AggregationError("no updates to aggregate")
        out: dict[str, np.ndarray] = {}
        for name in list(self._sums):
            out[name] = self._mean_in_place(self._sums.pop(name), self._dtypes[name])
        return out

    def _mean_in_place(self, acc: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
        flat = acc.reshape(-1)
        if dtype == np.float64:
            flat /= self.total_weight
            return acc
        # element i of the result occupies bytes [i·k, (i+1)·k) with k ≤ 8: never past sum element i,
        # so writing a chunk after reading it into ``tmp`` overwrites only sums already read
        target = flat.view(np.uint8)[: flat.size * dtype.itemsize].view(dtype)
        tmp = self._buffer()
        rounded = bool(np.issubdtype(dtype, np.integer) or dtype == np.bool_)
        for start in range(0, flat.size, _CHUNK):
            n = min(_CHUNK, flat.size - start)
            np.divide(flat[start : start + n], self.total_weight, out=tmp[:n])
            if rounded:
                np.rint(tmp[:n], out=tmp[:n])
            np.copyto(target[start : start + n], tmp[:n], casting="unsafe")
        return target.reshape(acc.shape)


_CHUNK = 1 << 18  # elements per step: bounds the float64 temporaries to 2 MiB


Layout = Mapping[str, tuple[np.dtype[Any], tuple[int, ...]]]


def _layout(arrays: Mapping[str, np.ndarray] | ChunkedArrays) -> Layout:
    if isinstance(arrays, ChunkedArrays):
        return arrays.layout()
    return {name: (array.dtype, tuple(array.shape)) for name, array in arrays.items()}


def _read(
    arrays: Mapping[str, np.ndarray] | ChunkedArrays, name: str, elements: int
) -> Iterator[tuple[int, np.ndarray]]:
    if isinstance(arrays, ChunkedArrays):
        return arrays.chunks(name, elements)
    return _flat_chunks(arrays[name], elements)


def _flat_chunks(array: np.ndarray, elements: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, values)`` pieces of ``array``'s flattened values, ``elements`` at most each."""
    flat = np.ascontiguousarray(array).reshape(-1)
    for start in range(0, flat.size, elements):
        yield start, flat[start : start + elements]


@dataclass(frozen=True)
class PartialSum:
    """A group of clients' updates pre-aggregated where they were trained (hierarchical FedAvg): the
    float64 sums of each update times its examples, in the group's order, and the clients' replies
    without arrays. ``dtypes``: each tensor's own dtype (the sums are float64)."""

    sums: Mapping[str, np.ndarray] | ChunkedArrays
    clients: tuple[ClientUpdate, ...]
    dtypes: Mapping[str, np.dtype[Any]]

    @property
    def examples(self) -> int:
        return sum(c.examples for c in self.clients)


class Aggregate(NamedTuple):
    """A strategy's result: new global weights, example-weighted client metrics, optimizer state."""

    weights: dict[str, np.ndarray]
    metrics: dict[str, float]
    state: dict[str, np.ndarray]


class Strategy(Protocol):
    """An aggregation rule: previous global weights + client updates (+ its state) → new global weights."""

    name: str
    stateful: bool
    per_tensor: bool
    """True: ``aggregate`` needs all updates at once and reads their arrays one tensor at a time (the
    caller may pass lazy mappings); False: it folds each update in and drops it (memory O(model))."""

    def aggregate(
        self,
        global_weights: Mapping[str, np.ndarray],
        updates: Iterable[ClientUpdate],
        state: Mapping[str, np.ndarray],
    ) -> Aggregate:
        """The new global weights, the aggregated client metrics and the state for the next round."""
        ...

    def state_specs(self, global_weights: Mapping[str, np.ndarray]) -> dict[str, tuple[str, tuple[int, ...]]]:
        """State tensor name → (dtype name, shape) kept between rounds (none for a stateless strategy)."""
        ...


class FedAvg:
    """FedAvg (McMahan et al. 2017): the example-weighted mean of the clients' weights."""

    name = "fedavg"
    stateful = False
    per_tensor = False

    def aggregate(
        self,
        global_weights: Mapping[str, np.ndarray],
        updates: Iterable[ClientUpdate | PartialSum],
        state: Mapping[str, np.ndarray] | None = None,
    ) -> Aggregate:
        """``updates`` may include :class:`PartialSum` groups (a linear rule: the sum is the same)."""
        mean = WeightedAverage()
        metric_mean = MetricMean()
        for item in updates:
            if isinstance(item, PartialSum):
                first = item.clients[0].client if item.clients else "?"
                mean.add_sum(
                    item.sums,
                    item.examples,
                    count=len(item.clients),
                    dtypes=item.dtypes,
                    source=f"partial sum of the group of client {first}",
                )
                replies: Iterable[ClientUpdate] = item.clients
            else:
                mean.add(item.arrays, item.examples, source=f"update from client {item.client}")
                replies = (item,)
            for update in replies:
                metric_mean.add(update)
        return Aggregate(mean.result(), metric_mean.result(), {})

    def state_specs(self, global_weights: Mapping[str, np.ndarray]) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {}


class _ServerOptimizer:
    """FedAvg, then a server optimizer step along the pseudo-gradient Δ = mean − global (float64 math)."""

    name = ""
    stateful = True
    per_tensor = False
    slots: tuple[str, ...] = ()

    def aggregate(
        self,
        global_weights: Mapping[str, np.ndarray],
        updates: Iterable[ClientUpdate | PartialSum],
        state: Mapping[str, np.ndarray],
    ) -> Aggregate:
        mean, metrics, _ = FedAvg().aggregate(global_weights, updates)
        weights: dict[str, np.ndarray] = {}
        new_state: dict[str, np.ndarray] = {}
        for name, average in mean.items():
            current = global_weights.get(name)
            if current is None or current.shape != average.shape:
                found = "missing" if current is None else f"of shape {tuple(current.shape)}"
                raise AggregationError(
                    f"global weights: {name} is {found}, but the updates have it with shape {average.shape}"
                )
            if not np.issubdtype(current.dtype, np.floating):
                weights[name] = average
                continue
            before = current.astype(np.float64)
            delta = average.astype(np.float64) - before
            previous = {slot: _slot(state, slot, name, current) for slot in self.slots}
            step, slots = self._step(delta, previous)
            weights[name] = (before + step).astype(current.dtype)
            for slot, value in slots.items():
                new_state[f"{slot}/{name}"] = value.astype(current.dtype)
        return Aggregate(weights, metrics, new_state)

    def state_names(self, global_weights: Mapping[str, np.ndarray]) -> list[str]:
        """The state tensors this strategy keeps for ``global_weights`` (float tensors only)."""
        return [
            f"{slot}/{name}"
            for slot in self.slots
            for name, value in global_weights.items()
            if np.issubdtype(value.dtype, np.floating)
        ]

    def state_specs(self, global_weights: Mapping[str, np.ndarray]) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {
            name: (
                global_weights[name.split("/", 1)[1]].dtype.name,
                tuple(global_weights[name.split("/", 1)[1]].shape),
            )
            for name in self.state_names(global_weights)
        }

    def _step(
        self, delta: np.ndarray, previous: Mapping[str, np.ndarray | None]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        raise NotImplementedError


def _slot(state: Mapping[str, np.ndarray], slot: str, name: str, like: np.ndarray) -> np.ndarray | None:
    value = state.get(f"{slot}/{name}")
    if value is None:
        return None
    if value.shape != like.shape:
        raise AggregationError(
            f"server state {slot}/{name} has shape {tuple(value.shape)}, expected {tuple(like.shape)}"
        )
    return value.astype(np.float64)


class FedAvgM(_ServerOptimizer):
    """Server momentum (Hsu et al. 2019): ``m = β·m + Δ`` (``m = Δ`` at first), ``w += η·m``.

    With ``server_lr=1`` and ``server_momentum=0`` this is FedAvg.
    """

    name = "fedavgm"
    slots = ("m",)

    def __init__(self, *, server_lr: float = 1.0, server_momentum: float = 0.9) -> None:
        _check_hyper(server_lr=server_lr, server_momentum=server_momentum)
        self.lr = server_lr
        self.momentum = server_momentum

    def _step(
        self, delta: np.ndarray, previous: Mapping[str, np.ndarray | None]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        m = previous["m"]
        m = delta if m is None else self.momentum * m + delta
        return self.lr * m, {"m": m}


class FedAdam(_ServerOptimizer):
    """Server Adam (Reddi et al. 2021): ``m = β1·m + (1−β1)·Δ``, ``v = β2·v + (1−β2)·Δ²``,
    ``w += η·m / (√v + τ)`` (Algorithm 2: no bias correction), with ``m = v = 0`` before the first round
    (the paper starts ``v`` at ``≥ τ²``; from 0 the first step, about ``±η·(1−β1)/√(1−β2)`` per
    weight, is slightly larger)."""

    name = "fedadam"
    slots = ("m", "v")

    def __init__(
        self,
        *,
        server_lr: float = 0.01,
        server_momentum: float = 0.9,
        server_beta2: float = 0.99,
        server_tau: float = 1e-3,
    ) -> None:
        _check_hyper(
            server_lr=server_lr,
            server_momentum=server_momentum,
            server_beta2=server_beta2,
            server_tau=server_tau,
        )
        self.lr = server_lr
        self.beta1 = server_momentum
        self.beta2 = server_beta2
        self.tau = server_tau

    def _step(
        self, delta: np.ndarray, previous: Mapping[str, np.ndarray | None]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        m0, v0 = previous["m"], previous["v"]
        m = (1 - self.beta1) * delta + (0.0 if m0 is None else self.beta1 * m0)
        v = (1 - self.beta2) * delta * delta + (0.0 if v0 is None else self.beta2 * v0)
        return self.lr * m / (np.sqrt(v) + self.tau), {"m": m, "v": v}


def _check_hyper(**values: float) -> None:
    for name, value in values.items():
        ok = value > 0 if name in ("server_lr", "server_tau") else 0 <= value < 1
        if not (ok and np.isfinite(value)):
            expected = "> 0" if name in ("server_lr", "server_tau") else "in [0, 1)"
            raise AggregationError(f"{name} must be {expected}, got {value!r}")


class MetricMean:
    """The example-weighted mean of the clients' metrics, each over the clients that report it."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._weights: dict[str, float] = {}
        self.examples = 0.0
        self.clients = 0

    def add(self, update: ClientUpdate) -> None:
        """Fold in one client's metrics (its arrays are not read)."""
        for key, value in update.metrics.items():
            if key != "examples":
                self._sums[key] = self._sums.get(key, 0.0) + float(value) * update.examples
                self._weights[key] = self._weights.get(key, 0.0) + update.examples
        self.examples += update.examples
        self.clients += 1

    def result(self) -> dict[str, float]:
        """The means, plus ``examples`` and ``clients``."""
        metrics = {
            key: total / self._weights[key] for key, total in self._sums.items() if self._weights[key] > 0
        }
        metrics["examples"] = self.examples
        metrics["clients"] = float(self.clients)
        return metrics


def client_metrics(updates: Iterable[ClientUpdate]) -> dict[str, float]:
    """The example-weighted mean of the clients' metrics, plus ``examples`` and ``clients``."""
    mean = MetricMean()
    for update in updates:
        mean.add(update)
    return mean.result()


class FedProx(FedAvg):
    """FedProx (Li et al. 2020): FedAvg on the server; each client minimises its loss plus
    ``μ/2·‖w − w_global‖²`` (the backends' ``prox_mu``). With ``μ = 0`` it is FedAvg, bit for bit."""

    name = "fedprox"


# ------------------------------------------------------------------------------------ the registry

Options = Mapping[str, Any]
"""Strategy options by setting name (``server_lr``, ``trim_beta``, …), as :class:`Settings` holds them."""

V = TypeVar("V", int, float, str)


@dataclass(frozen=True)
class Option(Generic[V]):
    """One option of one or more strategies, declared once: a setting like the others (a config key,
    the workflow parameter ``name`` with ``-`` for ``_``), of ``type``, ``default`` when not given.

    ``check(value)`` returns the problem (``"must be > 0"``; reported as ``"name: problem, got value"``)
    or None. Steps read a value with ``settings.option(OPTION)`` (typed as ``type``)."""

    name: str
    type: type[V]
    default: V
    help: str
    check: checks.Check | None = None


SERVER_LR = Option(
    "server_lr", float, 1.0, "server learning rate η of fedavgm / fedadam (fedadam: ~0.01)", checks.positive
)
SERVER_MOMENTUM = Option("server_momentum", float, 0.9, "server momentum β (fedadam: β1)", checks.momentum)
SERVER_BETA2 = Option("server_beta2", float, 0.99, "fedadam's second-moment decay β2", checks.momentum)
SERVER_TAU = Option("server_tau", float, 1e-3, "fedadam's adaptivity τ (added to √v)", checks.positive)
PROX_MU = Option("prox_mu", float, 0.01, "fedprox's proximal weight μ (0 = FedAvg)", checks.at_least(0))
TRIM_BETA = Option(
    "trim_beta", float, 0.1, "trimmed-mean: fraction cut at each end per coordinate", checks.half
)
KRUM_F = Option("krum_f", int, 1, "krum: assumed number of malicious clients f", checks.at_least(0))
KRUM_M = Option("krum_m", int, 1, "krum: updates averaged (1 = Krum, > 1 = Multi-Krum)", checks.at_least(1))
DP_CLIP = Option(
    "dp_clip", float, 1.0, "dp-fedavg: L2 clip norm C of each update (adaptive: C at first)", checks.positive
)
DP_NOISE = Option("dp_noise", float, 1.0, "dp-fedavg: noise multiplier z (noise std z·C)", checks.positive)
DP_MODE = Option(
    "dp_mode",
    str,
    "central",
    "dp-fedavg: noise added by the server (central) or each client (local)",
    checks.choice(("central", "local")),
)
DP_CLIPPING = Option(
    "dp_clipping",
    str,
    "fixed",
    "dp-fedavg: fixed or adaptive (Andrew et al. 2021) clipping",
    checks.choice(("fixed", "adaptive")),
)
DP_QUANTILE = Option(
    "dp_quantile", float, 0.5, "dp-fedavg adaptive clipping: target quantile γ of norms", checks.open_unit
)
DP_CLIP_LR = Option(
    "dp_clip_lr", float, 0.2, "dp-fedavg adaptive clipping: learning rate η_C", checks.positive
)
DP_DELTA = Option("dp_delta", float, 1e-5, "dp-fedavg: δ at which ε is reported", checks.open_unit)

FEDADAM_MAX_SERVER_LR = 0.5


def _no_check(settings: Options) -> str | None:
    return None


@dataclass(frozen=True)
class StrategyInfo:
    """One strategy as the rest of argofl sees it.

    ``options`` are the settings of its own it reads (declared once above: a setting each, in
    :func:`strategy_options`); ``check(settings)`` returns ``"key: problem, got value"`` for a
    combination of settings it cannot run with; ``build(options, noise_seed)`` makes the strategy
    (``noise_seed`` derives from the run's secret, for strategies with ``secret``); ``proximal``: the
    clients add FedProx's term; ``secret``: init writes a per-run noise secret to the store;
    ``linear``: the rule folds the example-weighted sum of the updates, so a pod training a group can
    send its :class:`PartialSum` instead of each update (robust and DP rules need every update).
    """

    summary: str
    build: Callable[[Options, int | None], Strategy]
    options: tuple[Option[Any], ...] = ()
    check: Callable[[Options], str | None] = _no_check
    proximal: bool = False
    secret: bool = False
    linear: bool = False


def _pick(options: Options, *names: str) -> dict[str, Any]:
    return {name: options[name] for name in names if name in options}


def _check_fedadam(s: Options) -> str | None:
    if s["server_lr"] > FEDADAM_MAX_SERVER_LR:
        return (
            f"server_lr: fedadam moves every weight by about server_lr per round, so use 0.001–0.1 "
            f"(at most {FEDADAM_MAX_SERVER_LR}), got {s['server_lr']!r}"
        )
    return None


def _robust(name: str, options: Options) -> Strategy:
    from argofl.steps import robust

    if name == "median":
        return robust.Median()
    if name == "trimmed-mean":
        return robust.TrimmedMean(**_pick(options, "trim_beta"))
    return robust.Krum(**_pick(options, "krum_f", "krum_m"))


def _check_krum(s: Options) -> str | None:
    from argofl.steps import robust

    return robust.check_krum(s)


def _dp(options: Options, noise_seed: int | None) -> Strategy:
    from argofl.steps import privacy

    return privacy.DPFedAvg(noise_seed=noise_seed, **_pick(options, *privacy.OPTIONS))


def _check_dp(s: Options) -> str | None:
    from argofl.steps import privacy

    return privacy.check_settings(s)


STRATEGIES: dict[str, StrategyInfo] = {
    "fedavg": StrategyInfo("example-weighted mean of the client weights", lambda o, _: FedAvg(), linear=True),
    "fedavgm": StrategyInfo(
        "FedAvg, then server momentum on the pseudo-gradient",
        lambda o, _: FedAvgM(**_pick(o, "server_lr", "server_momentum")),
        (SERVER_LR, SERVER_MOMENTUM),
        linear=True,
    ),
    "fedadam": StrategyInfo(
        "FedAvg, then server Adam on the pseudo-gradient",
        lambda o, _: FedAdam(**_pick(o, "server_lr", "server_momentum", "server_beta2", "server_tau")),
        (SERVER_LR, SERVER_MOMENTUM, SERVER_BETA2, SERVER_TAU),
        check=_check_fedadam,
        linear=True,
    ),
    "fedprox": StrategyInfo(
        "FedAvg with a proximal term on the clients",
        lambda o, _: FedProx(),
        (PROX_MU,),
        proximal=True,
        linear=True,
    ),
    "median": StrategyInfo("coordinate-wise median", lambda o, _: _robust("median", o)),
    "trimmed-mean": StrategyInfo(
        "coordinate-wise mean without the trim_beta largest and smallest values",
        lambda o, _: _robust("trimmed-mean", o),
        (TRIM_BETA,),
    ),
    "krum": StrategyInfo(
        "(Multi-)Krum: the mean of the krum_m updates closest to their neighbours",
        lambda o, _: _robust("krum", o),
        (KRUM_F, KRUM_M),
        check=_check_krum,
    ),
    "dp-fedavg": StrategyInfo(
        "FedAvg of clipped updates with Gaussian noise (client-level DP)",
        _dp,
        (DP_CLIP, DP_NOISE, DP_MODE, DP_CLIPPING, DP_QUANTILE, DP_CLIP_LR, DP_DELTA),
        check=_check_dp,
        secret=True,
    ),
}


def strategy_options() -> dict[str, Option[Any]]:
    """Every strategy's options by name, in the order :data:`STRATEGIES` first lists them (an option two
    strategies share, once); raises TypeError for two different options of one name."""
    options: dict[str, Option[Any]] = {}
    for name, info in STRATEGIES.items():
        for option in info.options:
            if options.setdefault(option.name, option) is not option:
                raise TypeError(
                    f"strategy {name}: option {option.name!r} is declared twice; declare it once and "
                    "list the same Option in each strategy that reads it"
                )
    return options


def get_strategy(name: str, *, noise_seed: int | None = None, **options: Any) -> Strategy:
    """The strategy called ``name``, with the options it takes (others are ignored)."""
    info = STRATEGIES.get(name)
    if info is None:
        raise AggregationError(f"unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    return info.build(options, noise_seed)


def fedavg(updates: Iterable[tuple[Mapping[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    """FedAvg of ``(arrays, examples)`` pairs (streaming)."""
    mean = WeightedAverage()
    for i, (arrays, examples) in enumerate(updates):
        mean.add(arrays, examples, source=f"update {i}")
    return mean.result()
