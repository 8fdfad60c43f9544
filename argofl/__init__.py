"""argofl: federated and split learning where every round is an Argo Workflows DAG.

The public Python API is :mod:`argofl.api` (also reachable from here)::

    import argofl

    workflow = argofl.build("configs/fedavg-fmnist-torch.yaml")   # a hera Workflow
    argofl.run_local(workflow, {"rounds": "2"})                     # on this machine
    argofl.submit(workflow, host="https://argo.example:2746")       # on a cluster

``argofl.pipelines`` (builders, compiler, local executor, CLI) and ``argofl.steps`` (what runs in a
workflow container) are the implementation; names outside :mod:`argofl.api` may change.
Importing ``argofl`` is cheap: hera, torch, TensorFlow and mlflow load only when used.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "ApiError",
    "ExperimentConfig",
    "api",
    "build",
    "compile_config",
    "load_config",
    "run_local",
    "save",
    "submit",
    "to_manifest",
]


def __getattr__(name: str) -> Any:
    if name == "api":
        return import_module("argofl.api")
    if name in __all__:
        return getattr(import_module("argofl.api"), name)
    raise AttributeError(f"module 'argofl' has no attribute {name!r}")
