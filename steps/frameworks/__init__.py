"""Deep-learning framework backends behind one interface (:class:`~steps.frameworks.base.Backend`).

``get_backend("torch")`` imports :mod:`steps.frameworks.torch_backend`, ``get_backend("tensorflow")``
:mod:`steps.frameworks.keras_backend`, each only when asked: importing this package imports neither
torch nor TensorFlow, and a torch process never imports TensorFlow (nor the reverse).

:data:`FRAMEWORKS` is the one list of frameworks: settings validation, the split steps and the
benchmarks read it, so adding a framework adds one entry here (plus its backend and tests).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from argofl.steps.frameworks.base import (
    BUILTIN_MODELS,
    Backend,
    FrameworkError,
    TrainingDiverged,
    WeightsMismatch,
)

__all__ = [
    "BUILTIN_MODELS",
    "FRAMEWORKS",
    "Backend",
    "FrameworkError",
    "FrameworkInfo",
    "TrainingDiverged",
    "WeightsMismatch",
    "get_backend",
]


@dataclass(frozen=True)
class FrameworkInfo:
    """One framework as the rest of argofl sees it.

    ``backend``: the module whose ``create_backend()`` makes its :class:`Backend`; ``extra``: the pip
    extra that installs it; ``split``: the module with its split-learning halves (None: no split learning).
    """

    backend: str
    extra: str
    split: str | None = None


FRAMEWORKS: dict[str, FrameworkInfo] = {
    "torch": FrameworkInfo(
        "argofl.steps.frameworks.torch_backend", "torch", split="argofl.steps.split.torch_split"
    ),
    "tensorflow": FrameworkInfo(
        "argofl.steps.frameworks.keras_backend", "tensorflow", split="argofl.steps.split.keras_split"
    ),
}

_BACKENDS: dict[str, Backend] = {}


def get_backend(framework: str) -> Backend:
    """The backend for a framework of :data:`FRAMEWORKS` (one instance per process)."""
    backend = _BACKENDS.get(framework)
    if backend is not None:
        return backend
    info = FRAMEWORKS.get(framework)
    if info is None:
        raise FrameworkError(f"unknown framework {framework!r}: expected one of {', '.join(FRAMEWORKS)}")
    try:
        module = importlib.import_module(info.backend)
    except ImportError as exc:
        raise FrameworkError(
            f"framework {framework!r} is not installed here ({exc}): use its step image or "
            f"pip install 'argofl[{info.extra}]'"
        ) from exc
    backend = module.create_backend()
    _BACKENDS[framework] = backend
    return backend
