"""The framework-neutral part of the backends: the ``Backend`` protocol, errors and shared checks.

Conventions every backend follows:

* images arrive as uint8 NHWC arrays and are scaled to float32 ``x / 255`` inside the backend (torch
  models then see NCHW tensors, Keras models NHWC);
* labels are int64 class indices;
* weights are ``dict[str, np.ndarray]`` with names that are stable for a given model definition;
* ``train`` depends only on (weights, x, y, hyperparameters, seed): the optimizer state starts fresh
  and the sample order of epoch ``e`` is the ``e``-th ``permutation`` of ``np.random.default_rng(seed)``.

A model is a built-in name (:data:`BUILTIN_MODELS`) or ``"package.module:factory"``, a callable
``factory(input_shape, num_classes)`` returning a framework model (``input_shape`` is ``(H, W, C)``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from argofl.steps.errors import ArgoflError, BadInputError

__all__ = [
    "BUILTIN_MODELS",
    "Backend",
    "FrameworkError",
    "TrainingDiverged",
    "WeightsMismatch",
    "call_factory",
    "check_data",
    "check_train_args",
    "check_weights",
    "epoch_orders",
    "load_factory",
    "resolve_model",
    "scale_images",
]

# The one list of built-in models (name -> summary): settings read it, and every backend builds each one.
BUILTIN_MODELS: dict[str, str] = {
    "cnn": "two 5x5 conv + max-pool blocks and a 128-unit hidden layer",
    "mlp": 'two hidden layers of 200 units (the "2NN" of the FedAvg paper)',
}


class FrameworkError(BadInputError, ValueError):
    """An unknown framework or model, a bad model factory or bad training arguments."""


class WeightsMismatch(FrameworkError):
    """Weights do not fit a model: missing or unexpected names, or a shape mismatch."""


class TrainingDiverged(ArgoflError, RuntimeError):
    """The training loss became NaN or infinite."""


@runtime_checkable
class Backend(Protocol):
    """What a step needs from a deep-learning framework."""

    name: str

    def configure(self, *, threads: int | None, deterministic: bool = True) -> None:
        """Set intra-op threads (None: framework default) and deterministic algorithms."""
        ...

    def build_model(
        self, model: str, *, input_shape: tuple[int, int, int], num_classes: int, seed: int
    ) -> Any:
        """Build a freshly initialised model (initialisation seeded by ``seed``)."""
        ...

    def get_weights(self, model: Any) -> dict[str, np.ndarray]:
        """Copies of all weights (parameters and buffers) under stable names."""
        ...

    def set_weights(self, model: Any, weights: Mapping[str, np.ndarray]) -> None:
        """Load all weights; WeightsMismatch on missing/unexpected names or shapes (model unchanged)."""
        ...

    def train(
        self,
        model: Any,
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        momentum: float,
        seed: int,
        prox_mu: float = 0.0,
    ) -> dict[str, float]:
        """SGD with momentum; ``{"loss", "accuracy", "examples"}`` of the last epoch.

        ``prox_mu > 0`` adds FedProx's ``μ/2·‖w − w_start‖²`` over the trainable weights to the loss
        (its gradient ``μ·(w − w_start)`` joins each batch's gradient; the reported loss leaves it out);
        ``prox_mu = 0`` is plain training, bit for bit.
        """
        ...

    def evaluate(self, model: Any, x: np.ndarray, y: np.ndarray, *, batch_size: int) -> dict[str, float]:
        """``{"loss", "accuracy", "examples"}`` over all of ``x``."""
        ...

    def log_model(self, model: Any, *, name: str, input_example: np.ndarray | None = None) -> str:
        """Log the model to the active mlflow run; returns its model URI."""
        ...


def resolve_model(model: str, builtins: Mapping[str, Callable[..., Any]]) -> Callable[..., Any]:
    """The factory for a built-in model name or a ``"package.module:factory"`` reference."""
    builtin = builtins.get(model)
    return builtin if builtin is not None else load_factory(model)


def call_factory(
    model: str, factory: Callable[..., Any], input_shape: tuple[int, int, int], num_classes: int
) -> Any:
    """Call a model factory; its failures become FrameworkError naming the model."""
    try:
        return factory(tuple(input_shape), num_classes)
    except Exception as exc:
        raise FrameworkError(
            f"model {model!r} could not be built for input {tuple(input_shape)}, {num_classes} classes: {exc}"
        ) from exc


def load_factory(ref: str, *, what: str = "model factory") -> Callable[..., Any]:
    """Import ``"package.module:factory"`` and return the callable; errors call it ``what``."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise FrameworkError(
            f"unknown model {ref!r}: expected one of {', '.join(BUILTIN_MODELS)} or 'package.module:factory'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FrameworkError(
            f"cannot import {what} module {module_name!r} ({exc}): it must be importable in the step "
            "image (installed, or on PYTHONPATH)"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    if not callable(obj):
        raise FrameworkError(f"{what} {ref!r} is not a callable in module {module_name}")
    factory: Callable[..., Any] = obj
    return factory


def check_weights(expected: Mapping[str, tuple[int, ...]], weights: Mapping[str, np.ndarray]) -> None:
    """Raise WeightsMismatch unless ``weights`` has exactly the names and shapes of ``expected``."""
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [
        f"{k} {tuple(np.shape(weights[k]))} != {tuple(expected[k])}"
        for k in sorted(set(expected) & set(weights))
        if tuple(np.shape(weights[k])) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected)}")
    if wrong:
        problems.append(f"shape mismatch {'; '.join(wrong)}")
    if problems:
        raise WeightsMismatch(f"weights do not fit the model: {' | '.join(problems)}")


def check_data(x: np.ndarray, y: np.ndarray) -> None:
    """Raise FrameworkError unless ``x`` is uint8 NHWC and ``y`` has one label per image."""
    if x.ndim != 4 or x.dtype != np.uint8:
        raise FrameworkError(f"images must be a uint8 (N, H, W, C) array, got {x.dtype} {x.shape}")
    if y.shape != (x.shape[0],):
        raise FrameworkError(f"labels must have shape ({x.shape[0]},) to match the images, got {y.shape}")
    if x.shape[0] == 0:
        raise FrameworkError("no examples: the images array is empty")


def check_train_args(
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    prox_mu: float = 0.0,
) -> None:
    """Validate training data and hyperparameters (FrameworkError naming the bad value)."""
    check_data(x, y)
    if epochs < 1:
        raise FrameworkError(f"epochs={epochs} must be >= 1")
    if batch_size < 1:
        raise FrameworkError(f"batch_size={batch_size} must be >= 1")
    if not (lr > 0 and np.isfinite(lr)):
        raise FrameworkError(f"lr={lr} must be a finite number > 0")
    if not 0 <= momentum < 1:
        raise FrameworkError(f"momentum={momentum} must be in [0, 1)")
    if not (prox_mu >= 0 and np.isfinite(prox_mu)):
        raise FrameworkError(f"prox_mu={prox_mu} must be a finite number >= 0")


def epoch_orders(n: int, epochs: int, seed: int) -> Iterator[np.ndarray]:
    """The sample order of each epoch: successive permutations from ``default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        yield rng.permutation(n)


def scale_images(x: np.ndarray) -> np.ndarray:
    """uint8 images to float32 in [0, 1]."""
    return np.multiply(x, np.float32(1 / 255), dtype=np.float32)
