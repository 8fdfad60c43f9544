"""Deep-learning framework backends behind one interface (:class:`~steps.frameworks.base.Backend`).

``get_backend("torch")`` imports :mod:`steps.frameworks.torch_backend`, ``get_backend("tensorflow")``
:mod:`steps.frameworks.keras_backend`, each only when asked: importing this package imports neither
torch nor TensorFlow, and a torch process never imports TensorFlow (nor the reverse).
"""

from __future__ import annotations

import importlib

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
    "TrainingDiverged",
    "WeightsMismatch",
    "get_backend",
]

# framework name -> (module, the pip extra that provides it)
FRAMEWORKS: dict[str, tuple[str, str]] = {
    "torch": ("argofl.steps.frameworks.torch_backend", "torch"),
    "tensorflow": ("argofl.steps.frameworks.keras_backend", "tensorflow"),
}

_BACKENDS: dict[str, Backend] = {}


def get_backend(framework: str) -> Backend:
    """The backend for ``"torch"`` or ``"tensorflow"`` (one instance per process)."""
    backend = _BACKENDS.get(framework)
    if backend is not None:
        return backend
    if framework not in FRAMEWORKS:
        raise FrameworkError(f"unknown framework {framework!r}: expected one of {', '.join(FRAMEWORKS)}")
    module_name, extra = FRAMEWORKS[framework]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FrameworkError(
            f"framework {framework!r} is not installed here ({exc}): use its step image or "
            f"pip install 'argofl[{extra}]'"
        ) from exc
    backend = module.create_backend()
    _BACKENDS[framework] = backend
    return backend
